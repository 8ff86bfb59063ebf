"""After-sales live (seed 003, ``sim.domain.after_sales``): ``POST /orders/{id}/after-sales`` is routed by
the order's state — a paid, unshipped order goes to its merchant, who may cancel and refund it; a shipped
one is refunded only for a defect; a completed one gets a complaint and no money moves. The answer comes
``answer_time`` later, and the shipment does not wait for it: a merchant that answers on the state it
read at request time (``cancel_check = "at_request"``) refunds goods that have already left, which the
checker finds in the history (end state ``refunded_and_shipped``); one that reads the order when it
answers refuses instead."""

from __future__ import annotations

from sim.check import CheckConfig, check_events

from .helpers import events_of, http, new_order, order_state, start_payment, wait_for

QUICK = {"merchant.ship_time": "1m", "merchant.delivery_time": "1h", "gateway.refund_latency": "0s"}


def _merchant(name: str = "m1", share: float = 1.0, **profile) -> dict:
    return {"name": name, "share": share, **profile}


def _paid(s, merchant: str = "m1", method: str = "wallet") -> str:
    order = new_order(s, amount=4100, method=method, merchant=merchant)["order"]
    assert http.post(start_payment(s, order)["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, order) == "paid", timeout=10, what="the payment notification")
    return order


def _ask(s, order: str) -> dict:
    r = http.post(f"{s.checkout_url}/orders/{order}/after-sales")
    assert r.status_code == 202, r.text
    return r.json()


def _answer(s, order: str) -> dict:
    return wait_for(lambda: next((e for e in events_of(s, order) if e["type"] in ("after_sales.accepted",
                                                                               "after_sales.refused")), None),
                    timeout=15, what="the after-sales answer")


def _end_states(s, order: str) -> dict:
    now = s.admin("checkout", "GET", "/admin/stats").json()["now"]
    return check_events((e for e in s.history() if e.get("order") == order), CheckConfig(end=now)).end_states


def test_a_cancel_that_races_the_shipment_is_refunded_and_shipped_on_a_stale_check(start):
    """Asked while paid, answered 2 min later, shipped after 1 min: checked at request time the merchant
    accepts (it read 'paid'), and the order is refunded although it shipped."""
    s = start({**QUICK, "merchant.population": [_merchant(answer_time="2m", cancel_check="at_request")]})
    order = _paid(s)
    assert _ask(s, order) == {"order": order, "route": "ask_merchant", "state": "paid", "answer": "pending"}
    ans = _answer(s, order)
    assert ans["type"] == "after_sales.accepted" and ans["checked"] == "paid" and ans["state"] == "shipped"
    assert ans["shipped"] is True
    wait_for(lambda: order_state(s, order) == "refunded", timeout=10, what="the refund")
    types = [e["type"] for e in events_of(s, order)]
    assert types.index("order.shipped") < types.index("after_sales.accepted") < types.index("order.refunded")
    assert "order.delivered" not in types  # the refunded order is not delivered
    assert _end_states(s, order) == {"refunded_and_shipped": 1}


def test_the_same_race_checked_at_the_answer_is_refused(start):
    s = start({**QUICK, "merchant.population": [_merchant(answer_time="2m", cancel_check="at_answer")]})
    order = _paid(s)
    _ask(s, order)
    ans = _answer(s, order)
    assert ans["type"] == "after_sales.refused" and ans["reason"] == "refused_shipped" and ans["checked"] == "shipped"
    assert order_state(s, order) == "shipped"
    assert not [e for e in events_of(s, order) if e["type"].startswith("order.refund")]


def test_routes_by_state_defects_and_complaints(start):
    """An unshipped cancel answered before the shipment is refunded and never ships; a shipped order is
    refunded for a defect (m1: every item defective) and refused without one (m2); a completed order gets
    a complaint."""
    s = start({**QUICK, "merchant.ship_time": "10s", "merchant.delivery_time": "20s", "merchant.population": [
        _merchant("m1", 0.5, answer_time="1s", defect_rate=1.0), _merchant("m2", 0.5, answer_time="1s")]})
    # answered before it ships: accepted, refunded, never shipped
    s.set_faults({"merchant.ship_time": "10m"})
    early = _paid(s)
    _ask(s, early)
    assert _answer(s, early)["type"] == "after_sales.accepted"
    wait_for(lambda: order_state(s, early) == "refunded", timeout=10, what="the refund")
    s.set_faults({})
    shipped = {m: _paid(s, merchant=m) for m in ("m1", "m2")}
    for order in shipped.values():
        wait_for(lambda o=order: order_state(s, o) == "shipped", timeout=10, what="shipped")
        assert _ask(s, order)["route"] == "defect_only"
    defect, fine = _answer(s, shipped["m1"]), _answer(s, shipped["m2"])
    assert defect["type"] == "after_sales.accepted" and defect["route"] == "defect_only"
    assert fine["type"] == "after_sales.refused" and fine["reason"] == "refused_no_defect"
    wait_for(lambda: order_state(s, shipped["m1"]) == "refunded", timeout=10, what="the defect refund")
    wait_for(lambda: order_state(s, shipped["m2"]) == "completed", timeout=10, what="the other one completed")
    done = _ask(s, shipped["m2"])
    assert done["route"] == "complaint" and done["answer"] == "nothing"
    assert "user.complaint" in [e["type"] for e in events_of(s, shipped["m2"])]
    assert order_state(s, shipped["m2"]) == "completed"  # a complaint moves no money
    assert http.post(f"{s.checkout_url}/orders/no-such-order/after-sales").status_code == 404
    assert s.admin("provider", "GET", "/admin/ledger").json()["balanced"]


# -- pay-after-use (BNPL) orders: the agreement is cancelled while nothing is collected, else refunded --
BNPL = {"merchant.bnpl_finish_failure": 0.0, "bnpl.deduction_failure": 0.0, "bnpl.sync_lag": "1s"}


def _authorized(s, merchant: str = "m1") -> tuple[str, str]:
    order = new_order(s, amount=2300, method="bnpl", merchant=merchant)["order"]
    answer = start_payment(s, order)
    assert answer["state"] == "authorized", answer
    wait_for(lambda: "order.paid" in [e["type"] for e in events_of(s, order)], timeout=10, what="the authorization")
    agreement = next(e["agreement"] for e in events_of(s, order) if e["type"] == "bnpl.authorized")
    return order, agreement


def _buyer_money(s, order: str) -> int:
    return sum(p["amount"] for e in events_of(s, order) if e["type"] == "ledger.txn"
               for p in e["postings"] if p["account"].startswith("user:"))


def test_a_bnpl_order_cancelled_before_shipping_cancels_its_agreement(start):
    """Asked while authorized and unshipped, accepted: the agreement is cancelled (nothing was collected),
    the order refunded and never shipped, and no finish or deduction follows."""
    s = start({**QUICK, **BNPL, "merchant.ship_time": "10m", "merchant.population": [_merchant(answer_time="1s")]})
    order, agreement = _authorized(s)
    assert _ask(s, order)["route"] == "ask_merchant"
    assert _answer(s, order)["type"] == "after_sales.accepted"
    wait_for(lambda: order_state(s, order) == "refunded", timeout=10, what="the agreement's cancellation")
    types = [e["type"] for e in events_of(s, order)]
    assert "bnpl.cancelled" in types and "order.shipped" not in types and "bnpl.finish_requested" not in types
    view = http.get(f"{s.provider_url}/bnpl/agreements/{agreement}").json()
    assert view["state"] == "cancelled" and view["paid_by_user"] is False and _buyer_money(s, order) == 0
    assert _end_states(s, order) == {"paid_refunded": 1}


def test_a_defective_bnpl_order_answered_after_its_deduction_is_refunded_once(start):
    """Delivered, finished and deducted before the defect is answered: the agreement cannot be cancelled
    any more (the money was collected), so the collected amount is refunded — once, however often the
    return is asked — and the buyer ends even."""
    s = start({**QUICK, **BNPL, "merchant.ship_time": "0s", "merchant.delivery_time": "1m",
               "merchant.bnpl_finish_delay": "3m", "merchant.population": [_merchant(answer_time="5m", defect_rate=1.0)]})
    order, agreement = _authorized(s)
    wait_for(lambda: order_state(s, order) == "delivered", timeout=10, interval=0.02, what="the delivery")
    assert _ask(s, order)["route"] == "defect_only"  # before the finish, which comes 3 min after delivery
    wait_for(lambda: http.get(f"{s.provider_url}/bnpl/agreements/{agreement}").json()["paid_by_user"], timeout=15,
             what="the deduction")
    assert _answer(s, order)["type"] == "after_sales.accepted"
    wait_for(lambda: order_state(s, order) == "refunded", timeout=15, what="the refund of the deduction")
    again = http.post(f"{s.provider_url}/bnpl/agreements/{agreement}/return")
    assert again.status_code == 200 and again.json()["remedy"] == "refund" and again.json()["refunded"] is True
    kinds = [e["kind"] for e in events_of(s, order) if e["type"] == "ledger.txn"]
    assert kinds.count("bnpl_deduction") == 1 and kinds.count("refund") == 1, kinds
    assert _buyer_money(s, order) == 0
    assert _end_states(s, order) == {"paid_refunded": 1}
    assert s.admin("provider", "GET", "/admin/ledger").json()["balanced"]


def test_returning_an_agreement_the_buyer_still_owes_waits_for_their_payment(start):
    """Every deduction fails and the provider compensates the merchant: a return asked now is refused with
    the provider's own code (the buyer has not paid); once the buyer repays by hand it is a refund."""
    s = start({**QUICK, **BNPL, "merchant.ship_time": "0s", "merchant.delivery_time": "2s",
               "merchant.bnpl_finish_delay": "1s", "bnpl.deduction_failure": 1.0, "bnpl.compensation_after": "5s",
               "bnpl.user_repay_delay": "30d", "merchant.population": [_merchant(answer_time="30d")]})
    order, agreement = _authorized(s)
    wait_for(lambda: http.get(f"{s.provider_url}/bnpl/agreements/{agreement}").json()["state"] == "overdue",
             timeout=20, what="the compensation")
    r = http.post(f"{s.provider_url}/bnpl/agreements/{agreement}/return")
    assert r.status_code == 409 and r.json()["code"] == "AGREEMENT_AWAITING_PAYMENT", r.text
    assert http.post(f"{s.provider_url}/bnpl/agreements/{agreement}/repay").status_code == 200
    r = http.post(f"{s.provider_url}/bnpl/agreements/{agreement}/return")
    assert r.status_code == 200 and r.json()["remedy"] == "refund", r.text
    assert _buyer_money(s, order) == 0
    assert s.admin("provider", "GET", "/admin/ledger").json()["balanced"]
