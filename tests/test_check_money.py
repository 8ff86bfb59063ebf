"""The checker's money classes added for issue 14: each has a has-it and a near-miss test.

amount_mismatch, over_refund, refund_to_wrong_party, duplicate_fulfilment, oversold and
bnpl_double_deduction (and, since issue 15's after-sales, refunded_and_shipped); and the inputs the checker used to trust too much (a ledger line twice, a
refund without its trade).
"""

from __future__ import annotations

from test_check import END, Order, bnpl_order, check, only, quiet, stats

from sim.check import CheckConfig, check_events


def refund_to(o: Order, t: float, account: str, trade="A", amount=5000, txn=None) -> Order:
    return o.add(t, "ledger.txn", kind="refund", trade=trade, txn=txn or f"r{t}",
                 postings=[{"account": "clearing", "amount": -amount}, {"account": account, "amount": amount}])


# --------------------------------------------------------------------------------------------------
# amount_mismatch


def test_amount_mismatch_charged_a_cent_for_an_88_yuan_order():
    """¥0.01 debited for an ¥88 order: an unresolved instance holding the difference."""
    o = Order().created(amount=8800)
    o.add(10, "trade.created", trade="A", amount=8800).charge(11, "A", 1).add(11, "trade.succeeded", trade="A")
    o.add(12, "order.paid", trade="A")
    s = check(o)
    m = stats(s, "amount_mismatch")
    assert (m.count, m.repaired, m.amount_fen, m.windows) == (1, 0, 8799, [END - 11])
    only(s, "amount_mismatch")


def test_amount_mismatch_overcharge_refunded_is_repaired():
    """Charged ¥100 for a ¥50 order, refunded in full: repaired at the refund."""
    o = Order().created(amount=5000).charge(10, "A", 10000).add(11, "order.paid", trade="A")
    o.add(300, "order.closed", reason="reconciliation").refund(300, "A", 10000)
    m = stats(check(o), "amount_mismatch")
    assert (m.count, m.repaired, m.windows) == (0, 1, [290.0])


def test_amount_mismatch_near_miss_exact_charge_then_partial_refund():
    """Charged exactly the order amount, then an after-sales partial refund: the charge matched."""
    o = Order().paid_flow(amount=5000)
    o.add(500, "order.refund_pending", trade="A", amount=2000).refund(501, "A", 2000)
    quiet(check(o))


# --------------------------------------------------------------------------------------------------
# over_refund


def test_over_refund_refunded_twice():
    """One charge, two refunds of it: the second refund is money the buyer never paid."""
    o = Order().paid_flow().add(500, "order.closed", reason="reconciliation")
    o.refund(600, "A", 5000).refund(700, "A", 5000)
    s = check(o)
    r = stats(s, "over_refund")
    assert (r.count, r.repaired, r.amount_fen, r.windows) == (1, 0, 5000, [END - 700])
    only(s, "over_refund", "success_shown_then_closed", "paid_but_closed")
    assert stats(s, "paid_but_closed").repaired == 1  # the first refund repaired it


def test_over_refund_clawed_back_is_repaired():
    """The extra refund taken back (a second charge on the trade) ends it."""
    o = Order().paid_flow().refund(600, "A", 5000).refund(700, "A", 5000).charge(900, "A", 5000)
    r = stats(check(o), "over_refund")
    assert (r.count, r.repaired, r.windows) == (0, 1, [200.0])


def test_over_refund_near_miss_partial_refunds_summing_to_the_charge():
    """Two partial refunds that add up to the charge are not an over-refund."""
    o = Order().paid_flow(amount=5000).refund(600, "A", 3000).refund(700, "A", 2000)
    assert stats(check(o), "over_refund").n_windows == 0


# --------------------------------------------------------------------------------------------------
# refund_to_wrong_party


def test_refund_to_wrong_party_and_the_payer_still_out_of_pocket():
    """A closed order's refund credited to another user: wrong party, and paid_but_closed stays open."""
    o = Order(user="u1").created().charge(10, "A", 5000).add(1800, "order.closed", reason="ttl")
    refund_to(o, 2000, "user:u2")
    s = check(o)
    w = stats(s, "refund_to_wrong_party")
    assert (w.count, w.repaired, w.amount_fen, w.windows) == (1, 0, 5000, [END - 2000])
    assert stats(s, "paid_but_closed").count == 1  # u1's money is still held
    assert stats(s, "over_refund").n_windows == 0


def test_refund_to_wrong_party_repaired_by_clawback():
    """Taking the misdirected money back from u2 ends the instance."""
    o = Order(user="u1").paid_flow()
    refund_to(o, 500, "user:u2")
    o.add(800, "ledger.txn", kind="refund", trade="A", txn="claw",
          postings=[{"account": "user:u2", "amount": -5000}, {"account": "clearing", "amount": 5000}])
    w = stats(check(o), "refund_to_wrong_party")
    assert (w.count, w.repaired, w.windows) == (0, 1, [300.0])


def test_refund_to_wrong_party_near_miss_refund_to_the_payer():
    """Refunded to the account that paid (even when it is not the order's own user)."""
    o = Order(user="u1").created().add(10, "ledger.txn", kind="charge", trade="A", txn="c",
                                       postings=[{"account": "user:friend", "amount": -5000},
                                                 {"account": "clearing", "amount": 5000}])
    o.add(1800, "order.closed", reason="ttl")
    refund_to(o, 2000, "user:friend")
    s = check(o)
    assert stats(s, "refund_to_wrong_party").n_windows == 0
    assert stats(s, "paid_but_closed").repaired == 1


# --------------------------------------------------------------------------------------------------
# duplicate_fulfilment


def test_duplicate_fulfilment_notification_acted_on_twice():
    """A duplicate notification marks the paid order paid again and it ships twice."""
    o = Order().paid_flow()
    o.add(20, "notify.received", trade="A", notify_id="n1", attempt=1, acked=True).add(20, "order.paid", trade="A")
    o.add(100, "order.shipped").add(120, "order.shipped")
    s = check(o)
    d = stats(s, "duplicate_fulfilment")
    assert (d.count, d.repaired, d.amount_fen, d.windows) == (1, 0, 5000, [END - 20])
    only(s, "duplicate_fulfilment")


def test_duplicate_fulfilment_shipped_twice():
    """Shipped twice without a second order.paid is also fulfilled twice."""
    o = Order().paid_flow().add(100, "order.shipped").add(150, "order.shipped")
    assert stats(check(o), "duplicate_fulfilment").windows == [END - 150]


def test_duplicate_fulfilment_near_miss_duplicate_notification_acknowledged_only():
    """The duplicate notification is acknowledged and changes nothing: one fulfilment."""
    o = Order().paid_flow()
    o.add(11, "notify.received", trade="A", notify_id="n1", attempt=1, acked=True)
    o.add(20, "notify.received", trade="A", notify_id="n1", attempt=1, acked=True)
    o.add(100, "order.shipped").add(200, "order.delivered").add(300, "order.completed")
    quiet(check(o))


def test_duplicate_event_id_is_not_a_second_fulfilment():
    """The same order.shipped delivered twice (same event id) is one shipment."""
    o = Order().paid_flow().add(100, "order.shipped", id="e-ship").add(100, "order.shipped", id="e-ship")
    s = check(o)
    quiet(s)
    assert s.duplicate_events == 1


# --------------------------------------------------------------------------------------------------
# oversold


def test_oversold_reopened_after_stock_released():
    """Closed with its stock released, then revived by a late payment: oversold until closed again."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl", stock_released=True)
    o.add(1900, "order.reopened", trade="A", stock_released=True)
    s = check(o)
    v = stats(s, "oversold")
    assert (v.count, v.amount_fen, v.windows) == (1, 5000, [END - 1900])
    assert s.end_states == {"resurrected_stock_released": 1}


def test_oversold_by_a_naive_order_paid_on_a_released_close():
    """order.paid on a closed order whose close released the stock is the same resurrection."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl", stock_released=True)
    o.add(1900, "order.paid", trade="A").add(2500, "order.closed", reason="reconciliation", stock_released=True)
    v = stats(check(o), "oversold")
    assert (v.count, v.repaired, v.windows) == (0, 1, [600.0])


def test_oversold_near_miss_stock_held_at_close():
    """Reopened, but the close had kept the stock: nothing was sold twice."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl", stock_released=False)
    o.add(1900, "order.reopened", trade="A", stock_released=False)
    s = check(o)
    assert stats(s, "oversold").n_windows == 0
    assert s.end_states == {"paid_open": 1}


# --------------------------------------------------------------------------------------------------
# refunded_and_shipped


def _sold(route: str, shipped_at: float | None, accepted_at: float = 200.0) -> Order:
    o = Order().created().charge(10).add(11, "order.paid", trade="A")
    if shipped_at is not None:
        o.add(shipped_at, "order.shipped")
    o.add(accepted_at, "after_sales.accepted", route=route, checked="at_request")
    return o.add(accepted_at + 1, "order.refund_pending").refund(accepted_at + 5).add(accepted_at + 5, "order.refunded")


def test_refunded_and_shipped_a_cancel_accepted_after_the_goods_left():
    """The merchant accepted a cancel on a stale read after the order had shipped: refunded and gone,
    counted from the acceptance, never repaired; the buyer's money is back, so no buyer class holds it."""
    s = check(_sold("ask_merchant", shipped_at=100))
    v = stats(s, "refunded_and_shipped")
    assert (v.count, v.repaired, v.amount_fen, v.windows) == (1, 0, 5000, [END - 200])
    assert s.end_states == {"refunded_and_shipped": 1}
    only(s, "refunded_and_shipped")


def test_refunded_and_shipped_near_misses_a_cancel_before_shipping_and_a_defect_return():
    """Accepted before the goods shipped (the cancel stopped the shipment), or a refund of a shipped
    order for a defect (a return): nothing is counted."""
    before = check(_sold("ask_merchant", shipped_at=None))
    assert stats(before, "refunded_and_shipped").n_windows == 0 and before.end_states == {"paid_refunded": 1}
    defect = check(_sold("defect", shipped_at=100))
    assert stats(defect, "refunded_and_shipped").n_windows == 0 and defect.end_states == {"paid_refunded": 1}
    quiet(before)
    quiet(defect)


# --------------------------------------------------------------------------------------------------
# bnpl_double_deduction


def test_bnpl_double_deduction_deducted_and_repaid_by_hand():
    """A failing deduction, the buyer repays by hand, then a retried deduction succeeds too."""
    o = bnpl_order().add(2000, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(2001, "bnpl.deduction", agreement="A1", ok=False, attempt=1)
    o.add(3000, "bnpl.repaid", agreement="A1")
    o.add(4000, "bnpl.deduction", agreement="A1", ok=True, attempt=2)
    s = check(o)
    d = stats(s, "bnpl_double_deduction")
    assert (d.count, d.repaired, d.amount_fen, d.windows) == (1, 0, 20000, [END - 4000])


def test_bnpl_double_deduction_refunded_is_repaired():
    """The second payment refunded to the buyer (a ledger refund on the agreement) repairs it."""
    o = bnpl_order().add(2000, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(2001, "bnpl.deduction", agreement="A1", ok=True, attempt=1).add(2500, "bnpl.repaid", agreement="A1")
    o.add(2600, "ledger.txn", kind="refund", agreement="A1", txn="rb",
          postings=[{"account": "bnpl", "amount": -20000}, {"account": "user:u1", "amount": 20000}])
    d = stats(check(o), "bnpl_double_deduction")
    assert (d.count, d.repaired, d.windows) == (0, 1, [100.0])


def test_bnpl_double_deduction_near_miss_failed_then_repaid():
    """A failed deduction and one manual repayment: paid once."""
    o = bnpl_order().add(2000, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(2001, "bnpl.deduction", agreement="A1", ok=False, attempt=1).add(3000, "bnpl.repaid", agreement="A1")
    s = check(o)
    assert stats(s, "bnpl_double_deduction").n_windows == 0
    assert stats(s, "bnpl_deduction_failed").repaired == 1


def test_bnpl_one_deduction_reported_twice_is_one_payment():
    """The same successful attempt reported twice is one deduction."""
    o = bnpl_order().add(2000, "bnpl.finish_requested", agreement="A1", amount=20000)
    o.add(2001, "bnpl.deduction", agreement="A1", ok=True, attempt=1)
    o.add(2002, "bnpl.deduction", agreement="A1", ok=True, attempt=1)
    quiet(check(o))


# --------------------------------------------------------------------------------------------------
# inputs the checker used to trust too much


def test_same_ledger_txn_twice_is_one_charge():
    """A ledger line repeated (same txn id) is not a double charge."""
    o = Order().paid_flow()
    dup = dict(next(e for e in o.events if e["type"] == "ledger.txn"))
    s = check_events(o.events + [dup], CheckConfig(end=END))
    quiet(s)
    assert s.duplicate_events == 1


def test_two_charges_with_distinct_txns_are_still_a_double_charge():
    """The near miss of the above: two real debits of one trade."""
    o = Order().paid_flow().charge(50, "A", 5000)
    assert stats(check(o), "double_charge").count == 1


def test_refund_without_trade_is_attributed_to_the_charged_trade():
    """A refund line missing its 'trade' field still repairs paid_but_closed, and says it inferred it."""
    o = Order().created().charge(1790).add(1800, "order.closed", reason="ttl")
    o.add(2000, "ledger.txn", kind="refund", txn="r",
          postings=[{"account": "clearing", "amount": -5000}, {"account": "user:u1", "amount": 5000}])
    s = check(o)
    assert (stats(s, "paid_but_closed").count, stats(s, "paid_but_closed").repaired) == (0, 1)
    assert stats(s, "over_refund").n_windows == 0
    assert s.inferred == {"refund_trade_inferred": 1}


def test_refund_without_trade_on_an_order_never_charged_is_an_over_refund():
    """Nothing to attribute it to: money went out that never came in."""
    o = Order().created().add(1800, "order.closed", reason="ttl")
    o.add(2000, "ledger.txn", kind="refund", txn="r",
          postings=[{"account": "clearing", "amount": -5000}, {"account": "user:u1", "amount": 5000}])
    s = check(o)
    assert stats(s, "over_refund").count == 1
    assert s.inferred == {"refund_without_trade_unattributed": 1}
