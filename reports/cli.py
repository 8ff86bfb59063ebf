"""``checkout-chaos report RESULTS.json [MORE.json ...] --out DIR``: charts and a self-contained HTML report.

Module-level imports stay light (argparse only): matplotlib is imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Draw every chart the given results allow (PNG and SVG) and write one self-contained index.html\n"
        "(images embedded, no network needed) with a written summary, the anomaly table and the scenario."
    )
    parser.epilog = (
        "inputs: results JSON from simulate, check or load (docs/results.md), a sweep document\n"
        "(reports/documents.py), or an explain.json from checkout-chaos explain (what drives each rate,\n"
        "docs/explain.md). A simulation and a live result of the same scenario are also drawn side by side.\n\n"
        "examples:\n"
        "  checkout-chaos report results/baseline/results.json --out results/baseline/report\n"
        "  checkout-chaos report sim.json live.json --out report --example-class success_shown_then_closed\n"
        "  checkout-chaos report results/mall_pattern results/explain-mall_pattern --out report"
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS.json",
                        help="results, sweep or explain documents, or directories holding a results.json or explain.json")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for the charts and index.html (created if missing)")
    parser.add_argument("--example-class", metavar="CLASS", default=None,
                        help="anomaly class whose example history to draw as a story "
                             "(default: paid_but_closed if present, else the most frequent class with an example)")


def run(args: argparse.Namespace) -> int:
    from reports.documents import load_document
    from reports.render import build_report
    from sim.commands.common import writable_dir

    writable_dir(args.out)
    docs = [load_document(p) for p in args.results]
    report = build_report(docs, args.out, example_class=args.example_class, sources=[str(p) for p in args.results])
    for path in report.paths:
        print(path)
    if args.example_class and not any(c.kind == "story" for c in report.charts):
        print(f"note: no example of {args.example_class} in these results; no story drawn")
    return 0


def render_report(docs: list[dict], out_dir: Path, *, example_class: str | None = None) -> Path:
    """Charts and index.html for in-memory results (``simulate --report``, ``sweep --report``,
    ``load --report``); returns the index path. Raises :class:`~sim.errors.ConfigError` on a bad document."""
    from reports.render import render_report as render

    return render(docs, out_dir, example_class=example_class)
