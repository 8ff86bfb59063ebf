"""Refunds as they are: latency, failures and retries; refund_pending / refunded on the order."""

from __future__ import annotations

from collections import defaultdict

from sim.model.model import run_replication
from sim.scenario import Scenario

# Late payments on a naive close, refunded automatically.
LATE = {
    "user.payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0},
    "user.abandon_probability": 0.0,
    "user.retry_probability": 0.0,
    "user.pay_delay": {"dist": "exponential", "mean": "600s"},
    "app.network_latency": "0s",
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "gateway.notify_latency": {"dist": "exponential", "mean": "300s"},
    "order_service.order_ttl": "15m",
    "order_service.late_payment": "auto_refund",
    "load.arrival_rate": 1.0,
    "run.horizon": "20m",
    "run.warmup": "2m",
}


def _run(**extra):
    s = Scenario().with_overrides({**LATE, **{k.replace("__", "."): v for k, v in extra.items()}})
    seq: dict[str, list[str]] = defaultdict(list)

    def tap(ev: dict) -> None:
        if ev["type"] in ("order.refund_pending", "order.refunded", "trade.refund_failed", "order.refund_failed"):
            seq[ev["order"]].append(ev["type"])
        elif ev["type"] == "app.shown":
            seq[ev["order"]].append(ev["screen"])

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return r, seq


def test_refunds_take_days_and_the_order_shows_refund_pending_meanwhile():
    r, seq = _run(gateway__refund_latency={"dist": "lognormal", "median": "3d", "p99": "7d"}, run__drain="12d")
    pbc = r.summary.per_class["paid_but_closed"]
    assert pbc.count == 0 and pbc.repaired >= 30, (pbc.count, pbc.repaired)
    assert sorted(pbc.windows)[len(pbc.windows) // 2] > 86400  # the money is away for days
    refunds = {o: [e for e in evs if e.startswith("order.")] for o, evs in seq.items()}
    refunds = {o: evs for o, evs in refunds.items() if evs}
    assert refunds and all(evs == ["order.refund_pending", "order.refunded"] for evs in refunds.values())


def test_the_buyers_screen_follows_the_refund():
    """A buyer whose payment reached a closed order (shown 'payment succeeded', then the order closed) is
    shown 'refund pending' while the money is away, then 'refunded' (the app's pushes)."""
    _r, seq = _run(gateway__refund_latency={"dist": "lognormal", "median": "3d", "p99": "7d"}, run__drain="12d")
    refunded = [evs for evs in seq.values() if "order.refunded" in evs]
    assert len(refunded) >= 30
    for evs in refunded:
        assert "refund_pending" in evs and "refunded" in evs, evs
        assert evs.index("order.refund_pending") < evs.index("refund_pending") < evs.index("order.refunded") \
            < evs.index("refunded"), evs


def test_failed_refunds_are_retried_and_marked_refund_failed_when_the_retries_run_out():
    few, few_seq = _run(gateway__refund_failure=0.6, order_service__refund_retry_schedule=["1h"], run__drain="1d")
    many, _ = _run(gateway__refund_failure=0.6,
                   order_service__refund_retry_schedule=["1h"] * 20, run__drain="2d")
    assert few.summary.per_class["paid_but_closed"].count >= 5
    assert few.summary.end_states.get("paid_closed_refund_failed", 0) >= 5  # a person must act
    gave_up = [evs for evs in few_seq.values() if "order.refund_failed" in evs]
    assert gave_up and all(evs.count("trade.refund_failed") == 2 for evs in gave_up)
    assert any("refund_failed" in evs for evs in gave_up)  # and the buyer's screen says so
    assert many.summary.per_class["paid_but_closed"].count == 0
