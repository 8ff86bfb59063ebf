"""``checkout-chaos check``: find anomalies in one or more histories (JSON Lines events).

Several histories are merged by time into one stream (a live run writes the clients' history and the
services' separately), whatever order they are named in. The measurement window and deadlines come, in
this order of precedence, from the flags, from ``--scenario``, from the history's ``run.start`` event,
and from the checker's defaults. A line the checker cannot take is refused, counted and named (file,
line, field, expected, found); ``--strict`` turns any refused line into exit code 2.
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
failing deductions, unbalanced ledger entries, charges that differ from the order amount, refunds
beyond the charge or to someone else, double fulfilment, oversold stock, BNPL paid twice and orders
refunded on a cancel accepted after their goods shipped. Prints
one row per anomaly class and writes DIR/results.json (docs/results.md) and DIR/anomalies.csv (one
row per instance: the orders to repair). The rules are in docs/checker.md."""

EPILOG = """\
examples:
  checkout-chaos check history.jsonl
  checkout-chaos check client.jsonl services.jsonl.gz --out results/live-check
  checkout-chaos check history.jsonl --warmup 5m --horizon 1h --stuck-grace 30m --json
  checkout-chaos check history.jsonl --scenario scenarios/mall_pattern.toml
  checkout-chaos check history.jsonl --strict        # exit 2 if any line was refused

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
                        help="history files (JSON Lines, .gz too), merged by time into one stream")
    parser.add_argument("--out", metavar="DIR", default="results/check",
                        help="write DIR/results.json and DIR/anomalies.csv (default: %(default)s)")
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
    parser.add_argument("--strict", action="store_true",
                        help="exit 2 (writing nothing) if any line is refused, any event type is unknown or "
                             "any event arrives for an order already judged")


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


_SOURCE_ABSENT = {
    "ledger": "no ledger lines (ledger.txn)",
    "gateway": "no gateway trade events (trade.*)",
    "checkout": "no checkout events (order.*)",
    "screens": "no buyer screens (app.shown)",
    "bnpl": "BNPL orders but no BNPL provider events (bnpl.*)",
}
_SHOW = 10  # problems listed on the terminal (all are counted; results.json keeps 20)


def _read_all(checker: Any, paths: list[str], problems: Any, late: Any) -> None:
    """Feed every event of every file, merged by time; a transient progress line on a terminal."""
    from sim.check import Problem, merge_histories

    feed = checker.feed

    def take(event: dict[str, Any], name: str, line: int) -> None:
        before = checker.late_events
        feed(event)
        if checker.late_events != before:
            order = event.get("order")
            late.add(Problem(name, line, "order", "an event before the order's order.end", repr(order),
                             f"{event['type']} for order {order!r} after its order.end: the order was already "
                             "judged, this event is not in its verdict"))

    if not sys.stderr.isatty():
        for event, name, line in merge_histories(paths, problems):
            take(event, name, line)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from rich.markup import escape

    label = escape(paths[0]) if len(paths) == 1 else f"{len(paths)} histories"
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task(f"reading {label}")
        for n, (event, name, line) in enumerate(merge_histories(paths, problems), 1):
            take(event, name, line)
            if n % 50_000 == 0:
                progress.update(task, description=f"reading {label}: {n:,} events, "
                                                  f"{checker.live_orders:,} orders open")


def _notes(summary: Any, problems: Any, late: Any) -> list[str]:
    """What a reader must know besides the table: refused lines, unknown types, late events, blind spots."""
    from sim.check import suggest_event_type

    out: list[str] = []
    if problems.count:
        out.append(f"refused {problems.count:,} line(s) (not in the verdict):")
        out.extend(f"  {p}" for p in problems.items[:_SHOW])
        if problems.count > _SHOW:
            out.append(f"  … and {problems.count - _SHOW:,} more (results.json: history.problems)")
    if summary.unknown_types:
        parts = []
        for typ, n in summary.unknown_types.items():
            hint = suggest_event_type(typ)
            parts.append(f"{typ} ×{n:,}" + (f" (did you mean {hint}?)" if hint else ""))
        out.append("unknown event types, ignored: " + ", ".join(parts))
    if late.count:
        out.append(f"{late.count:,} event(s) arrived for orders already judged (after their order.end):")
        out.extend(f"  {p}" for p in late.items[:_SHOW])
        if late.count > _SHOW:
            out.append(f"  … and {late.count - _SHOW:,} more")
    if summary.duplicate_events:
        out.append(f"{summary.duplicate_events:,} duplicate event(s) (same id, same ledger txn, or order.end "
                   "again) taken once")
    blind = summary.not_observable
    if blind:
        why = [_SOURCE_ABSENT[s] for s, ok in summary.observed.items() if not ok]
        from sim.check import BLACK_BOX_HOW

        if summary.observed_how.get("checkout") == BLACK_BOX_HOW:
            why.append("the checkout seen only through its order pages, not its own events")
        out.append(f"not observable in this history ({'; '.join(why)}): {', '.join(blind)} — "
                   "left out of the table, not counted as 0")
    if summary.money_from == "trade events":
        out.append("money inferred from the gateway's trade events (the history has no ledger lines)")
    for what, n in summary.inferred.items():
        if what.startswith("refund_trade"):
            out.append(f"{n:,} refund(s) without a 'trade' field attributed to the order's charged trade"
                       + (" (several were charged: the first taken)" if what.endswith("ambiguous") else ""))
        elif what == "refund_without_trade_unattributed":
            out.append(f"{n:,} refund(s) without a 'trade' field on orders with no charged trade")
    return out


def run(args: argparse.Namespace) -> int:
    from sim.check import AnomalyCsv, Checker, Problems
    from sim.errors import HistoryError
    from sim.results import build_results, canonical_json, print_summary, run_info, write_results

    from sim.commands.common import writable_dir

    started = time.time()
    config, scenario = _config(args)
    writable_dir(args.out)
    paths = list(args.histories)
    problems, late = Problems(), Problems()
    csv_rows = AnomalyCsv()
    try:
        checker = Checker(config, on_instance=csv_rows.add)
        _read_all(checker, paths, problems, late)
        summary = checker.finish()
        refused = f"; {problems.count:,} line(s) refused, the first: {problems.items[0]}" if problems.count else ""
        if summary.events == 0:
            raise HistoryError(f"{', '.join(paths)}: no events{refused} (a history is JSON Lines, one event "
                               "per line: docs/events.md)")
        if summary.orders_seen == 0:
            raise HistoryError(f"{', '.join(paths)}: no order events, only {summary.events:,} run marker(s) or "
                               f"events without 'order'{refused}: there is nothing to check")
        notes = _notes(summary, problems, late)
        if args.strict and (problems.count or summary.unknown_types or late.count):
            for line in notes:
                print(line, file=sys.stderr)
            print("error: --strict: the history has lines the checker could not take (above); nothing written",
                  file=sys.stderr)
            return 2
        doc = build_results(
            "check",
            [summary],
            scenario=scenario.resolved() if scenario is not None else None,
            scenario_name=(scenario.name or Path(args.scenario).stem) if scenario is not None else None,
            seed=summary.seed,
            horizon_s=summary.horizon,
            warmup_s=summary.warmup,
            end_s=summary.end,
            extra={"history": _history_section(summary, paths, problems, late, csv_rows.rows)},
        )
        blind = summary.not_observable
        for cls in blind:
            if cls in doc["anomalies"]:
                doc["anomalies"][cls]["observable"] = False
        doc["run_info"] = run_info(started, ["checkout-chaos", "check", *map(str, args.histories)])
        path = write_results(doc, args.out)
        csv_path = csv_rows.commit(args.out)
    finally:
        csv_rows.close()
    shown = dict(doc, anomalies={k: v for k, v in doc["anomalies"].items() if k not in blind})
    if args.json:
        sys.stdout.write(canonical_json(doc))
        for line in notes:
            print(line, file=sys.stderr)
        print(f"wrote {path} and {csv_path} ({csv_rows.rows:,} instances)", file=sys.stderr)
    else:
        print_summary(shown)
        for line in notes:
            print(line)
        print(f"wrote {path}")
        print(f"wrote {csv_path} ({csv_rows.rows:,} instances, one row each)")
    return 0


def _history_section(summary: Any, paths: list[str], problems: Any, late: Any, rows: int) -> dict[str, Any]:
    from sim.check import suggest_event_type

    return {
        "files": [Path(p).name for p in paths],
        "events": summary.events,
        "late_events": summary.late_events,
        "unattributed_events": summary.unattributed_events,
        "refused_lines": problems.count,
        "problems": problems.to_dict(),
        "late": late.to_dict(),
        "duplicate_events": summary.duplicate_events,
        "unknown_types": {t: {"events": n, "did_you_mean": suggest_event_type(t)}
                          for t, n in summary.unknown_types.items()},
        "orders_seen": summary.orders_seen,
        "observed": summary.observed,
        "observed_how": summary.observed_how,
        "money_from": summary.money_from,
        "not_observable": summary.not_observable,
        "inferred": summary.inferred,
        "anomalies_csv": {"file": "anomalies.csv", "rows": rows},
    }
