"""``checkout-chaos compare SCENARIO``: predicted (simulation) against measured (live), side by side.

Both runs see the same conditions: the simulation runs the scenario over the live run's window (its
``run.horizon`` and ``run.drain`` set to what the live run covers at the chosen time scale), the live
run replays it against the services. ``DIR/compare.json`` holds both documents and, per anomaly class,
both 95% intervals and whether they overlap; ``DIR/simulation/results.json`` and
``DIR/live/results.json`` hold each document on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  checkout-chaos compare scenarios/mall_pattern.toml --set load.arrival_rate=1 --time-scale 60 --run-time 60s \
      --drain 90s --out results/mall-compare
  checkout-chaos compare scenarios/baseline.toml -n 10 --jobs 2 --report

exit codes: 0 the comparison is conclusive; 2 a usage or configuration error; 3 it is not conclusive (the
live run is not valid, or its window lets fewer than half of the counted orders be watched through their
story: a banner says which, and "agree" then means little).
"""


def configure(p: argparse.ArgumentParser) -> None:
    from sim.commands.common import add_scenario_args

    from loadtests.cli import add_live_args

    p.description = (
        "Simulate a scenario and run it live at the same (time-scaled) conditions, then put the rates side by "
        "side: each anomaly class's rate and 95% interval, predicted and measured, and whether they agree "
        "(the intervals overlap). Writes DIR/compare.json, DIR/simulation/results.json and DIR/live/results.json."
    )
    p.epilog = EPILOG
    add_scenario_args(p)
    add_live_args(p, out_default="results/<scenario>-compare")
    p.add_argument("--jobs", "-j", type=int, default=1, help="worker processes for the simulation's replications")
    p.add_argument("--json", action="store_true", help="print compare.json instead of the table")


def simulation_scenario(scenario: Any, window: Any) -> Any:
    """The scenario the simulation runs: the live window's horizon and drain, everything else unchanged."""
    from sim.scenario import format_duration

    return scenario.with_overrides({"run.horizon": format_duration(window.horizon),
                                    "run.drain": format_duration(window.drain)}, source="compare")


def agreement(sim: dict[str, Any], live: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per class: both 95% intervals (the rate itself when a document has none) and whether they overlap."""
    from sim.vocabulary import ANOMALY_CLASSES

    out = {}
    for cls in ANOMALY_CLASSES:
        s, m = (sim.get("anomalies") or {}).get(cls) or {}, (live.get("anomalies") or {}).get(cls) or {}
        si, li = _interval(s), _interval(m)
        out[cls] = {"sim": si, "live": li, "sim_rate": s.get("rate", 0.0), "live_rate": m.get("rate", 0.0),
                    "agree": si[0] <= li[1] and li[0] <= si[1],
                    "live_in_sim": si[0] <= m.get("rate", 0.0) <= si[1],
                    "sim_in_live": li[0] <= s.get("rate", 0.0) <= li[1]}
    return out


def _interval(a: dict[str, Any]) -> list[float]:
    ci = a.get("ci95")
    r = float(a.get("rate") or 0.0)
    return [float(ci[0]), float(ci[1])] if ci else [r, r]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.commands.common import positive_int, scenario_from_args, writable_dir
    from sim.results import SCHEMA_VERSION, atomic_write, canonical_json, write_results
    from sim.runner import simulate

    from loadtests.cli import live_options, print_live
    from loadtests.live import run_live
    from loadtests.plan import live_window

    scenario = scenario_from_args(args)
    jobs = positive_int("--jobs", args.jobs)
    out = writable_dir(Path(args.out) if args.out else Path("results") / f"{scenario.name or 'scenario'}-compare")
    for sub in ("simulation", "live") + (("report",) if args.report else ()):
        writable_dir(out / sub, "--out" if sub != "report" else "--report")
    opts = live_options(args, out / "live")
    window = live_window(scenario, opts.time_scale, opts.run_time, opts.drain)
    err = Console(stderr=True)
    from loadtests.validity import preflight

    for warning in preflight(scenario, window, opts.workers)["warnings"]:
        err.print(f"[yellow]warning:[/] the live run {warning}", highlight=False)
    opts.warn_preflight = False
    err.print(f"simulating {scenario.name or 'the scenario'} over the live window "
              f"(horizon {window.horizon:g}s, drain {window.drain:g}s of scenario time) ...")
    sim_doc = simulate(simulation_scenario(scenario, window), jobs=jobs, progress=not args.quiet,
                       command=["checkout-chaos", *sys.argv[1:]])
    live_doc = run_live(scenario, opts)
    write_results(sim_doc, out / "simulation")
    write_results(live_doc, out / "live")
    agree = agreement(sim_doc, live_doc)
    doc = {"schema_version": SCHEMA_VERSION, "kind": "compare", "scenario_name": scenario.name,
           "simulation": sim_doc, "live": live_doc, "agreement": agree, **conclusiveness(live_doc)}
    path = out / "compare.json"
    atomic_write(path, canonical_json(doc))
    if args.json:
        print(canonical_json(doc))
    else:
        print_live(live_doc)
        print_comparison(sim_doc, live_doc, agree)
    err.print(f"comparison: {path}")
    if args.report:
        from reports.cli import render_report

        err.print(f"report: {render_report([sim_doc, live_doc], out / 'report')}")
    return comparison_exit(doc, err)


def conclusiveness(live_doc: dict[str, Any]) -> dict[str, Any]:
    """``conclusive`` and why not: the live run is not valid, or its window sees too few orders' stories
    through (``loadtests.validity.CONCLUSIVE_SHARE``) — agreeing then says nothing, least of all at 0."""
    from loadtests.validity import CONCLUSIVE_SHARE

    reasons = []
    if live_doc.get("valid") is False:
        reasons.append("the live run is not valid: " + "; ".join((live_doc.get("validity") or {}).get("reasons") or ()))
    win = ((live_doc.get("live") or {}).get("preflight") or {}).get("window") or {}
    share = win.get("seen_through_share")
    if share is not None and share < CONCLUSIVE_SHARE:
        reasons.append(f"the window ({win.get('observed_s', 0) / 60:.0f} min of scenario time) lets only {share:.0%} of "
                       f"the counted orders be watched through their story ({win.get('parts')}); both sides are "
                       "truncated alike, so classes agree because both miss what happens later — lengthen "
                       f"--drain to {win.get('drain_wall_needed_s', 0):.0f}s or more (and --run-time), or lower "
                       "order_service.order_ttl for the comparison")
    return {"conclusive": not reasons, "inconclusive_reasons": reasons}


def comparison_exit(doc: dict[str, Any], err: Any) -> int:
    """3 (after a banner) when the comparison is not conclusive, else 0."""
    if doc.get("conclusive", True):
        return 0
    from loadtests.cli import print_invalid_banner

    live = doc["live"]
    validity = {"reasons": doc["inconclusive_reasons"], "advice": (live.get("validity") or {}).get("advice") or []}
    print_invalid_banner(validity, err, "THIS COMPARISON IS NOT CONCLUSIVE")
    return 3


def print_comparison(sim: dict[str, Any], live: dict[str, Any], agree: dict[str, dict[str, Any]],
                     console: Any = None) -> None:
    """Predicted and measured rates per class with their intervals, and whether they agree."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from sim.results import format_rate as _rate

    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=120)
    table = Table(title=f"predicted ({sim.get('orders', 0):,} orders, {sim.get('replications')} replications) vs "
                        f"measured ({live.get('orders', 0):,} orders)", title_justify="left", box=box.SIMPLE_HEAD)
    for c in ("anomaly", "simulation", "95% CI", "live", "95% CI ", "agree"):
        table.add_column(c, justify="left" if c == "anomaly" else "right", no_wrap=True)
    for cls, a in agree.items():
        quiet = not a["sim_rate"] and not a["live_rate"]
        table.add_row(cls, _rate(a["sim_rate"]), f"[{_rate(a['sim'][0])}, {_rate(a['sim'][1])}]", _rate(a["live_rate"]),
                      f"[{_rate(a['live'][0])}, {_rate(a['live'][1])}]",
                      "yes" if a["agree"] else "[red]no[/]", style="dim" if quiet else None)
    console.print(table)
