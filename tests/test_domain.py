"""The domain core: legal transitions, money conservation, and the policies' decisions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.domain import policies
from sim.domain.entities import Agreement, Order, Trade
from sim.domain.ledger import Ledger, UnbalancedTransaction, Txn, transfer
from sim.domain.policies import NotifyAction, Step
from sim.domain.states import (AgreementState, IllegalTransition, OrderState, TradeState, advance,
                               can_advance)

O, T, A = OrderState, TradeState, AgreementState


def test_illegal_order_transition_raises():
    """A refunded order cannot become paid again."""
    with pytest.raises(IllegalTransition):
        advance(O.REFUNDED, O.PAID)


def test_closed_order_can_be_reopened_by_late_payment():
    """closed -> paid is the litemall 'reopen' path and is legal."""
    assert can_advance(O.CLOSED, O.PAID)


def test_paid_trade_cannot_be_closed():
    """A succeeded trade refuses close (ACQ.TRADE_HAS_SUCCESS)."""
    assert not can_advance(T.SUCCEEDED, T.CLOSED)
    assert policies.gateway_close_result(T.SUCCEEDED) == "already_paid"


def test_ledger_refuses_unbalanced_and_is_idempotent():
    """Postings must sum to zero; posting the same txn id twice changes nothing."""
    ledger = Ledger()
    with pytest.raises(UnbalancedTransaction):
        ledger.post(Txn("x", "charge", (("user:1", -5), ("clearing", 4))))
    t = transfer("c1", "charge", "user:1", "clearing", 500)
    assert ledger.post(t) is True
    assert ledger.post(t) is False
    assert ledger.balance("user:1") == -500 and ledger.total() == 0


OPS = st.lists(st.tuples(st.sampled_from(["process", "succeed", "fail", "unknown", "close", "refund",
                                          "finish", "deduct", "repay", "compensate"]),
                         st.integers(0, 2)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, amounts=st.lists(st.integers(1, 10_000_000), min_size=3, max_size=3))
def test_money_is_conserved_by_every_legal_sequence(ops, amounts):
    """Whatever legal steps trades and agreements take, the ledger sums to zero and each buyer's
    balance is exactly what their succeeded-not-refunded trades and paid agreements took."""
    ledger = Ledger()
    trades = [Trade(f"t{i}", f"o{i}", f"u{i}", amounts[i], 1e9) for i in range(3)]
    ags = [Agreement(f"a{i}", f"o{i}", f"u{i}", "m", amounts[i], 1e9) for i in range(3)]
    seq = 0
    for op, i in ops:
        seq += 1
        tr, ag = trades[i], ags[i]
        try:
            if op == "process":
                tr.to(T.PROCESSING)
            elif op == "succeed":
                tr.debit(ledger, f"c{seq}")
            elif op == "fail":
                tr.to(T.FAILED)
            elif op == "unknown":
                tr.to(T.UNKNOWN)
            elif op == "close":
                tr.to(T.CLOSED)
            elif op == "refund":
                tr.refund(ledger, f"r{seq}")
            elif op == "finish":
                ag.finish()
            elif op in ("deduct", "repay"):
                if ag.state is A.AUTHORIZED or ag.paid_by_user:
                    continue
                ag.deducted(ledger, f"b{seq}", by_hand=(op == "repay"))
            elif op == "compensate":
                ag.compensate(ledger, f"k{seq}")
        except IllegalTransition:
            pass
        assert ledger.total() == 0
    for i in range(3):
        tr, ag = trades[i], ags[i]
        expected = 0
        if tr.state in (T.SUCCEEDED,):
            expected -= tr.amount
        if ag.paid_by_user:
            expected -= ag.amount
        assert ledger.balance(f"user:u{i}") == expected
    # The merchant is paid at most once per agreement, by a payout or a compensation.
    assert ledger.balance("merchant:m") == sum(a.amount for a in ags if a.merchant_paid)


def test_close_policies_first_steps():
    """naive closes, query_then_close asks first, close_trade_then_order closes the trade first."""
    assert policies.on_order_expiry("naive", O.AWAITING_PAYMENT) is Step.CLOSE_ORDER
    assert policies.on_order_expiry("query_then_close", O.AWAITING_PAYMENT) is Step.QUERY_TRADE
    assert policies.on_order_expiry("close_trade_then_order", O.AWAITING_PAYMENT) is Step.CLOSE_TRADE
    assert policies.on_order_expiry("naive", O.PAID) is Step.NOTHING


@pytest.mark.parametrize("state, step", [(T.SUCCEEDED, Step.MARK_PAID), (T.CREATED, Step.CLOSE_ORDER_THEN_TRADE),
                                         (T.UNKNOWN, Step.RETRY_LATER), (None, Step.CLOSE_ORDER_THEN_TRADE)])
def test_after_query(state, step):
    """query_then_close decides from the reported trade state."""
    assert policies.after_trade_query(state) is step


@pytest.mark.parametrize("late, action", [("ignore", NotifyAction.IGNORE_LATE),
                                          ("auto_refund", NotifyAction.REFUND_LATE),
                                          ("reopen", NotifyAction.REOPEN)])
def test_late_payment_policies(late, action):
    """A payment notification for a closed order follows the late-payment policy."""
    assert policies.on_payment_notification(O.CLOSED, late, False) is action


def test_retry_trade_number_policy():
    """'reuse' keeps the trade number across retries; 'new' makes one per attempt."""
    assert policies.retry_trade_no("reuse", "o1", 1, "o1-t0") == "o1-t0"
    assert policies.retry_trade_no("new", "o1", 1, "o1-t0") == "o1-t1"
    assert policies.idempotent_create(("o1", 100), ("o1", 100)) == "replay"
    assert policies.idempotent_create(("o1", 100), ("o1", 200)) == "conflict"


def test_reconcile_classifies_long_and_short():
    """Money with a closed order is 长款 (refund); a paid order without money is 短款."""
    assert policies.reconcile(O.CLOSED, T.SUCCEEDED, "refund") == (policies.ReconKind.LONG, "refund")
    assert policies.reconcile(O.CLOSED, T.SUCCEEDED, "fill_order") == (policies.ReconKind.LONG, "fill_order")
    assert policies.reconcile(O.PAID, T.CREATED, "refund") == (policies.ReconKind.SHORT, "report")
    assert policies.reconcile(O.PAID, T.SUCCEEDED, "refund") == (None, None)


def test_order_entity_close_then_reopen():
    """Order.close records the reason and whether stock was released."""
    o = Order("o1", "u1", "m1", 100, "wallet", 0.0, 900.0)
    o.close("ttl", release_stock=True)
    assert o.state is O.CLOSED and o.stock_released and o.close_reason == "ttl"
    o.mark_paid("o1-t0")
    assert o.state is O.PAID


def test_ledger_by_kind_keeps_the_double_entry_check_in_constant_memory():
    """by_kind aggregates accounts by kind: balances per kind, total zero, no txn ids remembered."""
    ledger = Ledger(by_kind=True)
    for i in range(1000):
        ledger.post(transfer(f"c{i}", "charge", f"user:u{i}", "clearing", 100))
    assert ledger.balances == {"user": -100_000, "clearing": 100_000}
    assert ledger.total() == 0 and not ledger.seen


def test_reconcile_fills_in_an_open_order_instead_of_refunding():
    """Money for an order still awaiting payment (lost notification): fill the order in, do not refund."""
    assert policies.reconcile(O.AWAITING_PAYMENT, T.SUCCEEDED, "refund") == (policies.ReconKind.LONG, "fill_order")
    assert policies.reconcile(O.AWAITING_PAYMENT, T.SUCCEEDED, "report") == (policies.ReconKind.LONG, "report")


def test_must_reread_only_under_the_lock_and_only_when_the_row_changed():
    assert policies.must_reread(True, 3, 4) is True
    assert policies.must_reread(True, 4, 4) is False
    assert policies.must_reread(False, 3, 4) is False  # the blind write: what makes the lost update


def test_an_unlocked_writer_overwrites_a_paid_order_a_locked_one_cannot():
    o = Order("o1", "u1", "m1", 100, "wallet", 0.0, 900.0)
    read = o.version
    o.mark_paid("t1")  # the notification handler writes first
    assert o.version != read
    with pytest.raises(IllegalTransition):
        o.mark_paid("t1")  # a checked second 'paid' is refused ...
    o.mark_paid("t1", blind=True)  # ... a blind one is written (a double fulfilment follows)
    o.close("ttl", release_stock=True, blind=True)  # the close job's stale write wins
    assert o.state is O.CLOSED


def test_close_answers_for_lazy_trades_and_young_wechat_orders():
    assert policies.gateway_close_result(None) == "no_trade"  # not opened yet: the link stays payable
    assert policies.gateway_close_result(T.CREATED, age=60.0, min_close_age=300.0) == "too_early"
    assert policies.gateway_close_result(T.CREATED, age=301.0, min_close_age=300.0) == "closed"
    assert policies.gateway_close_result(T.SUCCEEDED, age=1.0, min_close_age=300.0) == "already_paid"
    assert policies.after_trade_close("too_early") is policies.Step.RETRY_LATER


def test_late_approval_and_statement_reconciliation_of_a_closed_trade():
    assert policies.on_late_approval(T.FAILED, "ignore") == "apply"
    assert policies.on_late_approval(T.CLOSED, "ignore") == "ignore"
    assert policies.on_late_approval(T.CLOSED, "reverse") == "reverse"
    assert policies.on_late_approval(T.SUCCEEDED, "reverse") == "ignore"
    # 'order closed, trade closed' agree with each other, not with a bank debit.
    assert policies.reconcile(O.CLOSED, T.CLOSED, "refund") == (policies.ReconKind.LONG, "refund")
    assert policies.reconcile(O.CLOSED, T.CLOSED, "fill_order") == (policies.ReconKind.LONG, "refund")
    assert policies.reconcile(O.CLOSED, T.CLOSED, "report") == (policies.ReconKind.LONG, "report")
    assert policies.reconcile(O.CLOSED, T.CLOSED, "refund", debit_returned=True) == (None, None)


def test_deadline_passed_with_and_without_a_margin():
    from sim.domain.policies import deadline_passed

    assert not deadline_passed(9.9, 10.0) and deadline_passed(10.0, 10.0)  # the caller gives up at 10
    assert not deadline_passed(7.9, 10.0, margin=2.0)  # 2.1 s left: enough for 2 s of work
    assert deadline_passed(8.5, 10.0, margin=2.0)  # 1.5 s left: the work could not answer in time
    assert not deadline_passed(1e9, float("inf"), margin=2.0)  # no deadline


def test_support_action_repairs_what_the_order_does_not_account_for():
    """Customer service's decision on one debit (and the buyer's reason to complain): a debit on a closed
    trade is reversed, a second charge refunded, a debit for an order not paid refunded or filled in; an
    order paid by this very debit, or money already on its way back, needs nothing."""
    from sim.domain.policies import support_action
    from sim.domain.states import OrderState as O, TradeState as T

    assert support_action(O.CLOSED, T.CLOSED, False, False) == "reverse"
    assert support_action(O.CLOSED, T.CLOSED, False, True) is None
    assert support_action(O.PAID, T.SUCCEEDED, True, False) is None
    assert support_action(O.COMPLETED, T.SUCCEEDED, False, False) == "refund"  # a second charge
    assert support_action(O.CLOSED, T.SUCCEEDED, False, False) == "refund"
    assert support_action(O.CLOSED, T.SUCCEEDED, False, False, repair="fill_order") == "fill_order"
    assert support_action(O.AWAITING_PAYMENT, T.SUCCEEDED, False, False) == "fill_order"
    assert support_action(O.REFUND_PENDING, T.SUCCEEDED, True, False) is None
    assert support_action(O.CLOSED, T.SUCCEEDED, False, True) is None
    assert support_action(O.CLOSED, T.REFUNDED, False, True) is None
    assert support_action(None, T.SUCCEEDED, False, False) is None
