"""``checkout-chaos sweep SCENARIO --vary key=v1,v2 [--compare key=a,b]``: a grid of scenario variants."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.commands.common import add_scenario_args, positive_int, scenario_from_args, writable_dir


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run a grid of scenario variants: the cartesian product of the --vary values, each compared across "
        "the --compare variants, every point on the same seed (common random numbers: compared variants "
        "meet the same buyers, arrivals and latencies). One task per (point, replication) runs in a local "
        "process pool (--jobs) or on a Dask scheduler (--dask); results do not depend on which. Writes "
        "DIR/sweep.json (one results document per point, docs/results.md), DIR/sweep.csv (one row per "
        "point and anomaly class: occurred and unresolved orders, rates and 95% CIs, time to repair, money "
        "held at the end) and DIR/anomalies.csv (one row per anomaly instance, with its point). Ctrl-C keeps the finished runs "
        "in DIR/.partial; --resume runs only the rest. Every --vary/--compare key and value is checked "
        "before anything runs."
    )
    p.epilog = (
        "examples:\n"
        "  checkout-chaos sweep scenarios/mall_pattern.toml --vary order_service.order_ttl=15m,30m,1h,2h \\\n"
        "      --compare order_service.close_policy=naive,close_trade_then_order -n 3\n"
        "  checkout-chaos sweep scenarios/double11_midnight.toml --vary bank.channels=4,5,6,8 \\\n"
        "      --vary load.arrival_rate=0.5,1 --jobs 2 --out results/d11-capacity\n"
        "  checkout-chaos sweep scenarios/reconciliation_daily.toml --vary reconciliation.interval=1h,6h,1d\n"
        "  checkout-chaos sweep scenarios/notifications_lost.toml --vary order_service.order_ttl=15m,20m,30m \\\n"
        "      --dask tcp://scheduler:8786 --out results/lost\n"
        "  checkout-chaos sweep ... --out results/lost --resume      # after Ctrl-C: run only what is missing\n"
        "\n"
        "values are written as with --set (TOML: 15m, 0.2, true, [\"1h\",\"6h\"], {dist=\"exponential\",mean=\"1s\"});\n"
        "commas inside [...] or {...} do not split values."
    )
    add_scenario_args(p)
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis: the values to try for one scenario key (repeatable: the grid is the product)")
    p.add_argument("--compare", action="append", default=[], metavar="KEY=A,B,...",
                   help="variants compared at every grid point on common random numbers, e.g. "
                        "order_service.close_policy=naive,close_trade_then_order (repeatable)")
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="worker processes (default: one per core); results do not depend on it")
    p.add_argument("--dask", metavar="ADDRESS", default=None,
                   help="run the tasks on this Dask distributed scheduler (pip install 'checkout-chaos[dask]')")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default results/sweep-<scenario>)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the runs an interrupted sweep left in DIR/.partial and run only the rest")
    p.add_argument("--report", action="store_true", help="also write charts and index.html into DIR/report")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.runner import default_jobs
    from sim.sweep import PARTIAL_DIR, PartialStore, describe_runs, plan_sweep, run_sweep, write_sweep

    base = scenario_from_args(args)
    plan = plan_sweep(base, args.vary, args.compare)  # every point validated before anything runs
    n_runs = len(plan.tasks())
    jobs = positive_int("--jobs", args.jobs) if args.jobs is not None else min(default_jobs(), n_runs)
    out = writable_dir(Path(args.out) if args.out else Path("results") / f"sweep-{base.name or 'scenario'}")
    if args.report:
        writable_dir(out / "report", "--report")
    err = Console(stderr=True)
    err.print(f"sweep {base.name or ''}: {describe_runs(plan)}"
              + (f" on {args.dask}" if args.dask else f", {jobs} job{'s' if jobs != 1 else ''}"))
    store = PartialStore(out)
    stored = store.count()
    if args.resume:
        reusable = store.reusable(plan)
        if reusable:
            err.print(f"resume: reusing {reusable} of {n_runs} runs stored in {out / PARTIAL_DIR}; "
                      f"running the other {n_runs - reusable}")
        elif stored:
            err.print(f"resume: the {stored} run{'s' if stored != 1 else ''} stored in {out / PARTIAL_DIR} belong "
                      "to another sweep (other keys, values, seed or scenario); starting afresh")
        else:
            err.print(f"resume: nothing to resume in {out / PARTIAL_DIR} (no interrupted sweep there); "
                      "starting afresh")
    elif stored:
        err.print(f"discarding {stored} run{'s' if stored != 1 else ''} an interrupted sweep left in "
                  f"{out / PARTIAL_DIR} (add --resume to reuse them)")
    try:
        doc = run_sweep(plan, out, jobs=jobs, dask=args.dask, resume=args.resume, progress=not args.quiet,
                        command=["checkout-chaos", *sys.argv[1:]])
    except KeyboardInterrupt:
        kept = PartialStore(out).count()
        err.print(f"interrupted: {kept} finished run{'s' if kept != 1 else ''} kept in {out / PARTIAL_DIR}; "
                  "run the same command with --resume to finish the rest")
        return 130
    json_path, csv_path = write_sweep(doc, out)
    PartialStore(out).clear()
    if args.resume:
        reused = doc["run_info"].get("runs_reused", 0)
        err.print(f"resume: {reused} of {n_runs} runs reused, {n_runs - reused} run now")
    _print_table(doc, Console() if sys.stdout.isatty() else Console(width=160))
    err.print(f"results: {json_path}\ncsv: {csv_path}")
    if doc.get("anomalies_csv", {}).get("file"):
        err.print(f"anomaly instances (one row each): {out / doc['anomalies_csv']['file']} "
                  f"({doc['anomalies_csv']['rows']:,} rows)")
    if args.report:
        try:
            from reports.cli import render_report
        except ImportError:
            err.print("--report: the reports package is not available in this build; skipped")
        else:
            index = render_report([doc], out / "report")
            err.print(f"report: {index}")
    return 0


def _print_table(doc: dict, console) -> None:
    """One row per point: its parameters and the rates of the classes that appear anywhere in the sweep."""
    from rich import box
    from rich.table import Table

    from sim.results import format_rate as _rate
    from sim.sweep import _cell

    keys = list(doc["vary"]) + list(doc["compare"])
    classes = [c for c in doc["points"][0]["results"]["anomalies"]
               if any(p["results"]["anomalies"][c]["count"] or p["results"]["anomalies"][c]["repaired"]
                      for p in doc["points"])]
    table = Table(title=f"anomaly rates per point, occurred / unresolved at the end (95% CIs in sweep.csv) — "
                        f"{doc.get('scenario_name') or 'sweep'}", title_justify="left", box=box.SIMPLE_HEAD)
    for k in keys:
        table.add_column(k.rsplit(".", 1)[-1], overflow="fold")
    table.add_column("orders", justify="right", no_wrap=True)
    for c in classes:  # names wrap at their words rather than being cut ("success_shown_then_c…")
        table.add_column(c.replace("_", " ") + "\noccurred / unresolved", justify="right", overflow="fold")
    for p in doc["points"]:
        res = p["results"]
        cells = [_cell(p["params"][k]) for k in keys] + [f"{res['orders']:,}"]
        for c in classes:
            a = res["anomalies"][c]
            cells.append(f"{_rate(a.get('occurred_rate'))} / {_rate(a.get('unresolved_rate', a.get('rate')))}")
        table.add_row(*cells)
    console.print(table)
