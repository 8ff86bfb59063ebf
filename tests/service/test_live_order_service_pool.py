"""The reference checkout's order-service workers with the simulation's overload policies
(``order_service.queue_limit``, ``deadlines``, ``load_shedding``; ``sim.domain.policies`` through
``loadtests.service.runtime.Limiter``): a notification refused or dropped is answered 503
``ORDER_SERVICE_BUSY`` and changes nothing; the provider's notifier sends it again on its schedule."""

from __future__ import annotations

import json
import threading

from loadtests.service import signing

from .helpers import events_of, http, new_order, order_state, start_payment, wait_for

SLOW = {"order_service.workers": 1, "order_service.service_time": "60s"}  # 1 s of wall time at x60


def _notice(s, amount: int = 700) -> tuple[str, bytes, dict]:
    order = new_order(s, amount=amount)["order"]
    trade = start_payment(s, order)["trade"]
    raw = json.dumps({"notify_id": f"{trade}-n", "trade": trade, "order": order, "amount": amount,
                      "trade_status": "TRADE_SUCCESS", "attempt": 1}).encode()
    return order, raw, {"Content-Type": "application/json",
                        signing.HEADER: signing.sign(s.notify_secret.encode(), raw)}


def _pool(s) -> dict:
    return s.admin("checkout", "GET", "/admin/stats").json()["pools"]["order_service"]


def _hold_the_worker(s) -> threading.Thread:
    """A first notification that takes the only worker for service_time."""
    _, raw, headers = _notice(s)
    t = threading.Thread(target=lambda: http.post(s.checkout_url + "/notify", content=raw, headers=headers,
                                                   timeout=30))
    t.start()
    wait_for(lambda: _pool(s)["busy"] == 1, timeout=10, what="the first notification holding the worker")
    return t


def _refused(s, kind: str) -> None:
    order, raw, headers = _notice(s, amount=800)
    r = http.post(s.checkout_url + "/notify", content=raw, headers=headers, timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "ORDER_SERVICE_BUSY" and r.json()["overload"] == kind, r.text
    assert order_state(s, order) == "awaiting_payment"  # refused before it was read: nothing changed


def test_a_full_queue_refuses_a_notification(start):
    s = start({**SLOW, "order_service.queue_limit": 0})
    first = _hold_the_worker(s)
    _refused(s, "rejected")
    first.join()
    assert _pool(s)["rejected"] == 1 and _pool(s)["served"] == 1


def test_load_shedding_answers_at_once(start):
    s = start({**SLOW, "order_service.load_shedding": True, "order_service.shed_limit": 1})
    first = _hold_the_worker(s)
    _refused(s, "shed")
    first.join()
    assert _pool(s)["shed"] == 1


def test_a_notification_queued_past_its_callers_deadline_is_dropped(start):
    """With deadlines, a notification that waited longer than the provider's ack timeout (5 s) for the
    worker is dropped when it gets it; without them it is handled although its caller gave up."""
    s = start({**SLOW, "order_service.deadlines": True})
    first = _hold_the_worker(s)
    _refused(s, "dropped")
    first.join()
    assert _pool(s)["dropped"] == 1
    s2 = start({**SLOW, "order_service.deadlines": False}, name="no-deadlines")
    first = _hold_the_worker(s2)
    order, raw, headers = _notice(s2, amount=800)
    assert http.post(s2.checkout_url + "/notify", content=raw, headers=headers, timeout=30).status_code == 200
    first.join()
    assert order_state(s2, order) == "paid" and _pool(s2)["dropped"] == 0


def test_create_time_holds_an_order_service_worker_through_the_prepay_call(start):
    """order_service.create_time on: starting a payment takes one of order_service.workers and holds it
    for create_time (30 s model = 0.5 s wall) and while the provider creates the trade (gateway.service_time
    10 s, inside the worker's 30-s wait for the prepay, order_service.gateway_timeout), as the simulation's
    create request holds its worker for the prepay round trip. With the only worker held, a second start
    payment is refused 503 ORDER_SERVICE_BUSY (queue_limit 0) before any trade is made for it; with
    create_time off (the default) the same two start payments both get their trade."""
    slow_gateway = {"order_service.workers": 1, "order_service.queue_limit": 0, "gateway.service_time": "10s",
                    "order_service.gateway_timeout": "30s", "app.request_timeout": "30s"}
    s = start({**slow_gateway, "order_service.create_time": "30s"})
    first, second = new_order(s)["order"], new_order(s)["order"]
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(r=http.post(f"{s.checkout_url}/orders/{first}/pay", timeout=30)))
    t.start()
    wait_for(lambda: _pool(s)["busy"] == 1, timeout=10, what="the first start payment holding the worker")
    r = http.post(f"{s.checkout_url}/orders/{second}/pay", timeout=30)
    t.join()
    assert r.status_code == 503 and r.json()["code"] == "ORDER_SERVICE_BUSY", r.text
    assert r.json()["overload"] == "rejected"
    assert answer["r"].status_code == 200 and answer["r"].json()["trade"], answer["r"].text
    assert _pool(s)["rejected"] == 1
    view = http.get(f"{s.checkout_url}/orders/{second}").json()
    assert view["state"] == "awaiting_payment" and view["trades"] == [], view  # no trade made for it
    assert start_payment(s, second)["trade"]  # the buyer's retry, the worker free again

    s.set_faults({"order_service.create_time": "off"})
    a, b = new_order(s)["order"], new_order(s)["order"]
    with_pool = _pool(s)["served"]
    results: list = []
    threads = [threading.Thread(target=lambda o=o: results.append(
        http.post(f"{s.checkout_url}/orders/{o}/pay", timeout=30).status_code)) for o in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == [200, 200] and _pool(s)["served"] == with_pool  # no worker taken


def test_the_prepay_call_waits_order_service_gateway_timeout_with_create_time_on(start):
    """With order_service.create_time on, the worker waits for the provider's prepay at most
    order_service.gateway_timeout (10 s here, as the simulation's create request), not the app's own
    request timeout (60 s): a 30-s trade creation answers 502 PROVIDER_UNAVAILABLE after ~10 s and frees
    the worker; with create_time off the checkout waits app.request_timeout and gets the trade."""
    import time

    slow = {"gateway.service_time": "30s", "order_service.gateway_timeout": "10s", "app.request_timeout": "60s",
            "order_service.workers": 1}
    s = start({**slow, "order_service.create_time": "1s"}, time_scale=10.0)
    order = new_order(s)["order"]
    t0 = time.monotonic()
    r = http.post(f"{s.checkout_url}/orders/{order}/pay", timeout=30)
    waited = (time.monotonic() - t0) * 10.0  # scenario seconds
    assert r.status_code == 502 and r.json()["code"] == "PROVIDER_UNAVAILABLE", r.text
    assert 10.0 <= waited < 25.0, waited  # create_time 1 s + the 10-s prepay wait, not the provider's 30 s
    assert _pool(s)["busy"] == 0  # the worker is free again
    s.set_faults({"order_service.create_time": "off"})
    other = new_order(s)["order"]
    t0 = time.monotonic()
    r = http.post(f"{s.checkout_url}/orders/{other}/pay", timeout=30)
    assert r.status_code == 200 and r.json()["trade"], r.text
    assert (time.monotonic() - t0) * 10.0 >= 29.0  # waited the provider's 30 s (app.request_timeout 60 s)


def test_the_close_jobs_provider_calls_take_a_worker_with_job_calls_take_worker(start):
    """order_service.job_calls_take_worker (as the simulation's close job): the close job's call to close
    the trade holds one of order_service.workers while the (slow) provider answers — the pool is busy
    with no request in it — and counts as served; off (the default), the same close takes no worker."""
    base = {"order_service.workers": 1, "order_service.order_ttl": "1m", "app.request_timeout": "5m",
            "order_service.close_policy": "close_trade_then_order"}
    for take in (True, False):
        s = start({**base, "order_service.job_calls_take_worker": take}, name=f"take-{take}")
        order = new_order(s)["order"]
        assert start_payment(s, order)["trade"]
        s.set_faults({"gateway.service_time": "60s"})  # 1 s of wall time per provider request from now
        served = _pool(s)["served"]
        if take:
            wait_for(lambda: _pool(s)["busy"] == 1, timeout=15, interval=0.02, what="the close job holding the worker")
        wait_for(lambda: order_state(s, order) == "closed", timeout=15, what="the close")
        wait_for(lambda: _pool(s)["busy"] == 0, timeout=5, what="the worker free again")
        assert _pool(s)["served"] - served == (1 if take else 0), (take, _pool(s))
        assert "trade.closed" in [e["type"] for e in events_of(s, order)]
