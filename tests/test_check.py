"""The history oracle (sim/check.py): every anomaly class, its near misses, streaming and reading."""

from __future__ import annotations

import gzip
import json
import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.check import END_STATES, CheckConfig, Checker, ClassStats, CheckSummary, check_events, read_history
from sim.errors import HistoryError
from sim.examples import EXAMPLE_HISTORY
from sim.scenario import ANOMALY_CLASSES

END = 10_000.0
# Histories of one order that declare they saw everything: a rule that fires on something *absent* (no
# order.created, no debit) can only be decided when the history observed that party at all.
FULL = {"ledger": True, "gateway": True, "checkout": True, "screens": True, "bnpl": True}


class Order:
    """A tiny builder for one order's history (amounts in fen)."""

    def __init__(self, order: str = "o1", user: str = "u1") -> None:
        self.order, self.user = order, user
        self.events: list[dict] = []

    def add(self, t: float, type: str, **fields) -> "Order":
        self.events.append({"t": t, "type": type, "order": self.order, **fields})
        return self

    def created(self, t=0.0, amount=5000, method="wallet", expires_at=1800.0) -> "Order":
        return self.add(t, "order.created", user=self.user, amount=amount, method=method, expires_at=expires_at)

    def charge(self, t, trade="A", amount=5000) -> "Order":
        return self.add(t, "ledger.txn", kind="charge", trade=trade, txn=f"c{t}",
                        postings=[{"account": f"user:{self.user}", "amount": -amount},
                                  {"account": "clearing", "amount": amount}])

    def refund(self, t, trade="A", amount=5000) -> "Order":
        return self.add(t, "ledger.txn", kind="refund", trade=trade, txn=f"r{t}",
                        postings=[{"account": "clearing", "amount": -amount},
                                  {"account": f"user:{self.user}", "amount": amount}])

    def screen(self, t, screen) -> "Order":
        return self.add(t, "app.shown", screen=screen)

    def paid_flow(self, t=10.0, trade="A", amount=5000) -> "Order":
        """Created at 0, paid at ``t``: trade, charge, success screen, notification, order.paid."""
        self.created(amount=amount)
        self.add(t, "user.pay", trade=trade, attempt=1)
        self.add(t + 0.1, "trade.created", trade=trade, amount=amount)
        self.add(t + 0.2, "trade.processing", trade=trade)
        self.charge(t + 0.5, trade, amount)
        self.add(t + 0.5, "trade.succeeded", trade=trade, amount=amount)
        self.screen(t + 0.7, "payment_succeeded")
        self.add(t + 1.0, "order.paid", trade=trade)
        return self


def bnpl_order(order="b1", amount=20000, delivered=1000.0) -> Order:
    o = Order(order)
    o.created(amount=amount, method="bnpl")
    o.add(5.0, "bnpl.authorized", agreement="A1", amount=amount, expires_at=2_419_200.0)
    o.add(6.0, "order.paid", agreement="A1")
    o.add(delivered, "order.delivered")
    return o


def check(*orders: Order, end: float = END, **cfg) -> CheckSummary:
    events = [e for o in orders for e in o.events]
    return check_events(events, CheckConfig(end=end, **cfg))


def stats(summary: CheckSummary, cls: str) -> ClassStats:
    return summary.per_class[cls]


def only(summary: CheckSummary, *classes: str) -> None:
    """No class outside ``classes`` has any instance."""
    noisy = {c: (s.count, s.repaired) for c, s in summary.per_class.items() if s.n_windows and c not in classes}
    assert noisy == {}


def quiet(summary: CheckSummary) -> None:
    only(summary)


# --------------------------------------------------------------------------------------------------
# paid_but_closed


def test_paid_but_closed_unresolved():
    """A debit followed by a TTL close, never refunded: one unresolved instance from the close to the end."""
    o = Order().created().charge(1790).add(1790, "trade.succeeded", trade="A", amount=5000).add(1800, "order.closed", reason="ttl")
    s = check(o)
    pbc = stats(s, "paid_but_closed")
    assert (pbc.count, pbc.repaired, pbc.amount_fen) == (1, 0, 5000)
    assert pbc.windows == [END - 1800] and pbc.window_max == END - 1800
    assert s.end_states == {"paid_closed_unrefunded": 1}
    only(s, "paid_but_closed")


def test_paid_but_closed_starts_at_late_charge():
    """A charge that lands after the close starts the instance at the charge."""
    s = check(Order().created().add(1800, "order.closed", reason="ttl").charge(1900))
    assert stats(s, "paid_but_closed").windows == [END - 1900]


def test_paid_but_closed_refunded_is_repaired():
    """A refund that reaches the user repairs it: counted in repaired, not in count."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl")
    o.add(2000, "order.refund_pending", trade="A", amount=5000).refund(2000).add(2000.5, "order.refunded", trade="A", amount=5000)
    s = check(o)
    pbc = stats(s, "paid_but_closed")
    assert (pbc.count, pbc.repaired, pbc.amount_fen, pbc.windows) == (0, 1, 0, [200.0])
    assert s.end_states == {"paid_closed_refunded": 1}


def test_paid_but_closed_reopened_is_repaired():
    """Reopening the order on a late payment resolves it."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl")
    o.add(2500, "order.reopened", trade="A", stock_released=True)
    s = check(o)
    assert (stats(s, "paid_but_closed").repaired, stats(s, "paid_but_closed").windows) == (1, [700.0])
    assert s.end_states == {"resurrected_stock_released": 1}


def test_close_refused_near_miss():
    """Paid, the trade close is refused and the order stays paid: not paid_but_closed."""
    o = Order().created().add(1790, "trade.created", trade="A", amount=5000).charge(1797)
    o.add(1797, "trade.succeeded", trade="A", amount=5000).screen(1797.3, "payment_succeeded")
    o.add(1800, "trade.close_refused", trade="A").add(1800.2, "order.paid", trade="A")
    s = check(o)
    quiet(s)
    assert s.end_states == {"paid_open": 1}


def test_closed_unpaid_near_miss():
    """A closed order whose only trade was closed unpaid is not an anomaly."""
    o = Order().created().add(5, "trade.created", trade="A", amount=5000).add(30, "user.abandon")
    o.add(1800, "trade.closed", trade="A").add(1800.1, "order.closed", reason="ttl", stock_released=True)
    s = check(o)
    quiet(s)
    assert s.end_states == {"unpaid_closed": 1}


def test_closed_with_payable_trade_is_latent_not_anomaly():
    """Closed while its trade is still payable: an end state of its own, no anomaly yet."""
    o = Order().created().add(5, "trade.created", trade="A", amount=5000).add(1800, "order.closed", reason="ttl")
    s = check(o)
    quiet(s)
    assert s.end_states == {"unpaid_closed_trade_payable": 1}


# --------------------------------------------------------------------------------------------------
# success_shown_then_closed


def test_success_shown_then_closed():
    """The seed story: success shown, then the order closed, never refunded."""
    o = Order().created().charge(1790).screen(1795, "payment_succeeded").add(1800, "order.closed", reason="ttl")
    s = check(o)
    sstc = stats(s, "success_shown_then_closed")
    assert (sstc.count, sstc.repaired, sstc.amount_fen, sstc.windows) == (1, 0, 5000, [END - 1800])
    only(s, "paid_but_closed", "success_shown_then_closed")


def test_success_shown_on_closed_order_starts_at_screen():
    """A success screen shown after the close starts the instance at the screen."""
    o = Order().created().add(1800, "order.closed", reason="ttl").charge(1890).screen(1900, "payment_succeeded")
    assert stats(check(o), "success_shown_then_closed").windows == [END - 1900]


def test_success_screen_that_lied():
    """Success shown, no debit at all, order closed: an instance holding no money."""
    o = Order().created().screen(100, "payment_succeeded").add(1800, "order.closed", reason="ttl")
    s = check(o)
    sstc = stats(s, "success_shown_then_closed")
    assert (sstc.count, sstc.amount_fen) == (1, 0)
    only(s, "success_shown_then_closed")


def test_success_shown_then_closed_refunded_is_repaired():
    """A refund to zero repairs it."""
    o = Order().created().charge(1790).screen(1795, "order_paid").add(1800, "order.closed", reason="ttl").refund(1850)
    sstc = stats(check(o), "success_shown_then_closed")
    assert (sstc.count, sstc.repaired, sstc.windows) == (0, 1, [50.0])


def test_success_shown_order_paid_near_miss():
    """Success shown and the order paid and completed: no anomaly."""
    o = Order().paid_flow().add(500, "order.shipped").add(900, "order.delivered").add(950, "order.completed")
    s = check(o)
    quiet(s)
    assert s.end_states == {"paid_open": 1}


# --------------------------------------------------------------------------------------------------
# failure_shown_but_charged


def test_failure_shown_but_charged_unresolved():
    """Told 'unknown', debited, order paid, never shown success: unresolved to the end."""
    o = Order().created().add(10, "user.pay", trade="A").screen(20, "payment_unknown").charge(25).add(30, "order.paid", trade="A")
    s = check(o)
    f = stats(s, "failure_shown_but_charged")
    assert (f.count, f.repaired, f.amount_fen, f.windows) == (1, 0, 5000, [END - 25])
    only(s, "failure_shown_but_charged")


def test_failure_shown_but_charged_repaired_by_success_screen():
    """A later 'order paid' screen repairs it."""
    o = Order().created().charge(15).screen(20, "payment_failed").add(30, "order.paid", trade="A").screen(40, "order_paid")
    f = stats(check(o), "failure_shown_but_charged")
    assert (f.count, f.repaired, f.windows) == (0, 1, [20.0])


def test_failure_shown_not_charged_near_miss():
    """A decline shown as failed, with no debit: no anomaly; a retry that succeeds is healthy too."""
    o = Order().created().add(10, "user.pay", trade="A").add(11, "trade.failed", trade="A", reason="declined")
    o.screen(11.5, "payment_failed").add(30, "user.retry", trade="B").charge(31, "B").screen(31.5, "payment_succeeded")
    o.add(32, "order.paid", trade="B")
    quiet(check(o))


def test_failure_shown_then_closed_is_paid_but_closed_only():
    """Told failed, debited, then closed: the closed order makes it paid_but_closed, not this class."""
    o = Order().created().charge(15).screen(20, "payment_failed").add(1800, "order.closed", reason="ttl")
    s = check(o)
    f = stats(s, "failure_shown_but_charged")
    assert (f.count, f.repaired, f.n_windows) == (0, 0, 0)
    assert stats(s, "paid_but_closed").count == 1


# --------------------------------------------------------------------------------------------------
# double_charge


def test_double_charge_two_trades():
    """A retry with a new trade number while the first debit went through: the extra money is held."""
    o = Order().created().charge(10, "A").add(20, "user.retry", trade="B").charge(50, "B").add(51, "order.paid", trade="B")
    s = check(o)
    d = stats(s, "double_charge")
    assert (d.count, d.amount_fen, d.windows) == (1, 5000, [END - 50])
    assert s.end_states == {"double_charged": 1}


def test_double_charge_same_trade_twice():
    """One trade debited twice is a double charge too."""
    o = Order().created().charge(10, "A").charge(60, "A").add(61, "order.paid", trade="A")
    d = stats(check(o), "double_charge")
    assert (d.count, d.amount_fen, d.windows) == (1, 5000, [END - 60])


def test_double_charge_refunded_is_repaired():
    """Refunding one of the two debits repairs it."""
    o = Order().created().charge(10, "A").charge(50, "B").add(51, "order.paid", trade="B").refund(500, "A")
    s = check(o)
    d = stats(s, "double_charge")
    assert (d.count, d.repaired, d.windows) == (0, 1, [450.0])
    assert s.end_states == {"paid_open": 1}


def test_retry_after_refund_near_miss():
    """Charged, refunded, charged again on a new trade: never two debits at once, no double charge."""
    o = Order().created().charge(10, "A").refund(20, "A").charge(50, "B").add(51, "order.paid", trade="B")
    quiet(check(o))


# --------------------------------------------------------------------------------------------------
# charge_without_order


def test_charge_without_order():
    """A debit for an order id that was never created."""
    o = Order("ghost").add(100, "trade.created", trade="G", amount=700).charge(100.5, "G", 700)
    s = check(o, observed=FULL)
    c = stats(s, "charge_without_order")
    assert (c.count, c.amount_fen, c.windows) == (1, 700, [END - 100.5])
    assert s.orders == 0 and s.end_states == {}


def test_charge_without_order_refunded():
    """A refund repairs it."""
    o = Order("ghost").charge(100, "G", 700).refund(400, "G", 700)
    c = stats(check(o, observed=FULL), "charge_without_order")
    assert (c.count, c.repaired, c.windows) == (0, 1, [300.0])


def test_created_event_arriving_late_in_the_stream_near_miss():
    """order.created fed after the charge (merged sources) but earlier in time: not a charge without order."""
    o = Order().paid_flow()
    events = o.events[1:] + o.events[:1]
    quiet(check_events(events, CheckConfig(end=END)))


# --------------------------------------------------------------------------------------------------
# order_paid_without_charge


def test_order_paid_without_charge():
    """The order service marked it paid; no debit stands behind it."""
    o = Order().created(amount=4200).add(30, "order.paid", trade="A")
    s = check(o, observed=FULL)
    p = stats(s, "order_paid_without_charge")
    assert (p.count, p.amount_fen, p.windows) == (1, 4200, [END - 30])
    assert s.end_states == {"order_paid_no_charge": 1}


def test_order_paid_without_charge_repaired_by_charge():
    """The debit showing up later repairs it."""
    o = Order().created().add(30, "order.paid", trade="A").charge(40)
    p = stats(check(o), "order_paid_without_charge")
    assert (p.count, p.repaired, p.windows) == (0, 1, [10.0])


def test_order_paid_without_charge_repaired_by_leaving_paid():
    """Leaving the paid states (closed) ends it."""
    o = Order().created().add(30, "order.paid", trade="A").add(100, "order.closed", reason="reconciliation")
    p = stats(check(o, observed=FULL), "order_paid_without_charge")
    assert (p.count, p.repaired, p.windows) == (0, 1, [70.0])


def test_bnpl_order_paid_by_authorization_near_miss():
    """A BNPL order is paid by its authorization, not a debit: not order_paid_without_charge."""
    quiet(check(bnpl_order(delivered=5000).add(6000, "bnpl.finish_requested", agreement="A1", amount=20000)))


# --------------------------------------------------------------------------------------------------
# stuck_pending


def test_stuck_pending_order_awaiting_payment():
    """Still awaiting payment at expires_at + stuck_grace."""
    s = check(Order().created(expires_at=1800))
    sp = stats(s, "stuck_pending")
    assert (sp.count, sp.windows) == (1, [END - 5400])
    assert s.end_states == {"awaiting_payment": 1}


def test_stuck_pending_order_closed_late_is_repaired():
    """Closed after the grace: repaired at the close."""
    sp = stats(check(Order().created(expires_at=1800).add(6000, "order.closed", reason="ttl")), "stuck_pending")
    assert (sp.count, sp.repaired, sp.windows) == (0, 1, [600.0])


def test_order_closed_at_ttl_near_miss():
    """Closed at its TTL: not stuck."""
    quiet(check(Order().created(expires_at=1800).add(1800, "order.closed", reason="ttl")))


def test_stuck_pending_trade_unknown():
    """A trade left unknown past the grace is stuck until it is decided."""
    o = Order().created(expires_at=100_000).add(100, "trade.created", trade="A", amount=3000).add(101, "trade.unknown", trade="A")
    o.add(4000, "trade.succeeded", trade="A", amount=3000).charge(4000, "A", 3000).add(4001, "order.paid", trade="A")
    sp = stats(check(o), "stuck_pending")
    assert (sp.count, sp.repaired, sp.windows) == (0, 1, [4000 - 3701])
    o2 = Order().created(expires_at=100_000).add(100, "trade.created", trade="A", amount=3000).add(101, "trade.unknown", trade="A")
    s2 = check(o2)
    sp2 = stats(s2, "stuck_pending")
    assert (sp2.count, sp2.amount_fen, sp2.windows) == (1, 3000, [END - 3701])
    assert s2.end_states == {"unknown_past_timeout": 1}


def test_trade_unknown_decided_quickly_near_miss():
    """Unknown for a minute, then succeeded: not stuck."""
    o = Order().created().add(100, "trade.unknown", trade="A").charge(160).add(160, "trade.succeeded", trade="A", amount=5000)
    o.add(161, "order.paid", trade="A").screen(162, "order_paid")
    quiet(check(o))


def test_deadline_after_end_of_observation_is_not_stuck():
    """A deadline after the end is not counted, whether the end is known while streaming or only at finish."""
    o = Order().created(expires_at=9000)  # stuck at 12600, after END
    quiet(check(o))
    quiet(check_events(o.events + [{"t": END, "type": "run.end"}]))


# --------------------------------------------------------------------------------------------------
# bnpl_stuck_unfinished


def test_bnpl_stuck_unfinished():
    """Delivered, no finish within the limit: stuck from delivered + limit, holding the agreement amount."""
    s = check(bnpl_order(delivered=1000), end=100_000)
    b = stats(s, "bnpl_stuck_unfinished")
    assert (b.count, b.amount_fen, b.windows) == (1, 20000, [100_000 - 87_400])
    assert s.end_states == {"bnpl_unfinished": 1}
    only(s, "bnpl_stuck_unfinished")


def test_bnpl_finish_after_limit_is_repaired():
    """A finish that arrives after the limit repairs it."""
    o = bnpl_order(delivered=1000).add(90_000, "bnpl.finish_requested", agreement="A1", amount=20000)
    b = stats(check(o, end=100_000), "bnpl_stuck_unfinished")
    assert (b.count, b.repaired, b.windows) == (0, 1, [2600.0])


def test_bnpl_finished_in_time_near_miss():
    """Finished, deducted and settled within the limit: healthy."""
    o = bnpl_order(delivered=1000).add(5000, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(5001, "bnpl.deduction", agreement="A1", ok=True, attempt=1).add(5002, "bnpl.settled", agreement="A1")
    s = check(o, end=100_000)
    quiet(s)
    assert s.end_states == {"bnpl_settled": 1}


# --------------------------------------------------------------------------------------------------
# bnpl_false_overdue


def test_bnpl_false_overdue():
    """Marked overdue after a successful deduction, cleared later: a repaired instance."""
    o = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(1200, "bnpl.deduction", agreement="A1", ok=True, attempt=1).add(1300, "bnpl.overdue", agreement="A1")
    o.add(1400, "bnpl.overdue_cleared", agreement="A1")
    b = stats(check(o), "bnpl_false_overdue")
    assert (b.count, b.repaired, b.windows) == (0, 1, [100.0])
    o2 = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o2.add(1200, "bnpl.repaid", agreement="A1").add(1300, "bnpl.overdue", agreement="A1")
    b2 = stats(check(o2), "bnpl_false_overdue")
    assert (b2.count, b2.amount_fen, b2.windows) == (1, 20000, [END - 1300])


def test_bnpl_overdue_before_repayment_near_miss():
    """Overdue while unpaid (deduction failed), repaid, cleared: the overdue mark was true, not false."""
    o = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(1200, "bnpl.deduction", agreement="A1", ok=False, attempt=1).add(1300, "bnpl.overdue", agreement="A1")
    o.add(1400, "bnpl.repaid", agreement="A1").add(1410, "bnpl.overdue_cleared", agreement="A1")
    s = check(o)
    assert stats(s, "bnpl_false_overdue").n_windows == 0
    assert stats(s, "bnpl_deduction_failed").repaired == 1


# --------------------------------------------------------------------------------------------------
# bnpl_deduction_failed


def test_bnpl_deduction_failed():
    """Deductions keep failing after finish: unresolved from the first failure."""
    o = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(1120, "bnpl.deduction", agreement="A1", ok=False, attempt=1)
    o.add(4720, "bnpl.deduction", agreement="A1", ok=False, attempt=2)
    s = check(o)
    b = stats(s, "bnpl_deduction_failed")
    assert (b.count, b.amount_fen, b.windows) == (1, 20000, [END - 1120])
    assert s.end_states == {"bnpl_deduction_failing": 1}


def test_bnpl_deduction_retry_succeeds_is_repaired():
    """A later successful deduction repairs it."""
    o = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(1120, "bnpl.deduction", agreement="A1", ok=False, attempt=1)
    o.add(8320, "bnpl.deduction", agreement="A1", ok=True, attempt=2)
    b = stats(check(o), "bnpl_deduction_failed")
    assert (b.count, b.repaired, b.windows) == (0, 1, [7200.0])


def test_bnpl_deduction_ok_first_time_near_miss():
    """A first deduction that succeeds: nothing failed."""
    o = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(1120, "bnpl.deduction", agreement="A1", ok=True, attempt=1)
    quiet(check(o))


def test_bnpl_compensated_end_state():
    """Deductions failing and the merchant compensated: the buyer is left overdue."""
    o = bnpl_order().add(1100, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(1120, "bnpl.deduction", agreement="A1", ok=False, attempt=1).add(5000, "bnpl.compensated", agreement="A1")
    assert check(o).end_states == {"bnpl_compensated_overdue": 1}


# --------------------------------------------------------------------------------------------------
# ledger_imbalance


def test_ledger_imbalance():
    """Postings that do not sum to zero: never resolved, amount = |sum|."""
    o = Order().paid_flow()
    o.add(600, "ledger.txn", kind="settlement", trade="A", txn="s1",
          postings=[{"account": "clearing", "amount": -5000}, {"account": "merchant:m", "amount": 4990}])
    s = check(o)
    li = stats(s, "ledger_imbalance")
    assert (li.count, li.amount_fen, li.windows) == (1, 10, [END - 600])
    only(s, "ledger_imbalance")


def test_balanced_ledger_near_miss():
    """Balanced settlement and refund txns: no imbalance."""
    o = Order().paid_flow().add(600, "ledger.txn", kind="settlement", trade="A", txn="s1",
                                postings=[{"account": "clearing", "amount": -5000}, {"account": "merchant:m", "amount": 5000}])
    quiet(check(o))


# --------------------------------------------------------------------------------------------------
# counting, configuration, examples, timeline


def test_every_class_is_reported_even_when_zero():
    """per_class holds every class of ANOMALY_CLASSES."""
    s = check(Order().paid_flow())
    assert list(s.per_class) == list(ANOMALY_CLASSES)
    assert all(v.count == 0 for v in s.per_class.values())


def test_warmup_and_horizon_decide_what_is_counted():
    """Orders created before warmup or at/after horizon are not counted, but they are in the timeline."""
    def closed_paid(name, t0):
        o = Order(name)
        o.add(t0, "order.created", user="u", amount=100, method="wallet", expires_at=t0 + 10)
        return o.charge(t0 + 5, "A", 100).add(t0 + 10, "order.closed", reason="ttl")

    s = check(closed_paid("early", 50), closed_paid("in", 100), closed_paid("edge", 300), closed_paid("late", 400),
              warmup=100, horizon=300)
    assert s.orders == 1
    assert stats(s, "paid_but_closed").count == 1
    assert sum(s.timeline["arrivals"]) == 4
    assert sum(s.timeline["anomaly_starts"]["paid_but_closed"]) == 4


def test_run_start_fills_defaults_but_explicit_config_wins():
    """run.start supplies warmup/horizon/end; a non-default constructor value wins."""
    start = {"t": 0, "type": "run.start", "warmup": 100, "horizon": 500, "end": 2000, "stuck_grace": 60}
    o = Order().created(t=150, expires_at=200)
    s = check_events([start] + o.events)
    assert (s.warmup, s.horizon, s.end) == (100.0, 500.0, 2000.0)
    assert stats(s, "stuck_pending").windows == [2000.0 - 260]
    s2 = check_events([start] + o.events, CheckConfig(warmup=200))
    assert (s2.warmup, s2.orders) == (200.0, 0)
    checker = Checker(respect_run_start=False)
    checker.feed(start)
    assert checker.finish().horizon is None


def test_end_defaults_to_run_end_then_last_event():
    """Without a configured end, run.end decides it, else the last event's time."""
    o = Order().created(expires_at=10)
    assert check_events(o.events + [{"t": 777, "type": "run.end"}]).end == 777.0
    assert check_events(o.events + [{"t": 55, "type": "user.abandon", "order": "o1"}]).end == 55.0


def test_out_of_order_events_are_sorted_per_order():
    """Events of one order fed out of time order are judged in time order."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl")
    s = check_events(list(reversed(o.events)), CheckConfig(end=END))
    assert stats(s, "paid_but_closed").windows == [END - 1800]


def test_examples_first_worst_last():
    """Examples: earliest start, longest window and latest start, each with that order's events."""
    orders = []
    for name, charge_t, refund_t in (("a", 1000, 1100), ("b", 2000, 9000), ("c", 3000, 3050)):
        o = Order(name)
        o.add(0, "order.created", user="u", amount=100, method="wallet", expires_at=900)
        o.add(900, "order.closed", reason="ttl").charge(charge_t, "A", 100).refund(refund_t, "A", 100)
        orders.append(o)
    exs = check(*orders).examples["paid_but_closed"]
    assert [(e["roles"], e["order"]) for e in exs] == [(["first"], "a"), (["worst"], "b"), (["last"], "c")]
    assert exs[1]["window_s"] == 7000.0 and exs[1]["resolved"] is True and exs[1]["amount"] == 1.0
    assert all(ev["order"] == e["order"] for e in exs for ev in e["events"])


def test_single_instance_example_carries_every_role():
    """One instance is first, worst and last at once: listed once."""
    exs = check(Order().created().charge(10).add(1800, "order.closed")).examples["paid_but_closed"]
    assert len(exs) == 1 and exs[0]["roles"] == ["first", "worst", "last"] and exs[0]["role"] == "first"


def test_examples_can_be_turned_off():
    """examples=False keeps no histories."""
    assert check(Order().created().charge(10).add(1800, "order.closed"), examples=False).examples == {}


def test_timeline_states_arrivals_and_money_at_risk():
    """Timeline: arrivals per bucket, orders per state at each bucket start, money held by open anomalies."""
    o = Order().created(t=30).charge(100).add(150, "order.closed", reason="ttl").refund(250)
    s = check(o, end=360, bucket_s=60)
    tl = s.timeline
    assert tl["t"] == [0, 60, 120, 180, 240, 300]
    assert tl["arrivals"] == [1, 0, 0, 0, 0, 0]
    assert tl["states"]["awaiting_payment"] == [0, 1, 1, 0, 0, 0]
    assert tl["states"]["closed"] == [0, 0, 0, 1, 1, 1]
    assert tl["anomaly_starts"]["paid_but_closed"] == [0, 0, 1, 0, 0, 0]
    assert tl["money_at_risk"] == [0, 0, 0, 50.0, 50.0, 0]


def test_window_sample_is_bounded_and_deterministic():
    """Many instances: the window sample stays under the cap, exact sum/max, the same twice."""
    def orders():
        for i in range(2000):
            o = Order(f"o{i}")
            o.add(i, "order.created", user="u", amount=100, method="wallet", expires_at=i + 1)
            o.add(i + 1, "order.closed", reason="ttl").charge(i + 2, "A", 100).refund(i + 2 + i % 97, "A", 100)
            o.add(i + 300, "order.end")
            yield from o.events

    a = check_events(orders(), CheckConfig(end=5000, max_window_samples=100))
    b = check_events(orders(), CheckConfig(end=5000, max_window_samples=100))
    pbc = a.per_class["paid_but_closed"]
    assert pbc.n_windows == 2000 - sum(1 for i in range(2000) if i % 97 == 0)
    assert 50 <= len(pbc.windows) <= 100
    assert pbc.window_sum == sum(i % 97 for i in range(2000))
    assert pbc.window_max == 96
    assert a.to_dict() == b.to_dict()


def test_streaming_memory_is_bounded_by_orders_in_flight():
    """200k orders, each ending with order.end, never have more than a window of orders held at once."""
    def stream():
        inflight = 16
        for i in range(200_000 + inflight):
            if i < 200_000:
                yield {"t": float(i), "type": "order.created", "order": i, "user": "u", "amount": 100,
                       "method": "wallet", "expires_at": i + 10.0}
            j = i - inflight
            if j >= 0:
                yield {"t": j + 10.0, "type": "order.closed", "order": j, "reason": "ttl"}
                yield {"t": j + 10.0, "type": "order.end", "order": j}

    checker = Checker(CheckConfig(end=300_000, examples=False))
    for e in stream():
        checker.feed(e)
    assert checker.max_live_orders <= 17
    assert checker.live_orders == 0
    s = checker.finish()
    assert s.orders == 200_000 and s.end_states == {"unpaid_closed": 200_000}


def test_events_after_order_end_are_dropped_and_counted():
    """A late event for an ended order does not become a charge without order."""
    o = Order().paid_flow().add(100, "order.end")
    s = check_events(o.events + [{"t": 200, "type": "notify.received", "order": "o1", "trade": "A"}],
                     CheckConfig(end=END))
    assert s.late_events == 1
    quiet(s)


def test_summary_is_picklable_and_json_able():
    """A summary crosses process boundaries and serialises to JSON."""
    s = check_events(read_history(EXAMPLE_HISTORY))
    assert pickle.loads(pickle.dumps(s)).to_dict() == s.to_dict()
    json.dumps(s.to_dict())


def test_example_history_tells_its_stories():
    """The shipped example: the seed story, a refund, a double charge, a stuck BNPL and a stray charge."""
    s = check_events(read_history(EXAMPLE_HISTORY))
    counts = {c: (v.count, v.repaired) for c, v in s.per_class.items() if v.n_windows}
    assert counts == {
        "paid_but_closed": (1, 1),
        "success_shown_then_closed": (1, 0),
        "failure_shown_but_charged": (0, 1),
        "double_charge": (1, 0),
        "charge_without_order": (1, 0),
        "bnpl_stuck_unfinished": (1, 0),
    }
    assert s.orders == 8 and s.end == 97200.0
    assert s.end_states == {"bnpl_settled": 1, "bnpl_unfinished": 1, "double_charged": 1, "paid_closed_refunded": 1,
                            "paid_closed_unrefunded": 1, "paid_open": 2, "unpaid_closed": 1}
    assert set(s.end_states) <= set(END_STATES)


# --------------------------------------------------------------------------------------------------
# reading histories


def test_read_history_plain_gz_and_blank_lines(tmp_path):
    """JSON Lines and gzip are read alike; blank lines are skipped."""
    lines = ['{"t": 0, "type": "run.start"}', "", '  ', '{"t": 1.5, "type": "order.created", "order": "o"}']
    plain = tmp_path / "h.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    gz = tmp_path / "h.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write("\n".join(lines))
    assert list(read_history(plain)) == list(read_history(gz))
    assert [e["t"] for e in read_history(gz)] == [0, 1.5]


@pytest.mark.parametrize("line, message", [
    ('{"t": 1, "type": ', "not valid JSON"),
    ('[1, 2]', "expected a JSON object, found list"),
    ('{"type": "order.created"}', "missing field 't'"),
    ('{"t": "12", "type": "order.created"}', "field 't' must be a finite number, found '12'"),
    ('{"t": true, "type": "order.created"}', "field 't' must be a finite number"),
    ('{"t": 1}', "missing field 'type'"),
    ('{"t": 1, "type": 7}', "field 'type' must be a string"),
])
def test_read_history_names_file_line_and_problem(tmp_path, line, message):
    """A bad line raises HistoryError naming the file, the line number and what is wrong."""
    p = tmp_path / "bad.jsonl"
    p.write_text('{"t": 0, "type": "run.start"}\n\n' + line + "\n")
    with pytest.raises(HistoryError) as err:
        list(read_history(p))
    assert f"{p}:3:" in str(err.value) and message in str(err.value)


def test_read_history_missing_file(tmp_path):
    """A missing file is a HistoryError, not an OSError."""
    with pytest.raises(HistoryError, match="no such history file"):
        list(read_history(tmp_path / "nope.jsonl"))


# --------------------------------------------------------------------------------------------------
# property: parties that agree never make an anomaly


def _healthy(kind: str, i: int, t0: float, d: list[float], amount: int) -> list[dict]:
    o = Order(f"h{i}", f"u{i}")
    ttl = 1800.0
    if kind == "paid":
        tp = t0 + d[0] * (ttl - 60)  # pays before the TTL; the debit takes under a minute
        o.add(t0, "order.created", user=o.user, amount=amount, method="card", expires_at=t0 + ttl)
        o.add(tp, "user.pay", trade="T", attempt=1).add(tp + 0.1, "trade.created", trade="T", amount=amount)
        o.add(tp + 0.2, "trade.processing", trade="T")
        tc = tp + 0.3 + d[1] * 50
        o.charge(tc, "T", amount).add(tc, "trade.succeeded", trade="T", amount=amount)
        o.screen(tc + 0.2, "payment_succeeded")
        o.add(tc + 0.3, "notify.sent", trade="T", notify_id=f"n{i}", attempt=1)
        o.add(tc + 0.3 + d[2] * 5, "notify.received", trade="T", notify_id=f"n{i}", attempt=1, acked=True)
        o.add(tc + 0.3 + d[2] * 5, "order.paid", trade="T")
        ts = tc + 10 + d[3] * 7200
        o.add(ts, "order.shipped").add(ts + 3600, "order.delivered").add(ts + 3700, "order.completed")
        o.add(ts + 3700, "ledger.txn", kind="settlement", trade="T", txn=f"s{i}",
              postings=[{"account": "clearing", "amount": -amount}, {"account": "merchant:m", "amount": amount}])
        if d[4] < 0.3:  # an after-sales refund
            o.add(ts + 4000, "order.refund_pending", trade="T", amount=amount).refund(ts + 4001, "T", amount)
            o.add(ts + 4002, "order.refunded", trade="T", amount=amount)
    elif kind == "abandoned":
        o.add(t0, "order.created", user=o.user, amount=amount, method="wallet", expires_at=t0 + ttl)
        if d[0] < 0.5:
            o.add(t0 + 1, "trade.created", trade="T", amount=amount)
        o.add(t0 + 2 + d[1] * 600, "user.abandon")
        if d[0] < 0.5:
            o.add(t0 + ttl, "trade.closed", trade="T")
        o.add(t0 + ttl + 0.1, "order.closed", reason="ttl", stock_released=True)
    else:  # bnpl
        o.add(t0, "order.created", user=o.user, amount=amount, method="bnpl", expires_at=t0 + ttl)
        o.add(t0 + 3, "bnpl.authorized", agreement="A", amount=amount, expires_at=t0 + 28 * 86400)
        o.add(t0 + 3.5, "order.paid", agreement="A").screen(t0 + 4, "order_paid")
        td = t0 + 3600 + d[0] * 86400
        tf = td + d[1] * 80000
        o.add(td, "order.delivered").add(tf, "bnpl.finish_requested", agreement="A", amount=amount)
        o.add(tf + 1, "bnpl.deduction", agreement="A", ok=True, attempt=1).add(tf + 2, "bnpl.settled", agreement="A")
        o.add(tf + 2, "order.completed")
    if d[5] < 0.5:
        o.add(max(e["t"] for e in o.events), "order.end")
    return o.events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flows=st.lists(
        st.tuples(
            st.sampled_from(["paid", "abandoned", "bnpl"]),
            st.floats(0, 3600),
            st.lists(st.floats(0, 1), min_size=6, max_size=6),
            st.integers(1, 5_000_000),
        ),
        min_size=1,
        max_size=12,
    ),
    shuffle_seed=st.integers(0, 2**32 - 1),
)
def test_agreeing_parties_never_make_an_anomaly(flows, shuffle_seed):
    """Generated healthy flows, interleaved at random, produce no anomaly of any class."""
    events = [e for i, (kind, t0, d, amount) in enumerate(flows) for e in _healthy(kind, i, t0, d, amount)]
    random.Random(shuffle_seed).shuffle(events)
    # order.end must stay the last event of its order in the stream
    ends = [e for e in events if e["type"] == "order.end"]
    events = [e for e in events if e["type"] != "order.end"] + ends
    s = check_events(events, CheckConfig(end=400_000))
    assert {c: v.n_windows for c, v in s.per_class.items() if v.n_windows} == {}
    assert s.orders == len(flows)
