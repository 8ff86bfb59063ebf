"""The services' HTTP contract: health, OpenAPI, idempotency, close rules, admin token, bad input."""

from __future__ import annotations

import httpx
import pytest

from .helpers import new_order, order_state, start_payment, wait_for


def test_health_and_openapi(services):
    """Both services answer /healthz and describe their routes in /openapi.json."""
    for url, route in ((services.provider_url, "/trades/{trade}/pay"), (services.checkout_url, "/orders/{order}/pay")):
        assert httpx.get(url + "/healthz").json()["ok"] is True
        spec = httpx.get(url + "/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert route in spec["paths"]
        assert "/admin/faults" in spec["paths"] and "/admin/history" in spec["paths"]


def test_create_trade_is_idempotent_and_conflicts_on_other_parameters(services):
    """Same out_trade_no + same parameters = replay (200); other parameters = 409 naming the field."""
    body = {"trade": "t-1", "order": "o-1", "user": "u1", "amount": 500}
    first = httpx.post(services.provider_url + "/trades", json=body)
    again = httpx.post(services.provider_url + "/trades", json=body)
    other = httpx.post(services.provider_url + "/trades", json={**body, "amount": 501})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert other.status_code == 409
    assert other.json()["code"] == "TRADE_PARAMS_CONFLICT" and other.json()["field"] == "trade"
    events = [e for e in services.history() if e["type"] == "trade.created"]
    assert len(events) == 1


def test_close_refused_once_paid(services):
    """alipay.trade.close semantics: an unpaid trade closes, a paid one answers ACQ.TRADE_HAS_SUCCESS."""
    p = services.provider_url
    for t in ("paid-1", "unpaid-1"):
        assert httpx.post(p + "/trades", json={"trade": t, "order": "o-" + t, "user": "u1", "amount": 300}).status_code == 201
    paid = httpx.post(p + "/trades/paid-1/pay")
    assert paid.status_code == 200 and paid.json()["state"] == "succeeded"
    refused = httpx.post(p + "/trades/paid-1/close")
    assert refused.status_code == 409 and refused.json()["code"] == "ACQ.TRADE_HAS_SUCCESS"
    closed = httpx.post(p + "/trades/unpaid-1/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    late = httpx.post(p + "/trades/unpaid-1/pay")
    assert late.status_code == 409 and late.json()["code"] == "ACQ.TRADE_HAS_CLOSE"
    again = httpx.post(p + "/trades/paid-1/pay")
    assert again.status_code == 409 and again.json()["code"] == "ACQ.TRADE_HAS_SUCCESS"
    types = [e["type"] for e in services.history() if e.get("trade") == "paid-1"]
    assert types.count("ledger.txn") == 1 and "trade.close_refused" in types


def test_refund_moves_money_back_once(services):
    """A refund posts one clearing -> user transaction; repeating it changes nothing."""
    p = services.provider_url
    httpx.post(p + "/trades", json={"trade": "r-1", "order": "o-r1", "user": "u7", "amount": 800})
    assert httpx.post(p + "/trades/r-1/pay").json()["state"] == "succeeded"
    for _ in range(2):
        r = httpx.post(p + "/trades/r-1/refund", json={"refund_id": "rf-1"})
        assert r.status_code == 200 and r.json()["state"] == "refunded"
    ledger = services.admin("provider", "GET", "/admin/ledger").json()
    assert ledger["balanced"] and ledger["balances"]["user:u7"] == 0
    assert ledger["txns"] == {"charge": 1, "refund": 1}
    partial = httpx.post(p + "/trades/r-1/refund", json={"amount": 1})
    assert partial.status_code == 422 and partial.json()["field"] == "amount"


def test_admin_endpoints_need_the_token(services):
    """Admin routes answer 401 without the bearer token or with a wrong one."""
    for url in (services.provider_url, services.checkout_url):
        for path in ("/admin/faults", "/admin/history", "/admin/stats"):
            assert httpx.get(url + path).status_code == 401
            wrong = httpx.get(url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["field"] == "Authorization"
    assert httpx.get(services.provider_url + "/admin/ledger").status_code == 401
    assert httpx.put(services.provider_url + "/admin/faults", json={"set": {}}).status_code == 401
    assert services.admin("provider", "GET", "/admin/ledger").status_code == 200


def test_faults_are_validated_and_applied(services):
    """PUT /admin/faults validates keys and values like a scenario fault window, and takes effect."""
    ok = services.admin("provider", "PUT", "/admin/faults", json={"set": {"bank.decline_probability": 1.0}})
    assert ok.status_code == 200
    assert ok.json()["effective"]["bank"]["decline_probability"] == 1.0
    p = services.provider_url
    httpx.post(p + "/trades", json={"trade": "f-1", "order": "o-f1", "user": "u1", "amount": 100})
    r = httpx.post(p + "/trades/f-1/pay")
    assert r.json()["state"] == "failed" and r.json()["reason"] == "declined"
    bad_key = services.admin("provider", "PUT", "/admin/faults", json={"set": {"bank.declin_probability": 1}})
    assert bad_key.status_code == 422 and bad_key.json()["field"] == "set.bank.declin_probability"
    assert "did you mean" in bad_key.json()["error"]
    bad_value = services.admin("provider", "PUT", "/admin/faults", json={"set": {"bank.decline_probability": 2}})
    assert bad_value.status_code == 422
    fixed = services.admin("provider", "PUT", "/admin/faults", json={"set": {"run.seed": 1}})
    assert fixed.status_code == 422 and "sections" in fixed.json()["error"]
    cleared = services.admin("provider", "PUT", "/admin/faults", json={"set": {}})
    assert cleared.json()["overrides"] == {}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"amount": 100}, "user"),
        ({"user": "u1", "amount": "100"}, "amount"),
        ({"user": "u1", "amount": -5}, "amount"),
        ({"user": "u1", "amount": 0}, "amount"),
        ({"user": "u1", "amount": 10**12}, "amount"),
        ({"user": "u1", "amount": 100.5}, "amount"),
        ({"user": "u1", "amount": 100, "method": "cash"}, "method"),
        ({"user": "bad id!", "amount": 100}, "user"),
        ([1, 2], "body"),
    ],
)
def test_bad_orders_get_4xx_naming_the_field(services, body, field):
    """Missing, wrong-typed, negative or absurd fields: 422 with {error, field}."""
    r = httpx.post(services.checkout_url + "/orders", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["error"]


def test_malformed_and_unknown_get_4xx(services):
    """Malformed JSON, unknown ids, unknown routes, wrong methods, huge bodies: 4xx JSON, never 5xx."""
    c, p = services.checkout_url, services.provider_url
    bad_json = httpx.post(c + "/orders", content=b'{"user": "u1", "amount": ', headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422 and bad_json.json()["field"] == "body"
    assert httpx.get(c + "/orders/nope").json() == {"error": "no such order 'nope'", "field": "order",
                                                   "code": "ORDER_NOT_EXIST"}
    assert httpx.post(c + "/orders/nope/pay").status_code == 404
    assert httpx.post(p + "/trades/nope/pay").json()["field"] == "trade"
    assert httpx.post(p + "/trades/nope/close").status_code == 404
    assert httpx.post(p + "/bnpl/agreements/nope/finish").status_code == 404
    assert httpx.get(p + "/nowhere").status_code == 404
    assert httpx.delete(c + "/orders/x").status_code == 405
    assert httpx.get(p + "/trades/" + "x" * 65).status_code == 422
    big = httpx.post(c + "/orders", content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    assert httpx.post(p + "/trades", json={"trade": "t", "order": "o", "user": "u", "amount": 1,
                                           "timeout_express": "soon"}).json()["field"] == "timeout_express"


def test_order_flow_and_trade_number_policy(services):
    """Start payment reuses the trade number under app.retry_trade_no=reuse; a paid order refuses more."""
    order = new_order(services)["order"]
    first = start_payment(services, order)
    again = start_payment(services, order)
    assert first["trade"] == again["trade"] == f"{order}-t0"
    own = start_payment(services, order, trade=f"{order}-mine")
    assert own["trade"] == f"{order}-mine"
    assert httpx.post(first["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(services, order) in ("paid", "shipped"), what="order paid by notification")
    refused = httpx.post(f"{services.checkout_url}/orders/{order}/pay")
    assert refused.status_code == 409 and refused.json()["code"] == "ORDER_NOT_PAYABLE"
