"""Whether a live run measured the scenario at all: checks before it starts, and its health after.

Before the run (:func:`preflight`), nothing started yet:

* **capacity**: the planned peak rate in wall time (``arrival_rate × multiplier × time_scale`` flows
  per wall second) against what this machine sustained in ``benchmarks/load_capacity.py`` (``[live]
  capacity``, else ``$CHECKOUT_CHAOS_CAPACITY``, else the figure the benchmark stored, else a
  conservative 100 flows/s);
* **window**: the observation window against the timers the story needs — ``order_ttl``, the close
  sweep's interval, and the part of the notification schedule that matters (the first attempt's
  latency, plus the retries a lost attempt needs while ``notify_loss ** attempts`` is above 1e-3, or,
  with ``order_service.notify_outage_every``, the retries that reach past a p99 outage). The
  share of the counted orders whose story fits before the end of observation is reported; below 0.95
  the run warns, below 0.5 a comparison is not conclusive.

After the run (:func:`assess`), from the ``live`` section: achieved/planned arrivals, harness and
transport error rates, start lag, buyers still in their story at the end — each against a ``[live]``
limit. A run outside one is **not valid**: ``valid: false`` with the reasons and what to change.

Pure: no Locust, no HTTP (the CLI and the orchestrator call it; so do the tests).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from sim.scenario import Dist, Scenario, format_duration

CAPACITY_ENV = "CHECKOUT_CHAOS_CAPACITY"  # a number (flows per wall second) or the path of a stored figure
DEFAULT_CAPACITY = 100.0  # flows per wall second: half of what a 2-core machine sustained (docs/live.md)
NOTIFY_MISS = 1e-3  # retries count while the chance that every attempt so far was lost is above this
SEEN_THROUGH_WARN = 0.95  # warn when fewer of the counted orders can be watched through their story
CONCLUSIVE_SHARE = 0.5  # a comparison needs at least this share of counted orders seen through their story


# --------------------------------------------------------------------------------------------------
# Capacity


def capacity_file() -> Path:
    """Where ``benchmarks/load_capacity.py`` stores its figure (``$XDG_CACHE_HOME/checkout-chaos``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "checkout-chaos" / "load_capacity.json"


def store_capacity(summary: dict[str, Any], path: Path | None = None) -> Path:
    """Keep the benchmark's summary (``max_flows_per_s`` and the conditions) for later runs, one entry per
    number of Locust workers it ran with."""
    p = Path(path) if path else capacity_file()
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        stored = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(stored.get("by_workers"), dict):
            stored = {"by_workers": {}}
    except (OSError, ValueError, AttributeError):
        stored = {"by_workers": {}}
    entry = {**summary, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    stored["by_workers"][str(int(summary.get("workers") or 0))] = entry
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(stored, sort_keys=True, indent=1), encoding="utf-8")
    os.replace(tmp, p)
    return p


def capacity_figure(scenario: Scenario, workers: int = 0) -> tuple[float, str]:
    """Flows per wall second this machine sustains with ``workers`` Locust workers, and where the figure
    comes from (a stored figure for another worker count is used when there is none for this one)."""
    if scenario.live.capacity:
        return float(scenario.live.capacity), "live.capacity"
    raw = os.environ.get(CAPACITY_ENV, "").strip()
    path = capacity_file()
    if raw:
        try:
            value = float(raw)
            if value > 0 and math.isfinite(value):
                return value, f"${CAPACITY_ENV}"
        except ValueError:
            path = Path(raw)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["by_workers"]
        entry = entries.get(str(workers)) or entries.get("0") or next(iter(entries.values()))
        value = float(entry["max_flows_per_s"])
        if value > 0:
            return value, (f"capacity benchmark, {entry.get('workers', 0)} workers, {entry.get('measured_at', '?')} "
                           f"({path})")
    except (OSError, ValueError, KeyError, TypeError, StopIteration, AttributeError):
        pass
    return DEFAULT_CAPACITY, "conservative default (run benchmarks/load_capacity.py to measure this machine)"


# --------------------------------------------------------------------------------------------------
# The story's timers


def high_quantile(d: Dist) -> float:
    """A high (about p99) value of a duration distribution."""
    if d.kind == "constant":
        return d.p("value")
    if d.kind == "exponential":
        return d.p("mean") * math.log(100.0)
    if d.kind == "lognormal":
        return d.p("p99")
    if d.kind == "uniform":
        return d.p("high")
    return max(d.p("values"))


def story_span(scenario: Scenario) -> dict[str, Any]:
    """Scenario seconds an order needs, from its creation, for the story to be decided: its TTL, the
    close job's delay, and the notification schedule that matters."""
    os_, gw = scenario.order_service, scenario.gateway
    close = os_.sweep_interval if os_.close_mode == "sweep" else 0.0
    latency = high_quantile(gw.notify_latency)
    retries = 0
    if gw.notify_loss > 0:
        while retries < len(gw.notify_schedule.gaps) and gw.notify_loss ** (retries + 1) > NOTIFY_MISS * (1 + 1e-9):
            retries += 1
    if os_.notify_outage_every is not None:  # the retries that reach past a long (p99) outage of the endpoint
        outage, gaps = high_quantile(os_.notify_outage_duration), gw.notify_schedule.gaps
        k = 0
        while k < len(gaps) and sum(gaps[:k]) < outage:
            k += 1
        retries = max(retries, k)
    notify = latency + sum(gw.notify_schedule.gaps[:retries])
    parts = [f"order_ttl {format_duration(os_.order_ttl)}"]
    if close:
        parts.append(f"sweep_interval {format_duration(close)}")
    parts.append(f"notification p99 {_human(latency)}" + (f" + {retries} retr{'y' if retries == 1 else 'ies'} "
                                                         f"({_human(notify - latency)})" if retries else ""))
    return {"needed_s": os_.order_ttl + close + notify, "order_ttl_s": os_.order_ttl, "close_delay_s": close,
            "notify_s": notify, "notify_retries": retries, "parts": " + ".join(parts)}


def _human(seconds: float) -> str:
    if seconds >= 60:
        m, s = divmod(round(seconds), 60)
        h, m = divmod(m, 60)
        return (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s and not h else "") or "0s"
    return f"{seconds:.3g}s"


def window_check(scenario: Scenario, window: Any) -> dict[str, Any]:
    """The observation window against the story: the share of counted orders (created in ``[warmup,
    horizon)``) created early enough to be watched through :func:`story_span` before the end."""
    from loadtests.plan import expected_arrivals

    span = story_span(scenario)
    need = span["needed_s"]
    load = scenario.load
    counted = expected_arrivals(load, window.horizon) - expected_arrivals(load, window.warmup)
    cut = min(window.horizon, window.end - need)
    fits = max(0.0, expected_arrivals(load, cut) - expected_arrivals(load, window.warmup)) if cut > window.warmup else 0.0
    share = fits / counted if counted > 0 else 0.0
    return {**span, "observed_s": window.end, "drain_s": window.drain, "seen_through_share": share,
            "short": share < SEEN_THROUGH_WARN,
            "drain_wall_needed_s": need / window.time_scale}


# --------------------------------------------------------------------------------------------------
# Before the run


def preflight(scenario: Scenario, window: Any, workers: int) -> dict[str, Any]:
    """What the run plans against what the machine and the story allow, with a warning per problem."""
    k = window.time_scale
    peak = scenario.load.peak_rate(window.horizon)
    wall_rate = peak * k
    capacity, source = capacity_figure(scenario, workers)
    win = window_check(scenario, window)
    warnings = []
    if wall_rate > capacity:
        fit_k = capacity / peak if peak else k
        warnings.append(
            f"plans {wall_rate:,.0f} arrivals per wall second at the peak ({peak:g}/s × time scale {k:g}), more than "
            f"the ~{capacity:,.0f} flows/s this machine sustains ({source}): expect a run that is not valid; "
            f"lower --time-scale to {max(fit_k, 0.01):.3g} or below, or load.arrival_rate to "
            f"{capacity / k:.3g}/s or below")
    if win["short"]:
        share = win["seen_through_share"]
        need_drain = win["drain_wall_needed_s"]
        cap = scenario.run.drain / k
        fix = (f"--drain {math.ceil(need_drain)}s" if need_drain <= cap else
               f"--set run.drain={format_duration(math.ceil(win['needed_s']))} --drain {math.ceil(need_drain)}s")
        warnings.append(
            f"watches {format_duration(round(window.end))} of scenario time ({format_duration(round(window.horizon))} "
            f"of arrivals + {format_duration(round(window.drain))} of drain); the story needs {win['parts']} = "
            f"{_human(win['needed_s'])} per order, so "
            + (f"only {share:.0%} of the counted orders" if share > 0 else "none of the counted orders")
            + f" can be watched to the end of it, and anomalies that need the rest are under-counted or 0: {fix} "
            f"(at time scale {k:g})")
    if scenario.support.agents is not None:
        warnings.append(
            f"sets support.agents = {scenario.support.agents}: customer service is simulated only — the live "
            "services have no desk, so nobody complains and no ticket repairs anything in this run; compare it "
            "with a simulation (checkout-chaos simulate) for what the desk buys")
    return {"planned_peak_rate_wall_per_s": wall_rate, "capacity_flows_per_s": capacity, "capacity_source": source,
            "window": win, "warnings": warnings}


# --------------------------------------------------------------------------------------------------
# After the run


def assess(live: dict[str, Any], scenario: Scenario, pre: dict[str, Any]) -> dict[str, Any]:
    """The run's health checks against ``scenario.live``'s limits; ``valid`` and, if not, why and what to change."""
    lim = scenario.live
    k = live.get("time_scale") or 1.0
    planned, started = live.get("planned_arrivals") or 0, live.get("started") or 0
    lag_p99 = (live.get("start_lag_wall_s") or {}).get("p99")
    unfinished = live.get("flows_unfinished_at_end") or 0
    checks = [
        ("achieved_ratio", live.get("achieved_arrival_ratio"), ">=", lim.min_achieved_ratio),
        ("harness_error_rate", (live.get("harness_errors") or 0) / planned if planned else None, "<=",
         lim.max_harness_error_rate),
        ("transport_error_rate", live.get("error_rate"), "<=", lim.max_transport_error_rate),
        ("start_lag_p99_s", None if lag_p99 is None else lag_p99 * k, "<=", lim.max_start_lag),
        ("unfinished_share", unfinished / started if started else None, "<=", lim.max_unfinished_share),
    ]
    keys = {"achieved_ratio": "live.min_achieved_ratio", "harness_error_rate": "live.max_harness_error_rate",
            "transport_error_rate": "live.max_transport_error_rate", "start_lag_p99_s": "live.max_start_lag",
            "unfinished_share": "live.max_unfinished_share"}
    out, reasons = [], []
    for name, value, op, limit in checks:
        holds = value is not None and (value >= limit if op == ">=" else value <= limit)
        if name == "start_lag_p99_s" and value is None and not planned:
            holds = True  # nothing started, nothing lagged: the achieved check says the rest
        out.append({"check": name, "observed": value, "op": op, "limit": limit, "key": keys[name], "holds": holds})
        if not holds:
            reasons.append(_reason(name, value, op, limit, keys[name], live))
    if not planned:
        reasons.insert(0, "no arrivals were planned: nothing was measured (raise load.arrival_rate or --run-time)")
    advice = _advice([c["check"] for c in out if not c["holds"]], live, scenario, pre)
    return {"valid": not reasons, "reasons": reasons, "checks": out, "advice": advice,
            "warnings": list(pre.get("warnings") or ())}


def _reason(name: str, value: float | None, op: str, limit: float, key: str, live: dict[str, Any]) -> str:
    shown = "nothing" if value is None else (f"{value:.3g}" if name != "start_lag_p99_s" else _human(value))
    lim = _human(limit) if name == "start_lag_p99_s" else f"{limit:g}"
    what = {
        "achieved_ratio": f"achieved/planned arrivals {shown} ({live.get('achieved_arrivals', 0):,} of "
                          f"{live.get('planned_arrivals', 0):,} started on time)",
        "harness_error_rate": f"harness errors {shown} per planned arrival ({live.get('harness_errors', 0):,}: buyers "
                              f"raised, arrivals dropped, malformed requests, Locust processes missing)",
        "transport_error_rate": f"transport errors {shown} of the buyers' calls ({live.get('failures', 0):,} of "
                                f"{live.get('requests', 0):,}: timeouts, 5xx, broken or refused connections)",
        "start_lag_p99_s": f"start lag p99 {shown} of scenario time",
        "unfinished_share": f"{live.get('flows_unfinished_at_end', 0):,} buyers ({shown} of those started) were "
                            f"still in their story at the end of observation",
    }[name]
    return f"{what}; the limit is {op} {lim} ({key})"


def _advice(failed: list[str], live: dict[str, Any], scenario: Scenario, pre: dict[str, Any]) -> list[str]:
    k = live.get("time_scale") or 1.0
    rate = scenario.load.arrival_rate
    out = []
    capacity = pre.get("capacity_flows_per_s") or DEFAULT_CAPACITY
    wall = pre.get("planned_peak_rate_wall_per_s") or rate * k
    if {"achieved_ratio", "start_lag_p99_s", "transport_error_rate"} & set(failed):
        scale = max(0.01, min(k / 2, k * capacity / wall if wall else k))
        out.append(f"lower the time scale: --time-scale {scale:.3g} (now {k:g}; the run planned {wall:,.0f} "
                   f"arrivals per wall second at the peak, this machine sustains ~{capacity:,.0f})")
        out.append(f"or lower the arrival rate: --set load.arrival_rate={max(rate / 2, min(rate, capacity / k)):.3g} "
                   f"(now {rate:g}/s)")
        workers, cpus = live.get("workers") or 0, os.cpu_count() or 1
        if workers and workers + 2 > cpus:
            out.append(f"or fewer Locust workers: {workers} workers and the two services share {cpus} cores "
                       "(--workers 0, or workers on other machines: --master / load-worker)")
        elif not workers and cpus > 2:
            out.append("or spread the generator: --workers N (or --master with load-worker on other machines)")
    if "harness_error_rate" in failed:
        out.append("harness errors: see DIR/locust/*.log; dropped arrivals mean too many buyers in flight "
                   "(lower load.arrival_rate); malformed requests mean the adapter file does not match the checkout")
    if "unfinished_share" in failed:
        win = pre.get("window") or {}
        need = win.get("drain_wall_needed_s")
        out.append("lengthen the drain so the buyers' stories end: "
                   + (f"--drain {math.ceil(need)}s or more " if need else "a longer --drain ")
                   + "(or shorten user.pay_delay / user.poll_duration for this run)")
    return out


def banner_lines(validity: dict[str, Any], what: str = "THIS RUN IS NOT VALID") -> list[str]:
    """The text of the banner a run that is not valid prints (and the report shows)."""
    lines = [f"{what}: its numbers do not measure the scenario"]
    lines += [f"  - {r}" for r in validity.get("reasons") or ()]
    if validity.get("advice"):
        lines.append("what to change:")
        lines += [f"  - {a}" for a in validity["advice"]]
    return lines
