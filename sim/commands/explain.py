"""``checkout-chaos explain SCENARIO``: which inputs drive each anomaly's rate (Morris screening)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.commands.common import add_scenario_args, positive_int, scenario_from_args, writable_dir

EPILOG = """\
examples:
  checkout-chaos explain scenarios/mall_pattern.toml --set run.horizon=20m --set run.drain=3h --jobs 2
  checkout-chaos explain scenarios/mall_pattern.toml --vary order_service.order_ttl=15m..2h \\
      --vary user.pay_delay=30s..10m --vary gateway.notify_loss=0..0.3 --vary bnpl.deduction_failure=0..0.2
  checkout-chaos explain scenarios/double11_midnight.toml --measure unresolved -r 6 --out results/d11-explain

what it does: picks the scenario's numeric inputs (probabilities, the medians of its latency
distributions, TTLs, timeouts and intervals, each over 0.5x..2x of its value; inputs at 0 or off are
left out), or the --vary ranges you give, samples them with the Morris method (SALib: R trajectories of
one-at-a-time steps through a LEVELS-level grid, (inputs + 1) x R points), simulates every point on
the scenario's seed (common random numbers) and ranks the inputs per anomaly class by mu*: the mean
|change in the rate per order| as the input moves across its range, with a 95% bootstrap interval.
sigma large against mu* means the input acts through interactions or non-linearly.
A run costs (inputs + 1) x R x N simulations: scale the scenario down with --set (run.horizon,
run.drain, load.arrival_rate) for a first look, then narrow the inputs with --vary.
Writes DIR/explain.json and the chart DIR/explain.png + .svg (docs/explain.md)."""


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Rank a scenario's inputs by how much each moves each anomaly's rate: a Morris screening "
                     "(SALib) on common random numbers, with 95% bootstrap intervals, a table per class and a chart.")
    p.epilog = EPILOG
    add_scenario_args(p)
    p.add_argument("--vary", action="append", default=[], metavar="KEY=LOW..HIGH",
                   help="screen this input over this range instead of the default set (repeatable); "
                        "a distribution by its median/mean (user.pay_delay=30s..10m) or by factors (0.5x..4x)")
    p.add_argument("--trajectories", "-r", type=int, default=4, metavar="R",
                   help="Morris trajectories (default 4; more: tighter intervals, proportionally longer)")
    p.add_argument("--levels", type=int, default=4, metavar="L", help="grid levels per input (default 4, even)")
    p.add_argument("--measure", choices=("occurred", "unresolved"), default="occurred",
                   help="rank by the rate of instances that occurred (default; repaired ones too) or of those "
                        "still unresolved at the end; explain.json holds both")
    p.add_argument("--top", type=int, default=5, metavar="K", help="inputs shown per class (default 5)")
    p.add_argument("--resamples", type=int, default=1000, metavar="B", help="bootstrap resamples (default 1000)")
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="worker processes (default: one per core); results do not depend on it")
    p.add_argument("--dask", metavar="ADDRESS", default=None, help="run the points on this Dask scheduler")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default results/explain-<scenario>)")
    p.add_argument("--json", action="store_true", help="print explain.json instead of the tables")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.errors import ConfigError
    from sim.explain import EXPLAIN_FILE, default_inputs, draw_chart, explain, parse_vary
    from sim.results import atomic_write
    from sim.runner import default_jobs

    scenario = scenario_from_args(args)
    replications = positive_int("--replications", args.replications) if args.replications is not None else 1
    trajectories = positive_int("--trajectories", args.trajectories)
    if trajectories < 2:
        raise ConfigError(f"--trajectories: expected at least 2 (the interval needs more than one effect), "
                          f"found {trajectories}")
    if args.levels < 2 or args.levels % 2:
        raise ConfigError(f"--levels: expected an even number of at least 2, found {args.levels}")
    top = positive_int("--top", args.top)
    resamples = positive_int("--resamples", args.resamples)
    inputs = [parse_vary(scenario, spec) for spec in args.vary] if args.vary else default_inputs(scenario)
    out = writable_dir(Path(args.out) if args.out else Path("results") / f"explain-{scenario.name or 'scenario'}")
    err = Console(stderr=True)
    n_points = (len(inputs) + 1) * trajectories
    jobs = positive_int("--jobs", args.jobs) if args.jobs is not None else min(default_jobs(), n_points)
    err.print(f"explain {scenario.name or ''}: {len(inputs)} inputs, {trajectories} trajectories = {n_points} points "
              f"x {replications} replication{'s' if replications != 1 else ''} = {n_points * replications} runs"
              + (f" on {args.dask}" if args.dask else f", {jobs} job{'s' if jobs != 1 else ''}"))
    doc = explain(scenario, inputs, trajectories=trajectories, levels=args.levels, replications=replications,
                  jobs=jobs, dask=args.dask, resamples=resamples, progress=not args.quiet,
                  command=["checkout-chaos", *sys.argv[1:]])
    from sim.results import canonical_json

    out.mkdir(parents=True, exist_ok=True)
    path = out / EXPLAIN_FILE
    atomic_write(path, canonical_json(doc))
    png, svg = draw_chart(doc, out, measure=args.measure, top=max(top, 8))
    if args.json:
        sys.stdout.write(canonical_json(doc))
    else:
        print_explain(doc, args.measure, top, Console() if sys.stdout.isatty() else Console(width=130))
    err.print(f"results: {path}\nchart: {png} (+ .svg)")
    return 0


def print_explain(doc: dict, measure: str, top: int, console) -> None:
    """One table per anomaly class that occurred: its inputs ranked by mu*, with intervals."""
    from rich import box
    from rich.table import Table

    from sim.results import format_rate

    inputs = {i["key"]: i for i in doc["inputs"]}
    quiet = []
    m = doc["method"]
    console.print(f"[bold]what drives each rate[/] — {doc.get('scenario_name') or 'scenario'} · Morris screening, "
                  f"{m['points']} points x {m['replications_per_point']} replication(s) on seed {doc['seed']} "
                  f"(common random numbers) · rate = {measure} instances per order")
    for cls, entry in doc["classes"].items():
        e = entry[measure]
        if not e["ranking"]:
            quiet.append(cls)
            continue
        table = Table(title=f"{cls}: mean rate {format_rate(e['mean_rate'])} per order over the points "
                            f"(max {format_rate(e['max_rate'])})", title_justify="left", box=box.SIMPLE_HEAD)
        for c in ("rank", "input", "range", "mu*", "95% CI", "sigma", "as it grows"):
            table.add_column(c, justify="right" if c in ("rank", "mu*", "95% CI", "sigma") else "left")
        for r in e["ranking"][:top]:
            i = inputs[r["key"]]
            table.add_row(str(r["rank"]), r["key"], f"{i['lo']} .. {i['hi']}", format_rate(r["mu_star"]),
                          f"[{format_rate(r['mu_star_ci95'][0])}, {format_rate(r['mu_star_ci95'][1])}]",
                          format_rate(r["sigma"]), r["direction"])
        console.print(table)
    console.print("mu*: mean |change in the rate per order| as the input moves across its range; "
                  "95% CI: bootstrap over the elementary effects; sigma: their spread (interactions, non-linearity); "
                  "as it grows: the rate rises or falls as the input goes from low to high (mixed: both).")
    if quiet:
        console.print(f"no {measure} instances at any point: {', '.join(quiet)}")
