"""``checkout-chaos load SCENARIO``: the live run (services + Locust + checker), results JSON, thresholds.

Module-level imports stay light: Locust runs in its own processes (``loadtests/locustfile.py``), the
services in theirs; this module imports the orchestrator only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  checkout-chaos load scenarios/mall_pattern.toml --time-scale 60 --run-time 1m --out results/mall-live
  checkout-chaos load scenarios/baseline.toml --workers 2 --report
  checkout-chaos load scenarios/baseline.toml --master --expect-workers 2 --master-bind-host 10.0.0.5 \
      --allow-remote --provider-host 10.0.0.5   # then on each load machine:
  checkout-chaos load-worker --master-host 10.0.0.5
  checkout-chaos load scenarios/double11_midnight.toml --web   # watch it at http://127.0.0.1:8089
  checkout-chaos load scenarios/mall_pattern.toml --set order_service.close_policy=close_trade_then_order
  checkout-chaos load scenarios/baseline.toml --time-scale 1 --target http://127.0.0.1:9000 \\
      --target-config my_checkout.toml --provider-port 8801 --notify-secret "$SECRET"

exit codes: 0 the run is valid and every threshold of the scenario's thresholds holds; 1 one fails
(named on stderr); 2 a usage or configuration error; 3 the run is not valid (it missed its own health
limits of the [live] section: achieved arrivals, error rates, start lag, buyers unfinished; a banner
says why and what to lower), whatever the thresholds say.
"""


def add_live_args(p: argparse.ArgumentParser, out_default: str = "results/<scenario>-live") -> None:
    """Options shared by ``load`` and ``compare`` (each names its own default output directory)."""
    p.add_argument("--time-scale", type=float, default=None, metavar="K",
                   help="scenario seconds per wall second (default: the scenario's live.time_scale)")
    p.add_argument("--run-time", default=None, metavar="DURATION",
                   help="wall time of arrivals, e.g. 2m (default live.run_time; never past run.horizon)")
    p.add_argument("--drain", default=None, metavar="DURATION",
                   help="wall time to let timers and notifications finish after the arrivals (default live.drain)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="local Locust workers (master/worker mode); 0 runs one Locust process (default)")
    p.add_argument("--max-orders", type=int, default=None, metavar="N",
                   help="refuse a run expecting more orders than this (default 100000)")
    p.add_argument("--late-tolerance", default="50ms", metavar="DURATION",
                   help="an arrival starting later than this (wall time) after it was due is a late start (default 50ms)")
    p.add_argument("--out", default=None, metavar="DIR", help=f"results directory (default {out_default})")
    p.add_argument("--report", action="store_true", help="also write charts and index.html into DIR/report")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    add_watch_args(p)


def add_watch_args(p: argparse.ArgumentParser) -> None:
    """``--web``: Locust's own web UI on loopback while the run goes on."""
    p.add_argument("--web", action="store_true",
                   help="open Locust's web UI on 127.0.0.1 (--web-port) to watch the run; it starts by itself")
    p.add_argument("--web-port", type=int, default=8089, metavar="P", help="port of --web (default 8089)")


def add_distributed_args(p: argparse.ArgumentParser) -> None:
    """Locust's distributed mode across machines: this command runs the master, workers join it."""
    p.add_argument("--master", action="store_true",
                   help="run only a Locust master here; workers on the load machines join it with "
                        "'checkout-chaos load-worker --master-host THIS_HOST' (needs --expect-workers)")
    p.add_argument("--expect-workers", type=int, default=0, metavar="N",
                   help="with --master: start when N workers have joined (each plays every N-th arrival)")
    p.add_argument("--master-bind-host", default="127.0.0.1", metavar="H",
                   help="with --master: address workers connect to (default 127.0.0.1; another needs --allow-remote)")
    p.add_argument("--master-port", type=int, default=5557, metavar="P", help="with --master: port (default 5557)")
    p.add_argument("--worker-timeout", default="10m", metavar="DURATION",
                   help="with --master: how long to wait for the workers to join (default 10m)")


def distributed_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``LiveOptions`` fields of ``--web`` and ``--master`` (absent on ``compare``: defaults)."""
    from sim.errors import ConfigError
    from sim.scenario import parse_duration

    out: dict[str, Any] = {"web": getattr(args, "web", False), "web_port": getattr(args, "web_port", 8089)}
    if getattr(args, "master", None) is not None:
        try:
            wait = parse_duration(args.worker_timeout)
        except ValueError as exc:
            raise ConfigError(f"--worker-timeout: {exc}") from None
        out.update(master=args.master, expect_workers=args.expect_workers, master_bind_host=args.master_bind_host,
                   master_port=args.master_port, worker_timeout=wait)
    return out


def configure(p: argparse.ArgumentParser) -> None:
    from sim.commands.common import add_scenario_args

    p.description = (
        "Run a scenario live: start the mock payment provider and the reference checkout, replay the scenario's "
        "arrivals with Locust as an open workload (buyers per the [user] section, Chinese buyer data), apply its "
        "fault windows on time, drain, then check the merged client and service histories for anomalies. "
        "Writes DIR/results.json (the simulate schema plus a 'live' section with Locust's statistics), "
        "DIR/history.jsonl and the raw files; exits 1 when a threshold of the scenario fails."
    )
    p.epilog = EPILOG
    add_scenario_args(p)
    add_live_args(p)
    add_distributed_args(p)
    p.add_argument("--target", default=None, metavar="URL",
                   help="drive this checkout instead of the reference one (needs --target-config)")
    p.add_argument("--target-config", default=None, metavar="FILE",
                   help="adapter TOML: endpoints and JSON fields (see loadtests/adapters/reference.toml)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --target or --provider-host")
    p.add_argument("--provider-host", default="127.0.0.1", metavar="HOST",
                   help="address the mock provider binds (default 127.0.0.1)")
    p.add_argument("--provider-port", type=int, default=0, metavar="P",
                   help="port of the mock provider (default: a free one; fix it for a --target that calls it)")
    p.add_argument("--notify-secret", default=None, metavar="S",
                   help="HMAC secret of notifications (default $CHECKOUT_CHAOS_NOTIFY_SECRET, else generated)")
    p.add_argument("--psp", default="native", metavar="NAME",
                   help="the PSP protocol the target pays through: native (default), alipay, wechat or stripe; the "
                        "mock provider speaks it, its keys are in OUT/services/psp/NAME/, and the buyers complete "
                        "the hand-off the adapter declares for it (start_payment.handoff.NAME; docs/live.md, docs/psp/); "
                        "without --target the reference checkout pays through native, stripe (Checkout Sessions) or alipay "
                        "(precreate QR codes the buyers scan)")
    p.add_argument("--json", action="store_true", help="print the results JSON instead of the tables")


def live_options(args: argparse.Namespace, out: Path, **extra: Any):
    """``LiveOptions`` from the shared command-line options."""
    from sim.errors import ConfigError
    from sim.scenario import parse_duration

    from loadtests.live import LiveOptions
    from loadtests.plan import DEFAULT_MAX_ORDERS

    def duration(flag: str, value: str | None) -> float | None:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None

    if args.time_scale is not None and not args.time_scale > 0:
        raise ConfigError(f"--time-scale: expected a positive number, found {args.time_scale:g}")
    return LiveOptions(out=out, time_scale=args.time_scale, run_time=duration("--run-time", args.run_time),
                       drain=duration("--drain", args.drain), workers=args.workers,
                       max_orders=args.max_orders or DEFAULT_MAX_ORDERS,
                       late_tolerance=duration("--late-tolerance", args.late_tolerance),
                       progress=not args.quiet, command=["checkout-chaos", *sys.argv[1:]],
                       **distributed_options(args), **extra)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.commands.common import note_inert, scenario_from_args, writable_dir
    from sim.errors import ConfigError
    from sim.results import canonical_json, write_results

    from loadtests.live import run_live

    scenario = scenario_from_args(args)
    note_inert(scenario)
    if not 0 <= args.provider_port <= 65535:
        raise ConfigError(f"--provider-port: expected a port between 0 and 65535, found {args.provider_port}")
    out = writable_dir(Path(args.out) if args.out else Path("results") / f"{scenario.name or 'scenario'}-live")
    if args.report:
        writable_dir(out / "report", "--report")
    opts = live_options(args, out, target=args.target, target_config=args.target_config,
                        allow_remote=args.allow_remote, provider_host=args.provider_host,
                        provider_port=args.provider_port, notify_secret=args.notify_secret,
                        psp=tuple(f for f in args.psp.split(",") if f and f != "native"))
    doc = run_live(scenario, opts)
    path = write_results(doc, out)
    err = Console(stderr=True)
    if args.json:
        print(canonical_json(doc))
    else:
        print_live(doc)
    err.print(f"results: {path}")
    err.print(f"history: {out / 'history.jsonl'}")
    err.print(f"anomaly instances (one row each): {out / 'anomalies.csv'}")
    partial = doc.get("partial")
    if partial:
        from sim.results import human_duration

        err.print(f"interrupted: kept what was measured up to {human_duration(partial['interrupted_at_s'])} of "
                  f"scenario time; {path} is marked partial (orders still in flight were judged as they stood)")
    if args.report:
        from reports.cli import render_report

        err.print(f"report: {render_report([doc], out / 'report')}")
    code = live_exit(doc, err)
    return 130 if partial else code


def live_exit(doc: dict, err: Any) -> int:
    """The exit code of a live run: 3 when it is not valid (after a banner saying why), else the thresholds'."""
    code = threshold_exit(doc, err)
    validity = doc.get("validity") or {}
    for warning in validity.get("warnings") or ():
        err.print(f"[yellow]warning:[/] this run {warning}", highlight=False)
    if doc.get("valid") is False:
        print_invalid_banner(validity, err)
        return 3
    return code


def print_invalid_banner(validity: dict, err: Any, title: str = "THIS RUN IS NOT VALID") -> None:
    """A red panel on stderr: the reasons, and what to lower."""
    from rich.panel import Panel
    from rich.text import Text

    from loadtests.validity import banner_lines

    lines = banner_lines(validity, title)
    err.print(Panel(Text("\n".join(lines[1:])), title=Text(lines[0], style="bold"), border_style="red",
                    title_align="left", expand=False))


def threshold_exit(doc: dict, err: Any) -> int:
    """1 (and the failing rules on stderr) when a threshold fails, else 0."""
    results = (doc.get("live") or {}).get("thresholds") or []
    failed = [r for r in results if not r["holds"]]
    for r in results:
        mark = "[green]ok[/]  " if r["holds"] else "[red]FAIL[/]"
        err.print(f"threshold {mark} {r['rule']}  (observed {observed_text(r['rule'], r['observed'])})")
    if failed:
        err.print(f"[red]{len(failed)} of {len(results)} thresholds failed[/]")
        return 1
    return 0


def observed_text(rule: str, v: Any) -> str:
    """A threshold's observed value in the unit its rule is written in: ``157.2`` for ``p99_latency < 1ms``
    is ``2m37s (scenario time)``, an error rate a percentage, an amount in CNY."""
    from sim.results import human_duration

    if v is None:
        return "nothing (the run measured no such value)"
    metric = rule.split("<")[0].split(">")[0].strip()
    value = float(v)
    if metric.endswith("_latency"):
        exact = f"{value * 1000:.4g}ms" if value < 1 else f"{value:.1f}s"
        shown = human_duration(value)
        return f"{shown} (scenario time)" if shown == exact else f"{shown} = {exact} (scenario time)"
    if metric in ("error_rate", "achieved_ratio"):
        return f"{value:.2%}"
    if metric.endswith(".amount"):
        return f"¥{value:,.2f}"
    if metric.endswith((".count", "_count")):
        return f"{value:,.0f} instances"
    if metric.endswith("_orders"):
        return f"{value:,.0f} orders"
    if metric.endswith((".rate", "_rate")):
        return f"{value:.3g} per order"
    return f"{value:.4g}"


def print_live(doc: dict, console: Any = None) -> None:
    """The anomaly summary, then what the load generator did and measured."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from sim.results import human_duration, print_summary

    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=120)
    print_summary(doc, console)
    live = doc.get("live") or {}
    k = live.get("time_scale") or 1.0
    lag = live.get("start_lag_wall_s") or {}
    ratio = live.get("achieved_arrival_ratio")
    console.print(
        f"arrivals: {live.get('planned_arrivals', 0):,} planned, {live.get('started', 0):,} started, "
        f"{live.get('late_starts', 0):,} late, {live.get('dropped_arrivals', 0):,} dropped · achieved "
        f"{'—' if ratio is None else f'{ratio:.3f}'} · start lag p99 {human_duration(lag.get('p99'))} "
        f"(wall) · time scale {k:g}")
    console.print(
        f"calls: {live.get('requests', 0):,}, errors {live.get('failures', 0):,} (rate {live.get('error_rate', 0):.2%}) · "
        f"latency from the scheduled start p50 {human_duration(live.get('p50_latency_s'))} "
        f"p99 {human_duration(live.get('p99_latency_s'))} (scenario time; wall "
        f"{human_duration(live.get('p99_latency_wall_s'))} p99)")
    checks = (doc.get("validity") or {}).get("checks") or []
    if checks:
        held = sum(1 for c in checks if c["holds"])
        console.print(f"health: {held} of {len(checks)} checks hold · run "
                      + ("valid" if doc.get("valid") else "[bold red]NOT VALID[/] (see the banner on stderr)"))
    rows = (live.get("locust") or {}).get("requests") or []
    if rows:
        table = Table(title="Locust requests (wall time)", title_justify="left", box=box.SIMPLE_HEAD)
        for c in ("type", "name", "count", "failures", "median", "p95", "p99", "max", "req/s"):
            table.add_column(c, justify="left" if c in ("type", "name") else "right")
        ms = lambda v: "—" if v is None else f"{v:.0f}ms"  # noqa: E731
        for r in rows:
            table.add_row(r["type"], r["name"], f"{r['count']:,}", f"{r['failures']:,}", ms(r["median_ms"]),
                          ms(r["p95_ms"]), ms(r["p99_ms"]), ms(r["max_ms"]),
                          "—" if r["rps"] is None else f"{r['rps']:.1f}")
        console.print(table)
