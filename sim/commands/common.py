"""Options every command that takes a scenario shares, and how they are read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.errors import ConfigError
from sim.scenario import Scenario, load_scenario, parse_override

SCENARIO_DIR = Path("scenarios")
DEFAULT_SCENARIO = SCENARIO_DIR / "baseline.toml"


def add_scenario_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("scenario", metavar="SCENARIO", nargs="?", default=None,
                       help=f"scenario TOML file (default: {DEFAULT_SCENARIO}, else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any scenario key, e.g. --set order_service.order_ttl=15m (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="root seed (overrides run.seed)")
    p.add_argument("--replications", "-n", type=int, default=None,
                   help="independent replications (overrides run.replications)")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Load the scenario named on the command line, apply --set, --seed and --replications."""
    path = args.scenario
    overrides = list(args.overrides)
    if args.seed is not None:
        if args.seed < 0:
            raise ConfigError(f"--seed: expected a non-negative integer, found {args.seed}")
        overrides.append(f"run.seed={args.seed}")
    if getattr(args, "replications", None) is not None:
        if args.replications < 1:
            raise ConfigError(f"--replications: expected at least 1, found {args.replications}")
        overrides.append(f"run.replications={args.replications}")
    if path is None:
        if DEFAULT_SCENARIO.exists():
            path = DEFAULT_SCENARIO
        else:
            return Scenario(name="defaults").with_overrides(dict(parse_override(o) for o in overrides))
    return load_scenario(path, overrides)


def note_inert(scenario: Scenario) -> None:
    """Print, on stderr, a note per setting that cannot act in this scenario (:func:`sim.scenario.inert_settings`)."""
    from sim.scenario import inert_settings

    for note in inert_settings(scenario):
        print(f"note: {scenario.name or 'scenario'}: {note}", file=sys.stderr)


def positive_int(flag: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{flag}: expected a positive integer, found {value}")
    return value


def writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Make sure ``path`` is (or can become) a directory this process can write, before any work starts.

    Writes and removes a probe file in the directory, or in its nearest existing ancestor when it does
    not exist yet (nothing is left behind, so a command that fails later leaves no empty directory): a
    read-only directory, a read-only file system or a file in the way is one :class:`ConfigError`
    (exit 2) up front instead of a traceback after the computing is done.
    """
    import errno
    import os
    import tempfile

    p = Path(path)
    existing = Path(".")
    for part in (p, *p.parents):
        if part.exists() or part.is_symlink():
            if not part.is_dir():
                what = "is a file" if part == p else f"cannot be created: {part} is a file"
                raise ConfigError(f"{flag} {p}: {what}; expected a directory to write the results in")
            existing = part
            break
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".checkout-chaos-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = {errno.EACCES: "permission denied", errno.EPERM: "not permitted", errno.EROFS: "read-only file system",
                  errno.ENOSPC: "no space left on the device", errno.ENOTDIR: "a part of the path is a file"}.get(
            exc.errno, exc.strerror or exc.__class__.__name__)
        raise ConfigError(f"{flag} {p}: cannot write results there ({reason}); choose another directory") from None
    return p
