"""The app asks over the network: order page and status polls are requests, served from a lagging
replica and (with ``order_service.read_time``) by the order service's own workers."""

from __future__ import annotations

from collections import defaultdict

from sim.model.model import run_replication
from sim.scenario import Scenario

# Every debit's response is lost: the app is told 'unknown', polls, then retries; the gateway's own
# query of the bank finds the debit a minute later and the order is paid meanwhile.
BASE = {
    "user.payment_methods": {"wallet": 1.0},
    "user.abandon_probability": 0.0, "user.retry_probability": 1.0, "user.max_retries": 1,
    "user.retry_delay": "5s",
    "bank.decline_probability": 0.0, "bank.risk_block_probability": 0.0, "bank.response_loss": 1.0,
    "app.retry_trade_no": "new",
    "load.arrival_rate": 0.2, "run.horizon": "20m", "run.warmup": "1m", "run.drain": "3h",
}


def _run(**kw):
    s = Scenario().with_overrides({**BASE, **{k.replace("__", "."): v for k, v in kw.items()}})
    paid_at: dict[str, float] = {}
    pays_after_paid: dict[str, int] = defaultdict(int)

    def tap(ev: dict) -> None:
        if ev["type"] == "order.paid":
            paid_at.setdefault(ev["order"], ev["t"])
        elif ev["type"] == "user.pay" and ev["order"] in paid_at:
            pays_after_paid[ev["order"]] += 1

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return r, pays_after_paid


def test_a_stale_order_page_offers_to_pay_an_order_already_paid():
    """With the order page read from a replica 10 minutes behind, the retrying buyer sees 'awaiting
    payment' after the order was paid and pays again (a new trade number: a double charge); read from
    the primary, or known at once, nobody pays a paid order."""
    memory, memory_late = _run()
    fresh, fresh_late = _run(app__order_page_request=True)
    stale, stale_late = _run(app__order_page_request=True, order_service__read_lag="10m")
    assert len(memory_late) == len(fresh_late) == 0
    assert len(stale_late) >= 200, len(stale_late)
    assert stale.summary.per_class["double_charge"].count >= 200
    assert fresh.summary.per_class["double_charge"].count <= 2
    assert memory.summary.per_class["double_charge"].count <= 2


def test_status_reads_take_order_service_workers_and_delay_notifications():
    """With order_service.read_time on, the polls of buyers told 'unknown' queue for the order service's
    one worker with the payment notifications: notifications wait, reads time out (the app keeps
    polling), and buyers who retry see 'awaiting payment' and pay again."""
    slow = {"bank__response_loss": 0.0, "gateway__timeout": "1s", "bank__latency": "5s",
            "load__arrival_rate": 0.5, "order_service__workers": 1}
    free, _ = _run(**slow)
    busy, late = _run(**slow, order_service__read_time={"dist": "exponential", "mean": "1s"})
    f, b = free.metrics["order_service"], busy.metrics["order_service"]
    assert b["served"] > 5 * f["served"]  # the reads were served by the pool
    assert f["wait_mean_s"] < 1.0 < 60.0 < b["wait_mean_s"]
    assert free.summary.per_class["double_charge"].count == 0
    assert busy.summary.per_class["double_charge"].count >= 50

