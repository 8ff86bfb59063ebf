"""Common random numbers that hold: one stream per buyer; buyers with a balance that persists."""

from __future__ import annotations

from sim.model.model import run_replication
from sim.scenario import Scenario

BASE = {
    "load.arrival_rate": 5.0,
    "run.horizon": "15m",
    "run.warmup": "1m",
    "run.drain": "2h",
    "user.retry_probability": 0.9,
    "user.max_retries": 3,
}


def _buyers(s: Scenario) -> dict[str, tuple]:
    """Per order: what its buyer drew (amount, method, merchant) and when they first paid."""
    created: dict[str, tuple] = {}
    first_pay: dict[str, float] = {}
    retries = [0]

    def tap(ev: dict) -> None:
        t = ev["type"]
        if t == "order.created":
            created[ev["order"]] = (ev["amount"], ev["method"], ev["merchant"], ev["t"])
        elif t == "user.pay" and ev["attempt"] == 0:
            first_pay[ev["order"]] = ev["t"]
        elif t == "user.retry":
            retries[0] += 1

    run_replication(s, 0, examples=False, tap=tap)
    out = {o: (a, m, mer, round(first_pay[o] - t0, 9) if o in first_pay else None)
           for o, (a, m, mer, t0) in created.items()}
    return out, retries[0]


def test_changing_the_decline_rate_leaves_every_buyers_draws_unchanged():
    """bank.decline_probability 0.08 -> 0.3 makes many buyers retry (and draw think times); every
    buyer still has the same amount, method, merchant and first pay time in both runs."""
    population = [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}]
    s = Scenario().with_overrides({**BASE, "merchant.population": population})
    low, low_retries = _buyers(s.with_overrides({"bank.decline_probability": 0.08}))
    high, high_retries = _buyers(s.with_overrides({"bank.decline_probability": 0.3}))
    assert high_retries > low_retries + 300  # the setting really changes how much buyers draw
    assert len(low) == len(high) > 3000
    assert low.keys() == high.keys()
    differ = [o for o in low if low[o] != high[o]]
    assert differ == [], f"{len(differ)} of {len(low)} buyers drew differently, e.g. {differ[:3]}"


def test_an_empty_wallet_stays_empty_on_every_retry():
    """A wallet holding 50 CNY: a larger debit is declined on the first attempt and every retry; no
    per-call coin decides it (bank.decline_probability = 0)."""
    s = Scenario().with_overrides({
        **BASE, "user.payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0},
        "user.retry_probability": 1.0, "user.max_retries": 2, "user.abandon_probability": 0.0,
        "bank.decline_probability": 0.0, "bank.risk_block_probability": 0.0,
        "user.wallet_balance": 50})
    amount: dict[str, int] = {}
    attempts: dict[str, int] = {}
    paid: set[str] = set()

    def tap(ev: dict) -> None:
        t = ev["type"]
        if t == "order.created":
            amount[ev["order"]] = ev["amount"]
        elif t == "user.pay":
            attempts[ev["order"]] = attempts.get(ev["order"], 0) + 1
        elif t == "trade.succeeded":
            paid.add(ev["order"])

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    big = [o for o, a in amount.items() if a > 5000 and o in attempts]
    small = [o for o, a in amount.items() if a <= 5000 and o in attempts]
    assert len(big) > 500 and len(small) > 500
    assert not any(o in paid for o in big)
    assert sum(attempts[o] for o in big) >= 2.5 * len(big)  # they retried, and were declined again
    assert sum(o in paid for o in small) >= 0.99 * len(small)


def test_the_order_page_is_read_from_a_lagging_replica():
    """order_service.read_lag: a read sees the state as it was that long ago (None before the order
    reached the replica); with no lag it reads the primary."""
    from sim.domain.entities import Order
    from sim.domain.states import OrderState as O
    from sim.model.world import World

    w = World(Scenario().with_overrides({"order_service.read_lag": "10s"}), 0, lambda ev: None)
    order = Order("o1", "u1", "m1", 100, "wallet", 0.0, 900.0)
    w.orders["o1"] = order
    w.emit("order.created", "order_service", "o1")

    def pay() -> None:
        order.mark_paid("t1")
        w.emit("order.paid", "order_service", "o1", trade="t1")

    w.at(5.0, pay)
    seen = {}
    for t in (3.0, 12.0, 20.0):
        w.at(t, lambda t=t: seen.__setitem__(t, w.replica_state(order, 10.0)))
    w.at(4.0, lambda: seen.__setitem__("primary", w.replica_state(order, 0.0)))
    w.env.run(until=30.0)
    assert seen[3.0] is None  # created at 0: not on the replica until 10 s
    assert seen[12.0] is O.AWAITING_PAYMENT  # paid at 5 s, the replica still says awaiting payment
    assert seen[20.0] is O.PAID
    assert seen["primary"] is O.AWAITING_PAYMENT
