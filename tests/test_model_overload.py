"""Overload that cascades: held workers obey Little's law, and a goodput knee appears in an arrival-rate
sweep without server-side deadlines and load shedding, and is flattened with them."""

from __future__ import annotations

import pytest

from sim.model.model import run_replication
from sim.scenario import Scenario

# A small double11_midnight: one bank channel (~3.6 debits/s), a gateway pool of 8 held workers, an
# order service of 4, prepay as a request, apps that re-send a request that timed out or was refused.
SMALL_D11 = {
    "run.horizon": "3m", "run.warmup": "1m", "run.drain": "5m",
    "user.payment_methods": {"wallet": 0.7, "card": 0.3},
    "bank.channels": 1, "gateway.workers": 8, "order_service.workers": 4,
    "order_service.create_time": {"dist": "exponential", "mean": "5ms"},
    "gateway.create_time": {"dist": "exponential", "mean": "20ms"},
    "app.request_retry_schedule": ["1s", "2s"],
    "order_service.order_ttl": "15m",
}
SAFEGUARDS = {"gateway.deadlines": True, "bank.deadlines": True, "order_service.deadlines": True,
              "gateway.load_shedding": True, "order_service.load_shedding": True,
              "gateway.shed_limit": 16, "order_service.shed_limit": 8}
RATES = (2.0, 4.0, 8.0, 16.0)


def _goodput(extra: dict, rate: float) -> float:
    s = Scenario().with_overrides({**SMALL_D11, **extra, "load.arrival_rate": rate})
    return run_replication(s, 0, examples=False).metrics["app"]["goodput_per_s"]


def test_goodput_knee_without_safeguards_and_flat_with_them():
    """Past the bank's capacity goodput (pay calls answered 'succeeded' within the app's timeout)
    collapses without deadlines and shedding — queues grow, work is done for callers who left, re-sends
    add load — and stays near capacity with them."""
    s = Scenario().with_overrides(SMALL_D11)
    approved = 1 - s.bank.decline_probability - s.bank.risk_block_probability
    capacity = s.bank.channels / s.bank.latency.mean * approved  # confirmed payments/s the bank can give
    plain = [_goodput({}, lam) for lam in RATES]
    safe = [_goodput(SAFEGUARDS, lam) for lam in RATES]
    # Below the knee both serve what is offered (10% of buyers walk away): the safeguards cost nothing.
    assert plain[0] == pytest.approx(safe[0], rel=0.05)
    knee = max(plain)
    assert knee > 0.6 * capacity, (plain, capacity)
    # Past it, without safeguards: goodput falls well below its own peak and keeps falling.
    assert plain[-1] < 0.6 * knee, plain
    assert plain[-1] < plain[-2] < knee, plain
    # With them: near capacity at every rate past the knee.
    for lam, g in zip(RATES, safe):
        if lam * 0.9 > capacity:
            assert g > 0.85 * capacity, (lam, g, capacity, safe)
    assert safe[-1] > 2 * plain[-1], (safe, plain)


def test_held_workers_obey_littles_law():
    """Mean busy servers = arrival rate x (own service + downstream time): the gateway's pay worker is
    held for its bank call, the order service's create worker for its prepay round trip.

    Ample pools and channels (no queueing), so each hold is a sum of known means. For an M/G/inf
    occupancy the time average over T has variance ~ 2 L tau / T (tau the mean hold): at L ~ 10.7,
    tau ~ 1 s, T = 600 s the relative standard error is ~1.8%, at the order service (L ~ 2.6, tau
    0.26 s) ~1.8% too; 8% is more than four standard errors."""
    lam, T = 10.0, 600.0
    s = Scenario().with_overrides({
        "run.horizon": f"{T + 60:.0f}s", "run.warmup": "60s", "run.drain": "1m", "load.arrival_rate": lam,
        "user.payment_methods": {"wallet": 1.0}, "user.abandon_probability": 0.0, "user.retry_probability": 0.0,
        "user.pay_delay": "1s", "bank.decline_probability": 0.0, "bank.risk_block_probability": 0.0,
        "app.network_latency": "100ms", "gateway.notify_latency": "0s",
        "bank.channels": 10_000, "bank.latency": {"dist": "exponential", "mean": "1s"},
        "gateway.workers": 10_000, "gateway.timeout": "60s",
        "gateway.service_time": {"dist": "exponential", "mean": "20ms"},
        "gateway.create_time": {"dist": "exponential", "mean": "50ms"},
        "order_service.workers": 10_000, "order_service.service_time": "0s",
        "order_service.create_time": {"dist": "exponential", "mean": "10ms"},
    })
    m = run_replication(s, 0, examples=False).metrics
    # Gateway: each order brings one prepay (50 ms) and one pay (20 ms + the 1 s bank call).
    assert m["gateway"]["busy_mean"] == pytest.approx(lam * (0.050 + 0.020 + 1.0), rel=0.08)
    # Order service: create (10 ms) + network to the gateway and back (2 x 100 ms) + the prepay (50 ms).
    assert m["order_service"]["busy_mean"] == pytest.approx(lam * (0.010 + 0.200 + 0.050), rel=0.08)
    # Without holding, the gateway would be busy only for its own service times (~0.7): the hold counts.
    assert m["gateway"]["busy_mean"] > 5 * lam * 0.070


def test_bank_does_not_execute_debits_whose_caller_gave_up():
    """A bank backlog far beyond the gateway's 8 s: without bank.deadlines the bank debits for callers
    gone long ago (mean wait far past 8 s); with them it drops those debits (no money moves for them)."""
    base = {**SMALL_D11, "load.arrival_rate": 8.0, "gateway.workers": 64}
    late = {}
    for deadlines in (False, True):
        s = Scenario().with_overrides({**base, "bank.deadlines": deadlines})
        r = run_replication(s, 0, examples=False)
        assert r.ledger_total == 0
        late[deadlines] = (r.metrics["bank"]["dropped"], r.metrics["bank"]["wait_mean_s"])
    assert late[False][0] == 0 and late[False][1] > 8.0, late
    # Dropped debits leave the channels to live ones (bank queries, which carry no deadline, still queue).
    assert late[True][0] > 100 and late[True][1] < 0.25 * late[False][1], late


# Half the buyers walk away, so half the orders expire and the close job asks the gateway to close their
# trade (close-first); a slow gateway makes each close call a 0.5-s round trip; one order-service worker.
JOBS = {
    "run.horizon": "20m", "run.warmup": "1m", "run.drain": "1h", "load.arrival_rate": 1.0,
    "user.abandon_probability": 0.5, "user.cancel_probability": 0.0,
    "order_service.order_ttl": "5m", "order_service.close_policy": "close_trade_then_order",
    "order_service.workers": 1, "gateway.service_time": "500ms", "gateway.workers": 64,
}


def _jobs(take: bool):
    s = Scenario().with_overrides({**JOBS, "order_service.job_calls_take_worker": take})
    closes: list[float] = []
    r = run_replication(s, 0, examples=False,
                        tap=lambda e: closes.append(e["t"]) if e["type"] == "order.closed" else None)
    return r.metrics["order_service"], closes, s


def test_job_calls_take_order_service_workers_and_notifications_wait_behind_them():
    """order_service.job_calls_take_worker: every close-job call to the gateway takes one of the order
    service's workers (served grows by exactly the closes made, one call each), the extra occupancy is
    Little's law for those held calls, and with one worker the notifications queue behind them; off,
    the calls take no worker and nothing waits."""
    off, closes_off, _ = _jobs(False)
    on, closes, s = _jobs(True)
    assert len(closes_off) == len(closes) >= 400  # the same orders expire either way (common random numbers)
    assert on["served"] - off["served"] == len(closes)
    assert off["wait_p99_s"] < 0.01 and off["wait_mean_s"] < 0.001
    assert on["wait_p99_s"] > 0.2 and on["wait_mean_s"] > 0.02
    # Little's law: occupancy added = rate of the held calls x their round trip (the gateway's 0.5 s
    # plus the two network legs), both in the metrics' [warmup, horizon) window.
    lam = sum(s.run.warmup <= t < s.run.horizon for t in closes) / (s.run.horizon - s.run.warmup)
    trip = 0.5 + 2 * s.app.network_latency.mean
    assert on["busy_mean"] - off["busy_mean"] == pytest.approx(lam * trip, rel=0.15)


def test_a_bank_deadline_margin_leaves_fewer_debits_answered_after_the_gateway_gave_up():
    """With bank.deadlines a debit started just before its gateway's deadline still answers too late (the
    buyer is told 'unknown' while charged: failure_shown_but_charged); bank.deadline_margin near the
    bank latency's p99 also drops those — on the same buyers, far fewer such instances."""
    base = {**SMALL_D11, "load.arrival_rate": 6.0, "gateway.workers": 64, "bank.deadlines": True}
    occurred = {}
    for margin in ("0s", "2s"):
        r = run_replication(Scenario().with_overrides({**base, "bank.deadline_margin": margin}), 0, examples=False)
        assert r.ledger_total == 0
        occurred[margin] = (r.summary.per_class["failure_shown_but_charged"].orders_occurred,
                            r.metrics["bank"]["dropped"])
    assert occurred["0s"][0] >= 20, occurred
    assert occurred["2s"][0] <= 0.2 * occurred["0s"][0], occurred
    assert occurred["2s"][1] > occurred["0s"][1], occurred  # the debits it did not start
