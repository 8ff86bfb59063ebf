"""``checkout-chaos compare SCENARIO``: predicted (simulation) against measured (live), side by side.

Both runs see the same conditions: the simulation runs the scenario over the live run's window (its
``run.horizon`` and ``run.drain`` set to what the live run covers at the chosen time scale), the live
run replays it against the services. ``DIR/compare.json`` holds both documents and, per anomaly class
and for both the share of orders where it occurred and the share still unresolved at the end, both 95%
intervals and whether they overlap; ``DIR/simulation/`` and ``DIR/live/`` hold each document on its own
(``results.json``) with its ``anomalies.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  checkout-chaos compare scenarios/mall_pattern.toml --set load.arrival_rate=1 --time-scale 60 --run-time 60s \\
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
        "side: for each anomaly class the share of orders where it occurred and the share still unresolved at "
        "the end, each with its 95% interval, predicted and measured, and whether they agree (the intervals "
        "overlap). Writes DIR/compare.json, and results.json and anomalies.csv in DIR/simulation and DIR/live."
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


MEASURES = ("occurred", "unresolved")


def agreement(sim: dict[str, Any], live: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per class and measure (occurred, unresolved): both 95% intervals (the rate itself when a document has
    none), the rates, and whether the intervals overlap. The top-level keys of each class repeat the
    unresolved measure (what compare.json held before occurred was recorded). A class the live history
    could not decide (``observable`` false) agrees with nothing: ``agree`` is None."""
    from sim.vocabulary import ANOMALY_CLASSES

    out: dict[str, dict[str, Any]] = {}
    for cls in ANOMALY_CLASSES:
        s, m = (sim.get("anomalies") or {}).get(cls) or {}, (live.get("anomalies") or {}).get(cls) or {}
        decidable = s.get("observable", True) and m.get("observable", True)
        entry: dict[str, Any] = {"observable": decidable}
        for measure in MEASURES:
            si, li = _interval(s, measure), _interval(m, measure)
            sr, lr = _rate(s, measure), _rate(m, measure)
            entry[measure] = {"sim": si, "live": li, "sim_rate": sr, "live_rate": lr,
                              "agree": (si[0] <= li[1] and li[0] <= si[1]) if decidable else None,
                              "live_in_sim": si[0] <= lr <= si[1], "sim_in_live": li[0] <= sr <= li[1]}
        entry.update(entry["unresolved"])
        out[cls] = entry
    return out


def _rate(a: dict[str, Any], measure: str) -> float:
    value = a.get(f"{measure}_rate")
    if value is None:  # a schema 1 document: its rate is the unresolved one
        value = a.get("rate") if measure == "unresolved" else None
    return float(value or 0.0)


def _interval(a: dict[str, Any], measure: str = "unresolved") -> list[float]:
    ci = a.get(f"{measure}_ci95") or (a.get("ci95") if measure == "unresolved" else None)
    r = _rate(a, measure)
    return [float(ci[0]), float(ci[1])] if ci else [r, r]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.check import write_anomalies_csv
    from sim.commands.common import note_inert, positive_int, scenario_from_args, writable_dir
    from sim.results import SCHEMA_VERSION, atomic_write, canonical_json, run_info, write_results
    from sim.runner import pool, replicate

    from loadtests.cli import live_options, print_live
    from loadtests.live import run_live
    from loadtests.plan import live_window

    scenario = scenario_from_args(args)
    note_inert(scenario)
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
    sim_scenario = simulation_scenario(scenario, window)
    started = time.time()
    reps = replicate(sim_scenario, None, jobs, None, not args.quiet)
    sim_doc = pool(sim_scenario, reps)  # what sim.runner.simulate does, keeping the replications for anomalies.csv
    sim_doc["run_info"] = run_info(started, ["checkout-chaos", *sys.argv[1:]])
    sim_doc["run_info"]["jobs"] = jobs
    write_anomalies_csv(out / "simulation", [r.summary for r in reps])
    del reps
    live_doc = run_live(scenario, opts)  # writes DIR/live/anomalies.csv beside its history
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
    """Per class, predicted and measured: the share of orders where it occurred and the share still
    unresolved at the end, each with its 95% interval, and whether they agree."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from sim.results import format_rate as _rate

    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=160)

    def cell(rate: float, ci: list[float]) -> str:
        return f"{_rate(rate)} [{_rate(ci[0])}, {_rate(ci[1])}]"

    def verdict(a: dict[str, Any]) -> str:
        return "n/a" if a["agree"] is None else "yes" if a["agree"] else "[red]no[/]"

    table = Table(title=f"predicted ({sim.get('orders', 0):,} orders, {sim.get('replications')} replications) vs "
                        f"measured ({live.get('orders', 0):,} orders): share of counted orders [95% CI] where the "
                        "class occurred (arose at all) and where it was unresolved (still open at the end)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("anomaly", justify="left", no_wrap=True)
    for measure in MEASURES:
        table.add_column(f"{measure}\nsimulation", justify="right", no_wrap=True)
        table.add_column(f"{measure}\nlive", justify="right", no_wrap=True)
        table.add_column(f"{measure}\nagree", justify="right", no_wrap=True)
    for cls, a in agree.items():
        occ, unres = a["occurred"], a["unresolved"]
        if not a.get("observable", True):
            table.add_row(cls, *["not observable"] * 2, "n/a", *["not observable"] * 2, "n/a", style="dim")
            continue
        quiet = not (occ["sim_rate"] or occ["live_rate"] or unres["sim_rate"] or unres["live_rate"])
        table.add_row(cls, cell(occ["sim_rate"], occ["sim"]), cell(occ["live_rate"], occ["live"]), verdict(occ),
                      cell(unres["sim_rate"], unres["sim"]), cell(unres["live_rate"], unres["live"]), verdict(unres),
                      style="dim" if quiet else None)
    console.print(table)
