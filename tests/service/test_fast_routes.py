"""The fast routes ahead of FastAPI (the checkout's ``FastRoutes``, the provider's ``Front``/``FastPay``)
keep what FastAPI's stack gives every other route: malformed, undecodable or wrongly typed bodies and bad
signature headers get a 4xx JSON answer naming the field, never a 5xx; the in-flight limit and the body
deadline hold; an unexpected error is a logged 500 in the services' JSON shape, not uvicorn's bare one."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from loadtests.service import signing

from .helpers import http, new_order, order_state, start_payment, uid

JSON = {"Content-Type": "application/json"}


def _json_4xx(r: httpx.Response, status: int, field: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["field"] == field and body["error"], body
    return body


def test_a_signature_header_that_is_not_ascii_is_refused_not_a_server_error(services):
    """``X-Chaos-Signature`` bytes outside ASCII (read as latin-1): 401 naming the header — it was a 500
    (``hmac.compare_digest`` refuses non-ASCII strings) — and the order is not paid."""
    order = new_order(services, amount=701)["order"]
    trade = start_payment(services, order)["trade"]
    raw = json.dumps({"notify_id": uid("n"), "trade": trade, "order": order, "amount": 701,
                      "trade_status": "TRADE_SUCCESS", "attempt": 1}).encode()
    good = signing.sign(services.notify_secret.encode(), raw)
    for value in (f"t={int(time.time())},v1=".encode() + b"\xe9" * 64, good.encode() + b"\xff",
                  b"t=\xe9,v1=00"):
        r = http.post(services.checkout_url + "/notify", content=raw, headers={**JSON, signing.HEADER: value})
        _json_4xx(r, 401, signing.HEADER)
    assert order_state(services, order) == "awaiting_payment"
    assert http.post(services.checkout_url + "/notify", content=raw, headers={**JSON, signing.HEADER: good}).text \
        == "success"


def test_undecodable_bodies_are_a_4xx_naming_the_body(services):
    """A body that is not UTF-8, or JSON with an integer past Python's 4300 digits, on each fast route:
    400 naming ``body`` (FastAPI's own answer had ``field: null``), a signed one on ``/notify`` too."""
    s = services
    secret = s.notify_secret.encode()
    bad_utf8 = b'{"user": "\xff\xfe", "amount": 100}'
    huge = b'{"user": "u1", "amount": ' + b"9" * 5000 + b"}"
    order = new_order(s)["order"]
    for url in (s.checkout_url + "/orders", f"{s.checkout_url}/orders/{order}/pay", s.provider_url + "/trades"):
        for body in (bad_utf8, huge):
            _json_4xx(http.post(url, content=body, headers=JSON), 400, "body")
    for body in (bad_utf8, huge):
        r = http.post(s.checkout_url + "/notify", content=body,
                      headers={**JSON, signing.HEADER: signing.sign(secret, body)})
        _json_4xx(r, 400, "body")


def test_wrong_content_types_and_shapes_are_422_on_the_fast_routes(services):
    """A JSON body sent as text/plain, a form, or without a content type; a JSON array or null; a field
    of the wrong type: each fast route hands it to FastAPI, whose 422 names the field."""
    s = services
    order = new_order(s)["order"]
    trade_body = {"trade": uid("t"), "order": uid("o"), "user": "u1", "amount": 100}
    routes = ((s.checkout_url + "/orders", {"user": "u1", "amount": 100}),
              (s.provider_url + "/trades", trade_body))
    for url, good in routes:
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": ctype} if ctype else {}
            _json_4xx(http.post(url, content=json.dumps(good).encode(), headers=headers), 422, "body")
        for body in (b"[1, 2]", b"null", b'{"user": '):
            _json_4xx(http.post(url, content=body, headers=JSON), 422, "body")
        _json_4xx(http.post(url, json={**good, "amount": "100"}), 422, "amount")
    pay = f"{s.checkout_url}/orders/{order}/pay"
    _json_4xx(http.post(pay, content=b'{"trade": "x"}', headers={"Content-Type": "text/plain"}), 422, "body")
    _json_4xx(http.post(pay, json=[]), 422, "body")
    _json_4xx(http.post(pay, json={"trade": "bad id!"}), 422, "trade")
    assert order_state(s, order) == "awaiting_payment"  # none of them started a payment
    # the provider's confirm takes no body: whatever is sent, an unknown trade is its 404
    r = http.post(s.provider_url + "/trades/nope/pay", content=b"\xff{garbage", headers=JSON)
    assert _json_4xx(r, 404, "trade")["code"] == "ACQ.TRADE_NOT_EXIST"


def test_notifications_beyond_the_in_flight_limit_get_503(start):
    """``POST /notify`` on the checkout's fast route counts against ``live.max_in_flight``: beyond it,
    503 with Retry-After at once; the others are answered (404: no such order)."""
    s = start({"live.max_in_flight": 4, "order_service.service_time": "5s"}, time_scale=10, name="notify-limit")
    secret = s.notify_secret.encode()

    def notify(i: int) -> httpx.Response:
        raw = json.dumps({"notify_id": f"n{i}", "trade": f"t{i}", "order": f"nobody{i}", "amount": 1,
                          "trade_status": "TRADE_SUCCESS", "attempt": 1}).encode()
        return httpx.post(s.checkout_url + "/notify", content=raw, timeout=10,
                          headers={**JSON, signing.HEADER: signing.sign(secret, raw)})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(notify, range(16)))
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) == {404, 503} and statuses[404] >= 4, statuses
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["Retry-After"] == "1" and busy.json()["error"].startswith("overloaded")


class _Store:
    async def durable(self) -> None:
        return None


class _Svc:
    """Just what FastRoutes touches before a handler runs; ``secret`` None makes the signature check raise."""

    secret = None
    store = _Store()


def _fast_routes(body_timeout: float = 5.0):
    from loadtests.service.checkout import FastRoutes
    from loadtests.service.web import InFlightLimit

    called: list = []

    async def app(scope, receive, send):  # the FastAPI app behind: must not be reached in these cases
        called.append(scope["path"])

    return FastRoutes(app, _Svc(), InFlightLimit(app, limit=4, body_timeout=body_timeout)), called


def test_fast_route_body_deadline_is_408_and_the_request_leaves_the_count():
    """A fast route whose body never arrives: 408 after the body deadline, nothing behind it called, the
    in-flight count back to 0."""
    routes, called = _fast_routes(body_timeout=0.05)
    sent: list = []

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    async def scenario() -> None:
        for path in ("/notify", "/orders", "/orders/o1/pay"):
            scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"10")]}
            await asyncio.wait_for(routes(scope, receive, send), 5)
            assert routes.limit.in_flight == 0

    asyncio.run(scenario())
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [408, 408, 408]
    assert called == []


def test_an_unexpected_error_on_a_fast_route_is_a_json_500(caplog):
    """An error raised while a fast route prepares its handler is answered as FastAPI's handler would: a
    logged 500 ``{error, field}`` (it escaped to uvicorn, whose 500 is plain text and logs nothing of ours)."""
    routes, called = _fast_routes()
    sent: list = []
    raw = b'{"notify_id": "n"}'

    async def receive():
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/notify",
             "headers": [(b"content-length", str(len(raw)).encode()), (signing.HEADER.lower().encode(), f"t={int(time.time())},v1=00".encode())]}
    asyncio.run(routes(scope, receive, send))
    assert sent[0]["status"] == 500 and (b"content-type", b"application/json") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert body["field"] is None and body["error"].startswith("internal error")
    assert routes.limit.in_flight == 0 and called == []
    assert any("unhandled error on POST /notify" in r.getMessage() for r in caplog.records)
