"""``checkout-chaos check``: find anomalies in one or more histories (JSON Lines events).

Several histories are read as one stream (a live run writes the clients' history and the services'
separately). The measurement window and deadlines come, in this order of precedence, from the flags,
from ``--scenario``, from the history's ``run.start`` event, and from the checker's defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sim.errors import ConfigError

DESCRIPTION = """\
find anomalies in a history (JSON Lines events, see docs/events.md): paid-but-closed orders,
success shown then closed, failure shown but charged, double charges, charges without an order,
orders paid without a charge, stuck payments, BNPL agreements left unfinished, false overdue marks,
failing deductions and unbalanced ledger entries. Prints one row per anomaly class and writes
DIR/results.json (docs/results.md). The rules are in docs/checker.md."""

EPILOG = """\
examples:
  checkout-chaos check history.jsonl
  checkout-chaos check client.jsonl services.jsonl.gz --out results/live-check
  checkout-chaos check history.jsonl --warmup 5m --horizon 1h --stuck-grace 30m --json
  checkout-chaos check history.jsonl --scenario scenarios/mall_pattern.toml

try it on the example that ships with the package:
  checkout-chaos check "$(python -c 'import sim.examples as e; print(e.EXAMPLE_HISTORY)')"

durations are written like "250ms", "15s", "15m", "2h" or "1d"."""

# flag -> CheckConfig field
_DURATION_FLAGS = {
    "warmup": "warmup",
    "horizon": "horizon",
    "stuck_grace": "stuck_grace",
    "bnpl_finish_limit": "bnpl_finish_limit",
    "bucket": "bucket_s",
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.add_argument("histories", nargs="+", metavar="HISTORY.jsonl",
                        help="history files (JSON Lines, .gz too), read in order as one stream")
    parser.add_argument("--out", metavar="DIR", default="results/check",
                        help="write DIR/results.json (default: %(default)s)")
    parser.add_argument("--warmup", metavar="DURATION",
                        help="orders created before this are not counted (default: run.start, else 0)")
    parser.add_argument("--horizon", metavar="DURATION",
                        help="orders created at/after this are not counted (default: run.start, else all)")
    parser.add_argument("--stuck-grace", metavar="DURATION",
                        help="an order or payment undecided this long past its deadline is stuck (default: 1h)")
    parser.add_argument("--bnpl-finish-limit", metavar="DURATION",
                        help="delivered but not finished after this is a stuck BNPL agreement (default: 24h)")
    parser.add_argument("--bucket", metavar="DURATION", help="timeline bucket (default: 60s)")
    parser.add_argument("--scenario", metavar="FILE",
                        help="take warmup, horizon, stuck grace and finish limit from this scenario, and echo it")
    parser.add_argument("--json", action="store_true",
                        help="print the results JSON instead of the table")


def _duration(flag: str, value: str) -> float:
    from sim.scenario import parse_duration

    if value.strip() == "0":
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(f"--{flag.replace('_', '-')}: {exc}") from None


def _config(args: argparse.Namespace) -> tuple[Any, Any]:
    """The CheckConfig for these flags, and the loaded scenario (or None)."""
    from sim.check import CheckConfig
    from sim.scenario import load_scenario

    values: dict[str, float] = {}
    scenario = None
    if args.scenario:
        scenario = load_scenario(args.scenario)
        values.update(
            warmup=scenario.run.warmup,
            horizon=scenario.run.horizon,
            stuck_grace=scenario.order_service.stuck_grace,
            bnpl_finish_limit=scenario.bnpl.finish_limit,
        )
    for flag, name in _DURATION_FLAGS.items():
        raw = getattr(args, flag)
        if raw is not None:
            values[name] = _duration(flag, raw)
    if values.get("bucket_s", 1.0) <= 0:
        raise ConfigError(f"--bucket: expected a positive duration, found {args.bucket!r}")
    return CheckConfig(**values), scenario


def _read_all(checker: Any, paths: list[str]) -> None:
    """Feed every event of every file; a transient progress line on a terminal."""
    from sim.check import read_history

    feed = checker.feed
    if not sys.stderr.isatty():
        for path in paths:
            for event in read_history(path):
                feed(event)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
                  transient=True) as progress:
        for path in paths:
            task = progress.add_task(f"reading {path}")
            for n, event in enumerate(read_history(path), 1):
                feed(event)
                if n % 50_000 == 0:
                    progress.update(task, description=f"reading {path}: {n:,} events, "
                                                      f"{checker.live_orders:,} orders open")
            progress.remove_task(task)


def run(args: argparse.Namespace) -> int:
    from sim.check import Checker
    from sim.results import build_results, canonical_json, print_summary, run_info, write_results

    from sim.commands.common import writable_dir

    started = time.time()
    config, scenario = _config(args)
    writable_dir(args.out)
    checker = Checker(config)
    _read_all(checker, list(args.histories))
    summary = checker.finish()
    doc = build_results(
        "check",
        [summary],
        scenario=scenario.resolved() if scenario is not None else None,
        scenario_name=(scenario.name or Path(args.scenario).stem) if scenario is not None else None,
        seed=summary.seed,
        horizon_s=summary.horizon,
        warmup_s=summary.warmup,
        end_s=summary.end,
        extra={"history": {
            "files": [Path(p).name for p in args.histories],
            "events": summary.events,
            "late_events": summary.late_events,
            "unattributed_events": summary.unattributed_events,
        }},
    )
    doc["run_info"] = run_info(started, ["checkout-chaos", "check", *map(str, args.histories)])
    path = write_results(doc, args.out)
    if args.json:
        sys.stdout.write(canonical_json(doc))
        print(f"wrote {path}", file=sys.stderr)
    else:
        print_summary(doc)
        print(f"wrote {path}")
    return 0
