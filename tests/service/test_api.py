"""The services' HTTP contract: health, OpenAPI, idempotency, close rules, admin token, bad input."""

from __future__ import annotations

import pytest

from .helpers import http, balance, new_order, new_trade, order_state, start_payment, uid, wait_for


def test_health_and_openapi(services):
    """Both services answer /healthz and describe their routes in /openapi.json."""
    for url, route in ((services.provider_url, "/trades/{trade}/pay"), (services.checkout_url, "/orders/{order}/pay")):
        assert http.get(url + "/healthz").json()["ok"] is True
        spec = http.get(url + "/openapi.json").json()
        assert spec["openapi"].startswith("3.")
        assert route in spec["paths"]
        assert "/admin/faults" in spec["paths"] and "/admin/history" in spec["paths"]


def test_create_trade_is_idempotent_and_conflicts_on_other_parameters(services):
    """Same out_trade_no + same parameters = replay (200); other parameters = 409 naming the field."""
    body = {"trade": uid("t"), "order": uid("o"), "user": "u1", "amount": 500}
    first = http.post(services.provider_url + "/trades", json=body)
    again = http.post(services.provider_url + "/trades", json=body)
    other = http.post(services.provider_url + "/trades", json={**body, "amount": 501})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert other.status_code == 409
    assert other.json()["code"] == "TRADE_PARAMS_CONFLICT" and other.json()["field"] == "trade"
    created = [e for e in services.history() if e["type"] == "trade.created" and e["trade"] == body["trade"]]
    assert len(created) == 1


def test_close_refused_once_paid(services):
    """alipay.trade.close semantics: an unpaid trade closes, a paid one answers ACQ.TRADE_HAS_SUCCESS."""
    p = services.provider_url
    paid, unpaid = new_trade(services)["trade"], new_trade(services)["trade"]
    r = http.post(f"{p}/trades/{paid}/pay")
    assert r.status_code == 200 and r.json()["state"] == "succeeded"
    refused = http.post(f"{p}/trades/{paid}/close")
    assert refused.status_code == 409 and refused.json()["code"] == "ACQ.TRADE_HAS_SUCCESS"
    closed = http.post(f"{p}/trades/{unpaid}/close")
    assert closed.status_code == 200 and closed.json()["state"] == "closed"
    late = http.post(f"{p}/trades/{unpaid}/pay")
    assert late.status_code == 409 and late.json()["code"] == "ACQ.TRADE_HAS_CLOSE"
    again = http.post(f"{p}/trades/{paid}/pay")
    assert again.status_code == 409 and again.json()["code"] == "ACQ.TRADE_HAS_SUCCESS"
    types = [e["type"] for e in services.history() if e.get("trade") == paid]
    assert types.count("ledger.txn") == 1 and "trade.close_refused" in types


def test_refund_moves_money_back_once(services):
    """A refund posts one clearing -> user transaction; repeating it changes nothing."""
    p = services.provider_url
    trade = new_trade(services, amount=800)
    assert http.post(f"{p}/trades/{trade['trade']}/pay").json()["state"] == "succeeded"
    assert balance(services, f"user:{trade['user']}") == -800
    for _ in range(2):
        r = http.post(f"{p}/trades/{trade['trade']}/refund", json={"refund_id": "rf-1"})
        assert r.status_code == 200 and r.json()["state"] == "refunded"
    assert balance(services, f"user:{trade['user']}") == 0
    assert services.admin("provider", "GET", "/admin/ledger").json()["balanced"]
    partial = http.post(f"{p}/trades/{trade['trade']}/refund", json={"amount": 1})
    assert partial.status_code == 422 and partial.json()["field"] == "amount"


def test_admin_endpoints_need_the_token(services):
    """Admin routes answer 401 without the bearer token or with a wrong one."""
    for url in (services.provider_url, services.checkout_url):
        for path in ("/admin/faults", "/admin/history", "/admin/stats"):
            assert http.get(url + path).status_code == 401
            wrong = http.get(url + path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["field"] == "Authorization"
    assert http.get(services.provider_url + "/admin/ledger").status_code == 401
    assert http.put(services.provider_url + "/admin/faults", json={"set": {}}).status_code == 401
    assert services.admin("provider", "GET", "/admin/ledger").status_code == 200


def test_faults_are_validated_and_applied(services):
    """PUT /admin/faults validates keys and values like a scenario fault window, and takes effect."""
    ok = services.admin("provider", "PUT", "/admin/faults", json={"set": {"bank.decline_probability": 1.0}})
    assert ok.status_code == 200
    assert ok.json()["effective"]["bank"]["decline_probability"] == 1.0
    trade = new_trade(services)["trade"]
    r = http.post(f"{services.provider_url}/trades/{trade}/pay")
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
    r = http.post(services.checkout_url + "/orders", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and r.json()["error"]


def test_malformed_and_unknown_get_4xx(services):
    """Malformed JSON, unknown ids, unknown routes, wrong methods, huge bodies: 4xx JSON, never 5xx."""
    c, p = services.checkout_url, services.provider_url
    bad_json = http.post(c + "/orders", content=b'{"user": "u1", "amount": ', headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422 and bad_json.json()["field"] == "body"
    assert http.get(c + "/orders/nope").json() == {"error": "no such order 'nope'", "field": "order",
                                                   "code": "ORDER_NOT_EXIST"}
    assert http.post(c + "/orders/nope/pay").status_code == 404
    assert http.post(p + "/trades/nope/pay").json()["field"] == "trade"
    assert http.post(p + "/trades/nope/close").status_code == 404
    assert http.post(p + "/bnpl/agreements/nope/finish").status_code == 404
    assert http.get(p + "/nowhere").status_code == 404
    assert http.delete(c + "/orders/x").status_code == 405
    assert http.get(p + "/trades/" + "x" * 65).status_code == 422
    big = http.post(c + "/orders", content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"})
    assert big.status_code == 413
    expiry = http.post(p + "/trades", json={"trade": uid("t"), "order": "o", "user": "u", "amount": 1,
                                             "timeout_express": "soon"})
    assert expiry.status_code == 422 and expiry.json()["field"] == "timeout_express"


def test_order_flow_and_trade_number_policy(services):
    """Start payment reuses the trade number under app.retry_trade_no=reuse; a paid order refuses more."""
    order = new_order(services)["order"]
    first = start_payment(services, order)
    again = start_payment(services, order)
    assert first["trade"] == again["trade"] == f"{order}-t0"
    own = start_payment(services, order, trade=f"{order}-mine")
    assert own["trade"] == f"{order}-mine"
    services.set_faults({"app.retry_trade_no": "new"})
    assert start_payment(services, order)["trade"] == f"{order}-t2"
    assert http.post(first["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(services, order) == "paid", what="order paid by notification")
    refused = http.post(f"{services.checkout_url}/orders/{order}/pay")
    assert refused.status_code == 409 and refused.json()["code"] == "ORDER_NOT_PAYABLE"
    cancel = http.post(f"{services.checkout_url}/orders/{order}/cancel")  # paid: the buyer gets a refund
    assert cancel.status_code == 200 and cancel.json()["state"] == "refund_pending"
    wait_for(lambda: order_state(services, order) == "refunded", what="refund of a cancelled paid order")
    assert http.get(first["pay_url"].removesuffix("/pay")).json()["state"] == "refunded"


def test_trade_lifetime_closes_an_unpaid_trade(services):
    """timeout_express (Alipay's trade lifetime): the unpaid trade closes when it runs out; paying then
    is refused with ACQ.TRADE_HAS_CLOSE."""
    trade = new_trade(services, timeout_express="30s")["trade"]  # half a second at x60
    get = lambda: http.get(f"{services.provider_url}/trades/{trade}").json()  # noqa: E731
    wait_for(lambda: get()["state"] == "closed", what="the trade's lifetime to run out")
    assert get()["reason"] == "expired"
    late = http.post(f"{services.provider_url}/trades/{trade}/pay")
    assert late.status_code == 409 and late.json()["code"] == "ACQ.TRADE_HAS_CLOSE"
