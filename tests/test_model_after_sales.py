"""After-sales by order state (seed 003) in the simulation, and its pure policy in sim/domain.

A buyer's request is routed by the state the order is in when it is sent: paid, not shipped -> the
merchant may cancel and refund; shipped -> refunded only for a defect; completed -> a complaint, no
money moves. A cancel request that reaches the merchant after the shipment went out is answered on the
state the merchant checks: refused (``cancel_check = "at_answer"``) or, on its stale read from the
request (``"at_request"``), refunded although the goods are gone.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from sim.domain import after_sales
from sim.domain.after_sales import Answer, Route
from sim.domain.population import AfterSalesDraws, after_sales_stream, draw_after_sales
from sim.domain.states import OrderState
from sim.errors import ConfigError
from sim.model.model import run_replication
from sim.scenario import Scenario

O = OrderState

# Wallet and card buyers who all pay at once, every one of them asking for after-sales.
BASE = {
    "user.payment_methods": {"wallet": 0.5, "card": 0.5, "bnpl": 0.0},
    "user.abandon_probability": 0.0,
    "user.pay_delay": "10s",
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "gateway.notify_loss": 0.0,
    "user.after_sales_probability": 1.0,
    "load.arrival_rate": 0.5,
    "run.horizon": "10m",
    "run.warmup": "0s",
    "run.drain": "3d",
    "run.seed": 20261202,
}
_SEEN = ("order.paid", "order.shipped", "order.delivered", "order.completed", "order.refund_pending",
         "order.refunded", "after_sales.requested", "after_sales.accepted", "after_sales.refused", "user.complaint")


def _run(merchant: dict | None = None, **extra):
    over = {**BASE, **{k.replace("__", "."): v for k, v in extra.items()}}
    if merchant is not None:
        over["merchant.population"] = [{"name": "m1", "share": 1.0, **merchant}]
    s = Scenario().with_overrides(over)
    seq: dict[str, list[tuple]] = defaultdict(list)

    def tap(ev: dict) -> None:
        if ev["type"] in _SEEN:
            seq[ev["order"]].append((ev["type"], ev.get("reason") or ev.get("route") or ev.get("state"), ev["t"]))

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return r, seq


def _types(evs) -> list[str]:
    return [e[0] for e in evs]


# -- the pure policy ------------------------------------------------------------------------------------
def test_route_follows_seed_003_by_state():
    assert after_sales.route(O.AWAITING_PAYMENT) is Route.CANCEL
    assert after_sales.route(O.PAID) is Route.ASK_MERCHANT
    assert after_sales.route(O.SHIPPED) is Route.DEFECT_ONLY
    assert after_sales.route(O.DELIVERED) is Route.DEFECT_ONLY
    assert after_sales.route(O.COMPLETED) is Route.COMPLAINT
    for s in (O.CLOSED, O.REFUND_PENDING, O.REFUNDED):
        assert after_sales.route(s) is Route.REFUND_UNDERWAY


def test_merchant_answers_on_the_state_it_checks():
    assert after_sales.merchant_answer(O.PAID, agrees=True) is Answer.ACCEPTED
    assert after_sales.merchant_answer(O.PAID, agrees=False) is Answer.REFUSED_DECLINED
    assert after_sales.merchant_answer(O.SHIPPED, agrees=True) is Answer.REFUSED_SHIPPED
    assert after_sales.merchant_answer(O.COMPLETED, agrees=True) is Answer.REFUSED_SHIPPED
    assert after_sales.merchant_answer(O.REFUNDED, agrees=True) is Answer.NOTHING
    assert after_sales.checked_state("at_answer", O.PAID, O.SHIPPED) is O.SHIPPED
    assert after_sales.checked_state("at_request", O.PAID, O.SHIPPED) is O.PAID
    with pytest.raises(ValueError, match="cancel_check"):
        after_sales.checked_state("later", O.PAID, O.SHIPPED)
    assert after_sales.defect_answer(True) is Answer.ACCEPTED
    assert after_sales.defect_answer(False) is Answer.REFUSED_NO_DEFECT
    # refunded and shipped: only an accepted cancel on an order that had in fact shipped
    assert after_sales.refunds_shipped_goods(Route.ASK_MERCHANT, Answer.ACCEPTED, O.SHIPPED)
    assert not after_sales.refunds_shipped_goods(Route.ASK_MERCHANT, Answer.ACCEPTED, O.PAID)
    assert not after_sales.refunds_shipped_goods(Route.DEFECT_ONLY, Answer.ACCEPTED, O.SHIPPED)
    assert not after_sales.refunds_shipped_goods(Route.ASK_MERCHANT, Answer.REFUSED_SHIPPED, O.SHIPPED)


def test_after_sales_draws_are_the_same_whatever_the_probabilities():
    """Five draws in one order from the buyer's own after-sales stream: a compared setting (another
    agreement rate or defect rate) meets the same request times and answer times."""
    s = Scenario().with_overrides({"user.after_sales_probability": 0.4})
    lo = s.merchant.population[0].model_copy(update={"cancel_agree": 0.1, "defect_rate": 0.0})
    hi = s.merchant.population[0].model_copy(update={"cancel_agree": 0.9, "defect_rate": 0.5})
    asked = 0
    for i in range(1, 200):
        a = draw_after_sales(s.user, lo, after_sales_stream(7, 0, i))
        b = draw_after_sales(s.user, hi, after_sales_stream(7, 0, i))
        assert (a is None) == (b is None)
        if a is not None:
            asked += 1
            assert isinstance(a, AfterSalesDraws)
            assert (a.delay, a.answer_time) == (b.delay, b.answer_time)
            assert a.agrees <= b.agrees and a.defect <= b.defect  # the same uniform against a higher rate
    assert 40 <= asked <= 120
    assert after_sales_stream(7, 0, 3).random() == after_sales_stream(7, 0, 3).random()
    assert after_sales_stream(7, 0, 3).random() != after_sales_stream(7, 0, 4).random()
    assert after_sales_stream(7, 0, 3).random() != after_sales_stream(7, 1, 3).random()


def test_a_bad_cancel_check_names_the_field():
    with pytest.raises(ConfigError, match="cancel_check"):
        Scenario().with_overrides({"merchant.population": [{"name": "m1", "share": 1.0, "cancel_check": "later"}]})


# -- the model ------------------------------------------------------------------------------------------
def test_a_paid_unshipped_order_cancelled_by_the_merchant_is_refunded_and_never_shipped():
    r, seq = _run({"answer_time": "5m", "cancel_agree": 1.0}, merchant__ship_time="2h", user__after_sales_delay="10m")
    asked = {o: evs for o, evs in seq.items() if "after_sales.requested" in _types(evs)}
    assert len(asked) >= 100
    for o, evs in asked.items():
        t = _types(evs)
        assert ("after_sales.requested", "ask_merchant") in [e[:2] for e in evs]
        assert "after_sales.accepted" in t and t[-2:] == ["order.refund_pending", "order.refunded"], (o, t)
        assert not {"order.shipped", "order.delivered", "order.completed"} & set(t), (o, t)
    a = r.metrics["after_sales"]
    assert a["accepted"] == len(asked) and a["refunded_and_shipped"] == 0
    assert r.summary.end_states.get("paid_refunded", 0) == len(asked)


def test_a_merchant_that_refuses_ships_as_usual():
    r, seq = _run({"answer_time": "5m", "cancel_agree": 0.0}, merchant__ship_time="2h", user__after_sales_delay="10m",
                  merchant__delivery_time="1h")
    asked = [evs for evs in seq.values() if "after_sales.requested" in _types(evs)]
    assert len(asked) >= 100
    for evs in asked:
        t = _types(evs)
        assert ("after_sales.refused", "refused_declined") in [e[:2] for e in evs]
        assert "order.completed" in t and "order.refund_pending" not in t
    assert r.metrics["after_sales"]["refused_declined"] == len(asked)


def test_a_shipped_order_is_refunded_only_for_a_defect():
    r, seq = _run({"answer_time": "10m", "defect_rate": 0.3}, merchant__delivery_time="1d",
                  user__after_sales_delay="1h")
    asked = [evs for evs in seq.values() if "after_sales.requested" in _types(evs)]
    assert len(asked) >= 100
    refunded = refused = 0
    for evs in asked:
        t = _types(evs)
        assert ("after_sales.requested", "defect_only") in [e[:2] for e in evs]
        assert "order.shipped" in t and t.index("order.shipped") < t.index("after_sales.requested")
        if "after_sales.accepted" in t:
            refunded += 1
            assert t[-2:] == ["order.refund_pending", "order.refunded"] and "order.delivered" not in t
        else:
            refused += 1
            assert ("after_sales.refused", "refused_no_defect") in [e[:2] for e in evs]
            assert "order.refund_pending" not in t and "order.completed" in t
    assert 0.15 < refunded / len(asked) < 0.45, (refunded, refused)
    a = r.metrics["after_sales"]
    assert a["defect_refunds"] == refunded and a["refused_no_defect"] == refused and a["refunded_and_shipped"] == 0


def test_a_completed_order_gets_a_complaint_and_no_money_moves():
    r, seq = _run({"answer_time": "10m", "defect_rate": 1.0}, merchant__delivery_time="1h",
                  user__after_sales_delay="1d")
    asked = [evs for evs in seq.values() if "after_sales.requested" in _types(evs)]
    assert len(asked) >= 100
    for evs in asked:
        t = _types(evs)
        assert ("after_sales.requested", "complaint") in [e[:2] for e in evs] and "user.complaint" in t
        assert "order.refund_pending" not in t and "after_sales.accepted" not in t
    a = r.metrics["after_sales"]
    assert a["complaints"] == len(asked) and a["accepted"] == 0


RACE = dict(merchant__ship_time={"dist": "uniform", "low": "30m", "high": "2h"}, user__after_sales_delay="10m")
SLOW = {"answer_time": {"dist": "lognormal", "median": "1h", "p99": "6h"}}


def test_the_ship_cancel_race_arises_from_timing_and_vanishes_with_a_prompt_answer():
    """Every request is sent while the order is paid, not shipped (10 min after paying; shipping takes
    30 min to 2 h). Answered slowly, some answers come after the shipment: with a stale check the merchant
    refunds goods already gone; checking at the answer it refuses them. Answered in a minute, none races."""
    stale, seq = _run({**SLOW, "cancel_check": "at_request"}, **RACE)
    fresh, seq_fresh = _run({**SLOW, "cancel_check": "at_answer"}, **RACE)
    prompt, seq_prompt = _run({"answer_time": "1m", "cancel_check": "at_request"}, **RACE)
    a, b, c = stale.metrics["after_sales"], fresh.metrics["after_sales"], prompt.metrics["after_sales"]
    assert a["requested"] == b["requested"] == c["requested"] >= 100  # the same buyers ask (common random numbers)
    # The race: with a 1-h median answer against a 20 min – 1 h 50 min remaining ship window, a share of answers is late.
    assert 0.1 * a["requested"] <= a["refunded_and_shipped"] <= 0.9 * a["requested"], a
    assert a["refunded_and_shipped_fen"] > 0
    # The checker finds the same orders in the history alone (order.shipped before an accepted cancel).
    assert stale.summary.end_states.get("refunded_and_shipped") == a["refunded_and_shipped"]
    assert "refunded_and_shipped" not in fresh.summary.end_states and "refunded_and_shipped" not in prompt.summary.end_states
    for o, evs in seq.items():
        t = _types(evs)
        if "after_sales.accepted" in t and "order.shipped" in t:
            assert t.index("order.shipped") < t.index("after_sales.accepted")  # shipped, then refunded
            assert t[-1] == "order.refunded"  # (delivered first, if the answer came later still)
    # The same orders race when the merchant checks at its answer: it refuses them instead.
    assert b["refunded_and_shipped"] == 0 and b["refused_shipped"] == a["refunded_and_shipped"], (a, b)
    # Answered before any order ships: no race, every request is a clean cancel.
    assert c["refunded_and_shipped"] == 0 and c["accepted"] == c["requested"]
    for evs in seq_prompt.values():
        t = _types(evs)
        if "after_sales.accepted" in t:
            assert "order.shipped" not in t


def test_same_seed_same_after_sales():
    one = _run({**SLOW, "cancel_check": "at_request", "defect_rate": 0.2, "cancel_agree": 0.7}, **RACE)
    two = _run({**SLOW, "cancel_check": "at_request", "defect_rate": 0.2, "cancel_agree": 0.7}, **RACE)
    assert one[0].metrics == two[0].metrics
    assert dict(one[1]) == dict(two[1])
    assert one[0].summary.to_dict() == two[0].summary.to_dict()


def test_after_sales_off_adds_no_metrics_and_ship_time_splits_shipping_from_delivery():
    r, seq = _run(user__after_sales_probability=0.0, merchant__ship_time="30m", merchant__delivery_time="2h")
    assert "after_sales" not in r.metrics
    paid = [evs for evs in seq.values() if "order.completed" in _types(evs)]
    assert len(paid) >= 100
    for evs in paid:
        at = {e[0]: e[2] for e in evs}
        assert at["order.shipped"] - at["order.paid"] == pytest.approx(1800.0)
        assert at["order.delivered"] - at["order.shipped"] == pytest.approx(7200.0)


def test_turning_after_sales_on_leaves_every_buyers_draws_unchanged():
    """Common random numbers (issue 15 item 8): the requests and their answers are drawn from a stream of
    each buyer's own, so turning them on changes no buyer's amount, method, merchant or first pay time."""
    def firsts(p: float) -> dict:
        s = Scenario().with_overrides({**BASE, "user.after_sales_probability": p, "merchant.ship_time": "1h",
                                       "user.payment_methods": {"wallet": 0.4, "card": 0.3, "bnpl": 0.3},
                                       "merchant.population": [
                                           {"name": "m1", "share": 0.6, "answer_time": "20m"},
                                           {"name": "m2", "share": 0.4, "answer_time": "2h", "cancel_check": "at_request"}]})
        seen: dict[str, list] = {}

        def tap(ev: dict) -> None:
            if ev["type"] == "order.created":
                seen[ev["order"]] = [ev["amount"], ev["method"], ev["merchant"], ev["t"]]
            elif ev["type"] == "user.pay" and ev["attempt"] == 0:
                seen[ev["order"]].append(ev["t"])

        r = run_replication(s, 0, examples=False, tap=tap)
        return seen, r

    off, r_off = firsts(0.0)
    on, r_on = firsts(0.6)
    assert len(off) >= 250 and off == on
    assert "after_sales" not in r_off.metrics and r_on.metrics["after_sales"]["accepted"] >= 50


# -- pay-after-use (BNPL) orders ------------------------------------------------------------------------
# Every buyer pays after use; the merchant sends finish from the delivery event itself.
BNPL = {"user__payment_methods": {"wallet": 0.0, "card": 0.0, "bnpl": 1.0}, "bnpl__deduction_failure": 0.0,
        "merchant__bnpl_finish_failure": 0.0}
_BNPL_SEEN = ("bnpl.authorized", "bnpl.finish_requested", "bnpl.deduction", "bnpl.repaid", "bnpl.cancelled",
              "bnpl.compensated", "ledger.txn")


def _run_bnpl(merchant: dict, **extra):
    """As :func:`_run`, with the BNPL events and each ledger movement (kind, amount to the buyer) recorded."""
    over = {**BASE, **{k.replace("__", "."): v for k, v in {**BNPL, **extra}.items()}}
    over["merchant.population"] = [{"name": "m1", "share": 1.0, "finish": "sync", **merchant}]
    s = Scenario().with_overrides(over)
    seq: dict[str, list[tuple]] = defaultdict(list)

    def tap(ev: dict) -> None:
        if ev["type"] in _SEEN or ev["type"] in _BNPL_SEEN:
            what = ev.get("reason") or ev.get("route") or ev.get("state")
            if ev["type"] == "ledger.txn":
                what = (ev["kind"], sum(p["amount"] for p in ev["postings"] if p["account"].startswith("user:")))
            seq[ev["order"]].append((ev["type"], what, ev["t"]))

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return r, seq


def _no_anomaly(r) -> None:
    open_ = {c: (st.orders_occurred, st.orders_unresolved) for c, st in r.summary.per_class.items()
             if st.orders_occurred}
    assert not open_, open_


def _buyer_money(evs) -> int:
    return sum(e[1][1] for e in evs if e[0] == "ledger.txn")


def test_bnpl_remedy_cancels_what_is_not_collected_and_refunds_what_is():
    A = after_sales.A
    R = after_sales.BnplRemedy
    assert after_sales.bnpl_remedy(A.AUTHORIZED, False) is R.CANCEL
    assert after_sales.bnpl_remedy(A.DEDUCTING, False) is R.CANCEL  # WeChat: finished, collection pending
    assert after_sales.bnpl_remedy(A.DEDUCTING, True) is R.REFUND
    assert after_sales.bnpl_remedy(A.SETTLED, True) is R.REFUND
    assert after_sales.bnpl_remedy(A.OVERDUE, False) is R.REFUND_WHEN_PAID
    assert after_sales.bnpl_remedy(A.COMPENSATED, False) is R.REFUND_WHEN_PAID
    for s in (A.CANCELLED, A.EXPIRED):
        assert after_sales.bnpl_remedy(s, False) is R.NOTHING


def test_a_bnpl_order_cancelled_before_shipping_cancels_its_agreement_and_nothing_is_ever_deducted():
    r, seq = _run_bnpl({"answer_time": "5m", "cancel_agree": 1.0}, merchant__ship_time="2h",
                       user__after_sales_delay="10m")
    asked = {o: evs for o, evs in seq.items() if "after_sales.requested" in _types(evs)}
    assert len(asked) >= 100
    for o, evs in asked.items():
        t = _types(evs)
        assert "bnpl.authorized" in t and "after_sales.accepted" in t and "bnpl.cancelled" in t, (o, t)
        assert t[-2:] == ["order.refund_pending", "order.refunded"], (o, t)
        assert not {"order.shipped", "bnpl.finish_requested", "bnpl.deduction", "ledger.txn"} & set(t), (o, t)
    assert r.summary.end_states.get("paid_refunded", 0) == len(asked)
    _no_anomaly(r)


def test_a_defective_bnpl_order_cancelled_before_its_finish_is_never_deducted_or_reported_unfinished():
    """Delivered in 1 h, the merchant's finish 6 h after delivery; the buyer reports a defect 10 min after
    delivery and is answered in 10 min: the agreement is cancelled, the finish that comes later starts no
    deduction, and the checker counts no stuck-unfinished agreement."""
    r, seq = _run_bnpl({"answer_time": "10m", "defect_rate": 1.0}, merchant__delivery_time="1h",
                       merchant__bnpl_finish_delay="6h", user__after_sales_delay="70m")
    asked = {o: evs for o, evs in seq.items() if "after_sales.requested" in _types(evs)}
    assert len(asked) >= 100
    for o, evs in asked.items():
        t = _types(evs)
        assert ("after_sales.requested", "defect_only") in [e[:2] for e in evs], (o, t)
        assert "order.delivered" in t and "bnpl.cancelled" in t and t[-1] == "order.refunded", (o, t)
        assert "bnpl.finish_requested" not in t and "bnpl.deduction" not in t and _buyer_money(evs) == 0, (o, t)
    _no_anomaly(r)


def test_a_defective_bnpl_order_answered_after_its_deduction_is_refunded_the_collected_amount():
    """The finish goes out 5 min after delivery and is deducted at once; the defect is answered 1 h after
    the request: the money was collected, so it is refunded (not cancelled) — the buyer ends even."""
    r, seq = _run_bnpl({"answer_time": "1h", "defect_rate": 1.0}, merchant__delivery_time="1h",
                       merchant__bnpl_finish_delay="30m", user__after_sales_delay="62m")
    asked = {o: evs for o, evs in seq.items() if "after_sales.requested" in _types(evs)}
    assert len(asked) >= 100
    for o, evs in asked.items():
        t = _types(evs)
        assert t.index("after_sales.requested") < t.index("bnpl.finish_requested") < t.index("after_sales.accepted")
        assert "bnpl.cancelled" not in t and t[-1] == "order.refunded", (o, t)
        kinds = [e[1][0] for e in evs if e[0] == "ledger.txn"]
        assert kinds.count("bnpl_deduction") == 1 and kinds.count("refund") == 1, (o, kinds)
        assert _buyer_money(evs) == 0, (o, evs)
    assert r.summary.end_states.get("paid_refunded", 0) == len(asked)
    _no_anomaly(r)


def test_an_overdue_bnpl_order_returned_is_refunded_only_when_the_buyer_pays():
    """Every deduction fails; the provider compensates the merchant 1 h after the first failure and the
    buyer repays by hand a day later. A defect reported between delivery and finish and accepted after
    the compensation cannot be cancelled (the merchant was paid): the order stays refund pending until
    the buyer's repayment arrives, then it is refunded."""
    r, seq = _run_bnpl({"answer_time": "2h", "defect_rate": 1.0}, merchant__delivery_time="1h",
                       merchant__bnpl_finish_delay="10m", user__after_sales_delay="62m",
                       bnpl__deduction_failure=1.0, bnpl__compensation_after="1h", bnpl__user_repay_delay="1d",
                       bnpl__deduction_retry_schedule=["6h"])
    asked = {o: evs for o, evs in seq.items() if "after_sales.requested" in _types(evs)}
    assert len(asked) >= 100
    for o, evs in asked.items():
        t = _types(evs)
        at = {e[0]: e[2] for e in evs}
        assert at["bnpl.compensated"] < at["after_sales.accepted"] < at["order.refund_pending"] + 1e-9
        assert "bnpl.cancelled" not in t and at["bnpl.repaid"] <= at["order.refunded"], (o, t)
        assert at["order.refunded"] - at["order.refund_pending"] > 12 * 3600  # waited for the repayment
        assert _buyer_money(evs) == 0, (o, evs)
    assert r.summary.per_class["bnpl_deduction_failed"].orders_occurred >= len(asked)  # the failing deductions
    assert r.summary.per_class["bnpl_deduction_failed"].orders_unresolved == 0


def test_a_bnpl_order_cancelled_while_its_deductions_fail_stops_them():
    """Every deduction fails and the compensation is days away: a defect reported between delivery and
    finish (once the merchant completes the order, only a complaint is possible) and accepted after the first failure
    cancels the agreement (WeChat: finished, collection pending) — no more deductions, no repayment, and
    the failed deduction is not left open."""
    r, seq = _run_bnpl({"answer_time": "30m", "defect_rate": 1.0}, merchant__delivery_time="1h",
                       merchant__bnpl_finish_delay="10m", user__after_sales_delay="62m",
                       bnpl__deduction_failure=1.0, bnpl__user_repay_delay="1d",
                       bnpl__deduction_retry_schedule=["1h", "6h"])
    asked = {o: evs for o, evs in seq.items() if "after_sales.requested" in _types(evs)}
    assert len(asked) >= 100
    for o, evs in asked.items():
        t = _types(evs)
        at = {e[0]: e[2] for e in evs}
        assert "bnpl.cancelled" in t and t[-1] == "order.refunded", (o, t)
        assert all(e[2] <= at["bnpl.cancelled"] for e in evs if e[0] == "bnpl.deduction"), (o, evs)
        assert "bnpl.repaid" not in t and _buyer_money(evs) == 0, (o, t)
    assert r.summary.per_class["bnpl_deduction_failed"].orders_unresolved == 0


def test_a_refund_of_a_bnpl_order_deducted_from_the_wallet_gives_the_wallet_back_with_refund_restores():
    """bnpl.deduction_source = "wallet": ten returning buyers hold exactly one order's 100 CNY and never
    top up. Every order is defective and refunded after its deduction. With user.refund_restores the
    refund goes back to the wallet, so each buyer's next deduction is met again; without it, only the
    first deduction of each buyer succeeds and the rest fail on the empty wallet."""
    world = dict(merchant__delivery_time="1h", merchant__bnpl_finish_delay="30m", user__after_sales_delay="62m",
                 bnpl__deduction_source="wallet", user__wallet_balance=100, user__order_amount=100,
                 user__accounts=10, load__arrival_rate=0.005, run__horizon="1d", bnpl__user_repay_delay="30d",
                 bnpl__compensation_after="30d", bnpl__deduction_retry_schedule=[])
    merchant = {"answer_time": "1h", "defect_rate": 1.0}

    def outcome(**extra):
        r, seq = _run_bnpl(merchant, **world, **extra)
        ok = sum(1 for evs in seq.values() for e in evs if e[0] == "ledger.txn" and e[1][0] == "bnpl_deduction")
        tried = sum(1 for evs in seq.values() for e in evs if e[0] == "bnpl.deduction")
        return ok, tried

    kept_ok, kept_tried = outcome(user__refund_restores=False)
    back_ok, back_tried = outcome(user__refund_restores=True)
    assert kept_tried == back_tried and kept_tried > 100  # the same buyers and orders (common random numbers)
    assert kept_ok <= 10  # one 100-CNY wallet per buyer, never restored: one deduction each at most
    assert back_ok > 5 * kept_ok, (back_ok, kept_ok)  # refunded to the wallet, met again by the next order
