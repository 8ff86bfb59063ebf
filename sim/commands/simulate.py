"""``checkout-chaos simulate SCENARIO``: replications, anomaly rates with 95% confidence intervals."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from sim.commands.common import add_scenario_args, note_inert, positive_int, scenario_from_args, writable_dir


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Simulate a scenario: buyers, app, order service, gateway, bank, merchant and BNPL provider on a "
        "virtual clock. Runs independent replications (in parallel with --jobs), checks every order's "
        "history for anomalies and reports each class's rate with a 95% confidence interval, how long it "
        "lasted and how much money it held, plus queueing metrics per actor. Writes DIR/results.json and "
        "DIR/anomalies.csv (one row per anomaly instance)."
    )
    p.epilog = (
        "examples:\n"
        "  checkout-chaos simulate scenarios/baseline.toml\n"
        "  checkout-chaos simulate scenarios/mall_pattern.toml -n 20 --jobs 2 --out results/mall\n"
        "  checkout-chaos simulate scenarios/mall_pattern.toml -n 20 --dask-workers 2 --out results/mall\n"
        "  checkout-chaos simulate scenarios/mall_pattern.toml --set order_service.close_policy=close_trade_then_order\n"
    )
    add_scenario_args(p)
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="worker processes for replications (default: one per core); results do not depend on it")
    dask = p.add_mutually_exclusive_group()
    dask.add_argument("--dask", metavar="ADDRESS", default=None, help="run replications on this Dask scheduler")
    dask.add_argument("--dask-workers", metavar="N", type=int, default=None,
                      help="run replications on a Dask LocalCluster of N worker processes started for this run "
                           "(pip install 'checkout-chaos[dask]'); results do not depend on it")
    p.add_argument("--out", metavar="DIR", default=None, help="results directory (default results/<scenario>)")
    p.add_argument("--report", action="store_true", help="also write charts and index.html into DIR/report")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of the table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.check import write_anomalies_csv
    from sim.results import canonical_json, print_summary, run_info, write_results
    from sim.runner import Interrupted, default_jobs, local_cluster, pool, replicate

    scenario = scenario_from_args(args)
    note_inert(scenario)
    jobs = positive_int("--jobs", args.jobs) if args.jobs is not None else min(default_jobs(), scenario.run.replications)
    dask_workers = getattr(args, "dask_workers", None)
    if dask_workers is not None:
        positive_int("--dask-workers", dask_workers)
    out = writable_dir(Path(args.out) if args.out else Path("results") / (scenario.name or "simulation"))
    if args.report:
        writable_dir(out / "report", "--report")
    err = Console(stderr=True)
    command = ["checkout-chaos", *sys.argv[1:]]
    interrupted: Interrupted | None = None
    started = time.time()
    try:
        with local_cluster(dask_workers) if dask_workers is not None else nullcontext(args.dask) as address:
            reps = replicate(scenario, None, jobs, address, not args.quiet)
        doc = pool(scenario, reps)  # what sim.runner.simulate does, keeping the replications for anomalies.csv
        doc["run_info"] = run_info(started, command)
        doc["run_info"]["jobs"] = jobs
        if dask_workers is not None:
            doc["run_info"]["dask_workers"] = dask_workers
    except Interrupted as exc:
        if not exc.finished:
            err.print("interrupted: no replication had finished; nothing written")
            return 130
        interrupted = exc
        reps = [r for _, r in sorted(exc.finished, key=lambda pair: pair[0])]
        doc = partial_document(scenario, exc, jobs, command)
    path = write_results(doc, out)
    csv_path = write_anomalies_csv(out, [r.summary for r in reps])
    if args.json:
        print(canonical_json(doc))
    else:
        print_summary(doc)
    err.print(f"results: {path}")
    if csv_path is not None:
        err.print(f"anomaly instances (one row each): {csv_path}")
    if interrupted is not None:
        done = sorted(i for i, _ in interrupted.finished)
        err.print(f"interrupted: kept the {len(done)} of {interrupted.planned} replications that had finished "
                  f"(replications {', '.join(map(str, done))}); {path} is marked partial. Run again for all of them.")
        return 130
    if args.report:
        from reports.cli import render_report

        index = render_report([doc], out / "report")
        err.print(f"report: {index}")
    return 0


def partial_document(scenario, exc, jobs: int, command: list[str]) -> dict:
    """The results document of the replications that finished before Ctrl-C, marked ``partial``."""
    import time

    from sim.results import run_info
    from sim.runner import pool

    finished = sorted(exc.finished, key=lambda pair: pair[0])
    doc = pool(scenario, [r for _, r in finished])
    doc["partial"] = {"reason": "interrupted", "replications_finished": [i for i, _ in finished],
                      "replications_planned": exc.planned}
    doc["run_info"] = run_info(exc.started or time.time(), command)
    doc["run_info"]["jobs"] = jobs
    return doc
