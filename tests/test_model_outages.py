"""Outages of the order service's notification endpoint (``order_service.notify_outage_every``): the
notifications lost are the attempts that meet an outage, and paid-but-closed is the race between the
outage's length, the provider's retry gaps and the order's time to live."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from sim.domain.outages import Outages, outage_stream
from sim.model.model import run_replication
from sim.scenario import Dist, load_scenario

NOTIFICATIONS_LOST = Path(__file__).resolve().parents[1] / "scenarios" / "notifications_lost.toml"
# The file's hour and outages, at a quarter of its arrivals. (Compressing the hour instead, with outages
# every 10 min, makes outages so frequent that a retry 14 min later often meets the next one.)
SMALL = {"load.arrival_rate": 1.0}


def _constant(seconds: float) -> Dist:
    return Dist("constant", (("value", seconds),))


def test_outage_windows_alternate_up_and_down_and_answer_down_at():
    out = Outages.draw(_constant(60.0), _constant(30.0), random.Random(1), until=300.0)
    assert list(zip(out.starts, out.ends)) == [(60.0, 90.0), (150.0, 180.0), (240.0, 270.0)]
    assert not out.down_at(59.9) and out.down_at(60.0) and out.down_at(89.9) and not out.down_at(90.0)
    assert not out.down_at(0.0) and out.down_at(265.0) and not out.down_at(299.0)
    assert out.down_seconds(0.0, 300.0) == 90.0 and out.down_seconds(70.0, 160.0) == 30.0
    assert out.begun(0.0, 150.0) == 1 and len(out) == 3


def test_the_outage_stream_depends_only_on_seed_and_replication():
    a, b = outage_stream(7, 0).random(), outage_stream(7, 0).random()
    assert a == b and a != outage_stream(7, 1).random() and a != outage_stream(8, 0).random()


def _run(extra: dict, replications: int = 3):
    scenario = load_scenario(NOTIFICATIONS_LOST, {**SMALL, **extra})
    out = []
    for i in range(replications):
        events = defaultdict(list)
        r = run_replication(scenario, i, examples=False, tap=lambda e: events[e.get("order")].append(e))
        out.append((r, events))
    return out


def _count(runs, cls="paid_but_closed") -> int:
    return sum(r.summary.per_class[cls].count for r, _ in runs)


def test_paid_but_closed_comes_from_attempts_that_met_an_outage():
    """No loss coin in the file: every paid-but-closed order's notification met the endpoint down, its
    attempts while down are the file's only lost ones, and with the outages off nothing is closed after
    being paid (the same buyers: common random numbers)."""
    runs = _run({})
    off = _run({"order_service.notify_outage_every": "off"})
    assert [r.orders_created for r, _ in runs] == [r.orders_created for r, _ in off]
    n = _count(runs)
    assert n >= 20, n
    assert _count(off) == 0
    for r, events in runs:
        lost = [e for evs in events.values() for e in evs if e["type"] == "notify.lost"]
        assert lost and all(e.get("cause") == "endpoint_down" for e in lost)
        closed = [o for o, evs in events.items() if any(e["type"] == "order.closed" for e in evs)
                  and any(e["type"] == "trade.succeeded" for e in evs)]
        for o in closed:
            assert any(e["type"] == "notify.lost" for e in events[o]), o
        m = r.metrics["notify_outages"]
        assert m["outages"] >= 1 and 0 < m["down_fraction"] < 1
        assert m["attempts_refused"] <= len(lost)


def test_a_ttl_that_holds_the_next_retry_leaves_almost_none():
    """The race, not the down time: with a 30-minute order (Alipay's attempt 14 min after the first lands
    inside it) the same outages close a small fraction of the orders they closed at 15 minutes; with the
    gateway queried before the close, none."""
    n = _count(_run({}))
    long_ttl = _count(_run({"order_service.order_ttl": "30m"}))
    queried = _count(_run({"order_service.close_policy": "query_then_close"}))
    assert long_ttl <= n / 10, (long_ttl, n)
    assert queried == 0
