"""Options every command that takes a scenario shares, and how they are read."""

from __future__ import annotations

import argparse
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


def positive_int(flag: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{flag}: expected a positive integer, found {value}")
    return value
