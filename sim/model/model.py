"""One replication of a scenario: wire the actors, run the clock, feed the checker.

:func:`run_replication` is a pure function of ``(scenario, replication)`` — the seed is in the
scenario — and returns plain picklable data, so a process pool or a Dask cluster can run it unchanged.
The model never classifies anything: every event goes to :class:`sim.check.Checker`, the same oracle
that reads live histories.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from sim.check import CheckConfig, Checker, CheckSummary
from sim.model.bank import Bank
from sim.model.bnpl import BnplProvider
from sim.model.gateway import Gateway
from sim.model.merchant import Merchant
from sim.model.order_service import OrderService
from sim.model.reconciliation import Reconciler
from sim.model.support import Support
from sim.model.user import Buyers, arrivals
from sim.model.world import World
from sim.scenario import Scenario, fault_spans  # noqa: F401  (fault_spans re-exported)
from sim.vocabulary import OBSERVATION_SOURCES, TIMELINE_BUCKETS



@dataclass
class ReplicationResult:
    replication: int
    summary: CheckSummary
    metrics: dict[str, dict[str, float]]
    orders_created: int
    ledger_total: int  # sum of all balances: 0 unless money was created or destroyed


def checker_config(scenario: Scenario, examples: bool = True) -> CheckConfig:
    run = scenario.run
    return CheckConfig(
        warmup=run.warmup,
        horizon=run.horizon,
        end=run.horizon + run.drain,
        stuck_grace=scenario.order_service.stuck_grace,
        bnpl_finish_limit=scenario.bnpl.finish_limit,
        # The timeline shows the horizon and the aftermath of its last orders, not the whole drain.
        bucket_s=max(1.0, timeline_end(scenario) / TIMELINE_BUCKETS),
        timeline_end=timeline_end(scenario),
        examples=examples,
        observed={src: True for src in OBSERVATION_SOURCES},  # the simulation sees every party's events
    )


def timeline_end(scenario: Scenario) -> float:
    run = scenario.run
    return min(run.horizon + run.drain, run.horizon + max(0.25 * run.horizon, 2 * scenario.order_service.order_ttl))


def run_replication(scenario: Scenario, replication: int = 0, examples: bool = True,
                    tap: Callable[[dict], None] | None = None,
                    progress: Callable[[float], None] | None = None) -> ReplicationResult:
    """Simulate one replication; ``tap`` (optional) also receives every history event (for export).

    ``progress`` (optional) is called with the fraction of the simulated time done, a hundred times
    a run; running the clock in steps changes nothing in the result.
    """
    checker = Checker(checker_config(scenario, examples), respect_run_start=False)
    feed = checker.feed

    def tapped(ev: dict) -> None:
        tap(ev)
        feed(ev)

    w = World(scenario, replication, feed if tap is None else tapped)
    if tap is None:
        w.feed_directly(checker)
    bank = Bank(w)
    gateway = Gateway(w, bank)
    order_service = OrderService(w)
    merchant = Merchant(w)
    provider = BnplProvider(w)
    gateway.order_service = order_service
    order_service.gateway = gateway
    order_service.merchant = merchant
    merchant.bnpl = provider
    merchant.order_service = order_service
    provider.order_service = order_service
    order_service.bnpl = provider
    Reconciler(w, order_service, gateway, bank)
    support = Support(w, order_service, gateway, bank, merchant)  # hears each debit after the reconciler
    buyers = Buyers(w, order_service, gateway, provider)
    order_service.app = buyers
    stations = {"gateway": gateway.station, "bank": bank.station, "order_service": order_service.station}
    if support.station is not None:
        stations["support"] = support.station
    for window in scenario.faults:
        w.env.process(_fault_window(w, window, (gateway, bank, order_service)))
    w.env.process(arrivals(w, buyers.start))
    w.sink({"t": 0.0, "type": "run.start", "actor": "run", "warmup": w.warmup, "horizon": w.horizon,
            "end": w.end, "seed": scenario.run.seed, "replication": replication})
    with _few_collections():
        if progress is None:
            w.env.run(until=w.end)
        else:
            for k in range(1, 101):
                w.env.run(until=w.end * k / 100)
                progress(k / 100)
    w.sink({"t": w.end, "type": "run.end", "actor": "run"})
    summary = checker.finish()
    metrics = {name: st.metrics() for name, st in stations.items()}
    metrics["app"] = buyers_metrics(w, buyers)
    if w.p.user.after_sales_probability > 0:  # (absent when off: the results of every other run are as they were)
        metrics["after_sales"] = {k: float(v) for k, v in merchant.after_sales.items()}
    if support.station is not None:
        metrics["support_tickets"] = {k: float(v) for k, v in support.counts.items()}
    if scenario.merchant.batch_paused or scenario.set_by_a_fault("merchant.batch_paused"):
        metrics["merchant_batch"] = {k: float(v) for k, v in merchant.batch_runs.items()}  # (absent otherwise)
    if gateway.outages is not None:  # (absent when off: the results of every other run are as they were)
        metrics["notify_outages"] = notify_outage_metrics(w, gateway)
    unpaid = provider.unpaid_at_end()  # (absent when deductions are drawn: those runs' results are as they were)
    if unpaid is not None:
        metrics["bnpl_unpaid"] = unpaid
    return ReplicationResult(replication, summary, metrics, order_service.seq, w.ledger.total())


@contextmanager
def _few_collections():
    """Run the clock with the cyclic garbage collector paused.

    A replication allocates millions of short-lived events and dicts that reference counting frees
    on its own; the collector's passes over everything still alive (the orders in flight, the events
    the checker holds) cost a third of the run time. The model makes almost no reference cycles (a
    few thousand objects per run, measured), so pausing it does not grow memory; it is collected once
    at the end.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def buyers_metrics(w: World, buyers: Buyers) -> dict[str, float]:
    """What the buyers got: goodput (pay calls answered 'succeeded' within the app's timeout, per second
    of the measurement window), the offered arrival rate, buyers left without an order, re-sends."""
    span = max(1e-12, w.horizon - w.warmup)
    return {"goodput_per_s": buyers.confirmed / span, "offered_per_s": buyers.offered / span,
            "create_failed": float(buyers.create_failed), "resends": float(buyers.resends)}


def notify_outage_metrics(w: World, gateway: Gateway) -> dict[str, float]:
    """The notification endpoint's outages: how many began and what share of the time it was down, in the
    measurement window [warmup, horizon) and over the whole run, and the delivery attempts (for orders
    created in the window) that met it down."""
    out = gateway.outages
    span = max(1e-12, w.horizon - w.warmup)
    return {"outages_in_window": float(out.begun(w.warmup, w.horizon)),
            "down_fraction_window": out.down_seconds(w.warmup, w.horizon) / span,
            "outages": float(out.begun(0.0, w.end)),
            "down_fraction": out.down_seconds(0.0, w.end) / max(1e-12, w.end),
            "attempts_refused": float(gateway.refused_by_outage)}


def _fault_window(w: World, window: Any, actors: tuple):
    """Swap in the faulted parameters for the window, then restore them."""
    base = w.p
    faulted = base.faulted(window)
    yield w.env.timeout(window.start)
    w.apply(faulted)
    for actor in actors:
        actor.configure(faulted)
    yield w.env.timeout(window.end - window.start)
    w.apply(base)
    for actor in actors:
        actor.configure(base)
