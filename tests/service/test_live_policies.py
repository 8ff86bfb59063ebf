"""The simulation's order-service and gateway policies, live: the lost update and the double
fulfilment without ``order_service.order_lock``, the lazy-trade race, and refunds that take time and
fail. Real processes on loopback; every anomaly is found by the checker in the live history."""

from __future__ import annotations

import time

from sim.check import CheckConfig, check_events

from .helpers import balance, events_of, http, new_order, order_state, start_payment, uid, wait_for

# The close job reads the expired order, then spends 4 scenario minutes (4 s wall) before it writes.
LOST_UPDATE = {"order_service.order_ttl": "60s", "order_service.close_write_delay": "240s",
               "order_service.close_policy": "naive", "order_service.late_payment": "ignore"}


def _now(s) -> float:
    return s.admin("checkout", "GET", "/admin/stats").json()["now"]


def _types(s, order: str) -> list[str]:
    return [e["type"] for e in events_of(s, order)]


def _checked(s, order: str):
    """The checker's judgement of ``order``, observed until now (not only until its last event)."""
    return check_events((e for e in s.history() if e.get("order") == order), CheckConfig(end=_now(s)))


def _pay_inside_the_close_window(s, lock: bool) -> tuple[str, dict]:
    s.set_faults({**LOST_UPDATE, "order_service.order_lock": lock})
    buyer = uid("buyer")
    created = new_order(s, amount=3100, user=buyer)
    order = created["order"]
    pay_url = start_payment(s, order)["pay_url"]
    # The close timer fires at expires_at and reads 'awaiting payment'; pay 20 s (scenario) after that.
    wait_for(lambda: _now(s) >= created["expires_at"] + 20, timeout=10, what="the close job's read")
    assert http.post(pay_url).json()["state"] == "succeeded"
    wait_for(lambda: "notify.received" in _types(s, order), timeout=10, what="the notification")
    # Past the close job's write (expires_at + 240 s) by a margin.
    wait_for(lambda: _now(s) >= created["expires_at"] + 300, timeout=15, what="the end of the close window")
    time.sleep(0.2)
    paid_t = next(e["t"] for e in events_of(s, order) if e["type"] == "order.paid")
    assert created["expires_at"] < paid_t < created["expires_at"] + 240  # inside the close job's window
    return order, {"buyer": buyer}


def test_lost_update_without_order_lock_and_not_with_it(services):
    """The close job read 'awaiting payment'; the notification handler marked the order paid; without
    the lock the close job's write closes it anyway — paid, acknowledged, closed, never refunded."""
    s = services
    order, who = _pay_inside_the_close_window(s, lock=False)
    types = _types(s, order)
    assert types.index("order.paid") < types.index("order.closed"), types
    assert order_state(s, order) == "closed"
    assert balance(s, f"user:{who['buyer']}") == -3100
    summary = _checked(s, order)
    assert summary.per_class["paid_but_closed"].count == 1, summary.end_states
    assert summary.end_states == {"paid_closed_unrefunded": 1}, summary.end_states

    order, _ = _pay_inside_the_close_window(s, lock=True)  # the same story, with the version check
    assert "order.closed" not in _types(s, order)
    assert order_state(s, order) == "paid"
    summary = _checked(s, order)
    assert summary.per_class["paid_but_closed"].count == 0
    assert summary.end_states == {"paid_open": 1}, summary.end_states


def _duplicated_notification(s, lock: bool) -> str:
    """Every delivery sent twice at once; each handler reads, works 30 s (scenario), then writes."""
    s.set_faults({"gateway.notify_duplicate": 1.0, "gateway.notify_ack_timeout": "5m",
                  "order_service.service_time": "30s", "order_service.order_lock": lock})
    order = new_order(s, amount=2200)["order"]
    assert http.post(start_payment(s, order)["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: _types(s, order).count("notify.received") >= 2, timeout=10, what="both deliveries handled")
    return order


def test_duplicate_notifications_fulfil_twice_without_order_lock(services):
    s = services
    order = _duplicated_notification(s, lock=False)
    assert _types(s, order).count("order.paid") == 2
    assert _shipments(s, order) == [1, 2]  # the merchant's numbered fulfilment requests, as in the simulation
    assert _checked(s, order).per_class["duplicate_fulfilment"].count == 1

    order = _duplicated_notification(s, lock=True)
    assert _types(s, order).count("order.paid") == 1
    assert _shipments(s, order) == [1]
    assert _checked(s, order).per_class["duplicate_fulfilment"].count == 0


def _shipments(s, order: str) -> list[int]:
    return [e["shipment"] for e in events_of(s, order) if e["type"] == "merchant.fulfilment"]


def test_lazy_trade_race_close_answers_no_trade_and_the_link_still_pays(services):
    """gateway.trade_creation = on_open: the pay link's trade exists once the buyer opens it. The close
    job closes the trade first (close_trade_then_order), hears 'does not exist', closes the order —
    and the buyer's later payment goes through on a closed order."""
    s = services
    s.set_faults({"gateway.trade_creation": "on_open", "order_service.order_ttl": "60s",
                  "order_service.close_policy": "close_trade_then_order", "order_service.late_payment": "ignore"})
    buyer = uid("buyer")
    order = new_order(s, amount=5600, user=buyer)["order"]
    paying = start_payment(s, order)
    trade = paying["trade"]
    assert http.get(f"{s.provider_url}/trades/{trade}").status_code == 404  # not opened: does not exist
    wait_for(lambda: order_state(s, order) == "closed", timeout=10, what="the order closed")
    assert "trade.closed" not in _types(s, order)  # the close found no trade to close
    pay = http.post(paying["pay_url"])  # the buyer opens the link later: it is created and paid
    assert pay.status_code == 200 and pay.json()["state"] == "succeeded", pay.text
    wait_for(lambda: "notify.received" in _types(s, order), timeout=10, what="the notification")
    types = _types(s, order)
    assert types.index("order.closed") < types.index("trade.created") < types.index("trade.succeeded")
    assert order_state(s, order) == "closed" and balance(s, f"user:{buyer}") == -5600
    assert _checked(s, order).per_class["paid_but_closed"].count == 1

    # The same race with time_expire = the order's expiry (order_service.pass_time_expire): the link
    # dies with the order.
    s.set_faults({"gateway.trade_creation": "on_open", "order_service.order_ttl": "60s",
                  "order_service.close_policy": "close_trade_then_order", "order_service.pass_time_expire": True})
    order = new_order(s, amount=5600)["order"]
    paying = start_payment(s, order)
    wait_for(lambda: order_state(s, order) == "closed", timeout=10, what="the order closed")
    late = http.post(paying["pay_url"])
    assert late.status_code == 409 and late.json()["code"] == "ACQ.TRADE_HAS_CLOSE", late.text

    # The same close with the trade made at once (on_order): closed at the gateway, the link is dead.
    s.set_faults({"gateway.trade_creation": "on_order", "order_service.order_ttl": "60s",
                  "order_service.close_policy": "close_trade_then_order"})
    order = new_order(s, amount=5600)["order"]
    paying = start_payment(s, order)
    wait_for(lambda: order_state(s, order) == "closed", timeout=10, what="the order closed")
    assert "trade.closed" in _types(s, order)
    assert http.post(paying["pay_url"]).status_code == 409


def _paid_order(s, amount: int, buyer: str) -> tuple[str, str]:
    order = new_order(s, amount=amount, user=buyer)["order"]
    paying = start_payment(s, order)
    assert http.post(paying["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, order) == "paid", timeout=10, what="order paid")
    return order, paying["trade"]


def test_a_refund_is_pending_until_it_lands(services):
    """gateway.refund_latency = 3m: the buyer cancels a paid order; for 3 scenario minutes the screen says
    'refund pending' and the money is still charged; then it lands and the order is refunded."""
    s = services
    s.set_faults({"gateway.refund_latency": "3m"})
    buyer = uid("buyer")
    order, trade = _paid_order(s, 4700, buyer)
    asked = _now(s)
    view = http.post(f"{s.checkout_url}/orders/{order}/cancel").json()
    assert view["state"] == "refund_pending" and view["screen"] == "refund_pending"
    time.sleep(0.5)  # 30 scenario seconds: accepted, not landed
    assert http.get(f"{s.checkout_url}/orders/{order}").json()["screen"] == "refund_pending"
    assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "succeeded"
    assert balance(s, f"user:{buyer}") == -4700
    wait_for(lambda: order_state(s, order) == "refunded", timeout=15, what="the refund landing")
    events = events_of(s, order)
    landed = next(e["t"] for e in events if e["type"] == "trade.refunded")
    assert landed - asked >= 180 - 1e-6, (asked, landed)
    types = [e["type"] for e in events]
    assert types.index("order.refund_pending") < types.index("trade.refunded") < types.index("order.refunded")
    assert balance(s, f"user:{buyer}") == 0
    assert _checked(s, order).end_states == {"paid_refunded": 1}


def test_a_failed_refund_is_retried_on_the_schedule(services):
    """Every attempt fails at first (gateway.refund_failure = 1): the checkout asks again after each gap of
    order_service.refund_retry_schedule; once the provider stops failing the next attempt lands."""
    s = services
    faults = {"gateway.refund_latency": "20s", "gateway.refund_failure": 1.0,
              "order_service.refund_retry_schedule": ["60s", "60s", "60s", "60s", "60s"]}
    s.set_faults(faults)
    buyer = uid("buyer")
    order, trade = _paid_order(s, 1900, buyer)
    http.post(f"{s.checkout_url}/orders/{order}/cancel")
    wait_for(lambda: _types(s, order).count("trade.refund_failed") >= 2, timeout=15, what="two failed attempts")
    assert order_state(s, order) == "refund_pending" and balance(s, f"user:{buyer}") == -1900
    s.set_faults({**faults, "gateway.refund_failure": 0.0})
    wait_for(lambda: order_state(s, order) == "refunded", timeout=15, what="the retried refund landing")
    events = events_of(s, order)
    failed = [e["t"] for e in events if e["type"] == "trade.refund_failed"]
    assert failed[1] - failed[0] >= 60 + 20 - 1e-6  # one schedule gap, then the attempt's own latency
    assert [e["type"] for e in events].count("trade.refunded") == 1
    assert balance(s, f"user:{buyer}") == 0
    assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "refunded"


def test_a_refund_whose_retries_are_spent_is_refund_failed(services):
    s = services
    s.set_faults({"gateway.refund_latency": "10s", "gateway.refund_failure": 1.0,
                  "order_service.refund_retry_schedule": ["30s"]})
    buyer = uid("buyer")
    order, _ = _paid_order(s, 800, buyer)
    http.post(f"{s.checkout_url}/orders/{order}/cancel")
    wait_for(lambda: "order.refund_failed" in _types(s, order), timeout=15, what="the refund given up")
    assert _types(s, order).count("trade.refund_failed") == 2
    view = http.get(f"{s.checkout_url}/orders/{order}").json()
    assert view["screen"] == "refund_failed" and balance(s, f"user:{buyer}") == -800
    assert _checked(s, order).end_states == {"paid_refund_failed": 1}


def test_a_young_trade_cannot_be_closed_until_min_close_age(services):
    """gateway.min_close_age = 5m (WeChat Pay): the close job's close of a 1-minute order's trade is
    refused as too early and tried again every minute until the trade is 5 minutes old."""
    s = services
    s.set_faults({"gateway.min_close_age": "5m", "order_service.order_ttl": "60s",
                  "order_service.close_policy": "close_trade_then_order"})
    order = new_order(s)["order"]
    paying = start_payment(s, order)
    wait_for(lambda: order_state(s, order) == "closed", timeout=15, what="the order closed")
    events = events_of(s, order)
    created = next(e["t"] for e in events if e["type"] == "trade.created")
    closed = next(e["t"] for e in events if e["type"] == "trade.closed")
    assert closed - created >= 300
    assert http.post(paying["pay_url"]).status_code == 409  # closed at the gateway in the end
    refused = http.post(f"{s.provider_url}/trades/{start_payment(s, new_order(s)['order'])['trade']}/close")
    assert refused.status_code == 409 and refused.json()["code"] == "TRADE_CLOSE_TOO_EARLY"


def test_the_order_page_is_served_by_a_lagging_replica(services):
    """order_service.read_lag = 3m: for three scenario minutes after the order is paid its page still
    says 'awaiting payment' (what the buyer's app polls), then 'paid'."""
    s = services
    s.set_faults({"order_service.read_lag": "3m"})
    order = new_order(s)["order"]
    assert http.post(start_payment(s, order)["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: "order.paid" in _types(s, order), timeout=10, what="the order paid")
    paid_t = next(e["t"] for e in events_of(s, order) if e["type"] == "order.paid")
    page = http.get(f"{s.checkout_url}/orders/{order}").json()
    if _now(s) < paid_t + 170:  # still inside the lag (unless this machine stalled for 3 s)
        assert page["state"] == "awaiting_payment" and page["screen"] == "awaiting_payment", page
    wait_for(lambda: order_state(s, order) == "paid", timeout=10, what="the replica catching up")
    assert _now(s) >= paid_t + 180 - 1e-6


def test_a_duplicated_refund_failure_is_retried_once(services):
    """Each refund notification delivered twice (gateway.notify_duplicate = 1): the second copy of a
    failure finds the retry already scheduled and does not count another failure."""
    s = services
    s.set_faults({"gateway.refund_latency": "10s", "gateway.refund_failure": 1.0, "gateway.notify_duplicate": 1.0,
                  "order_service.refund_retry_schedule": ["30s", "30s"]})
    order, _ = _paid_order(s, 900, uid("buyer"))
    http.post(f"{s.checkout_url}/orders/{order}/cancel")
    wait_for(lambda: "order.refund_failed" in _types(s, order), timeout=15, what="the refund given up")
    types = _types(s, order)
    assert types.count("trade.refund_failed") == 3  # the first attempt and both retries
    assert next(e for e in events_of(s, order) if e["type"] == "order.refund_failed")["attempts"] == 3
