"""The reference checkout paying through the Stripe face (``--psp stripe``): Checkout Sessions made by its
httpx client (``loadtests/service/psp_clients/stripe.py``), Stripe-signed webhooks, refunds through
``/v1/refunds``, and the close policies mapped onto Stripe's (a short real ``load`` run each).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import launched, reset
from .helpers import mall_runs, order_state, wait_for



@pytest.fixture(scope="module")
def shared_stripe(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from launched(tmp_path_factory, "stripe-checkout", checkout_psp="stripe")


@pytest.fixture
def stripe_checkout(shared_stripe: Any) -> Any:
    """The module's services (the checkout on Stripe), faults reset, a refund latency of 60 s (1 s wall)."""
    return reset(shared_stripe, {"gateway.refund_latency": "60s"})


def test_happy_path_session_webhook_then_pending_refund(stripe_checkout: Any) -> None:
    """Start payment makes a Checkout Session (its url is the pay_url); the buyer pays there; the signed
    checkout.session.completed webhook marks the order paid; cancel refunds through /v1/refunds, and the
    order is refunded only once the pending refund has succeeded."""
    svc = stripe_checkout
    c = svc.checkout_url
    assert httpx.post(f"{c}/orders", json={"order": "os1", "user": "u1", "amount": 2500}, timeout=10).status_code == 201
    started = httpx.post(f"{c}/orders/os1/pay", json={"trade": "os1-t0"}, timeout=10).json()
    assert started["trade"] == "os1-t0" and "/stripe/checkout/cs_test_" in started["pay_url"]
    time.sleep(1.1)  # another second: a retry must still send the very same parameters
    again = httpx.post(f"{c}/orders/os1/pay", json={"trade": "os1-t0"}, timeout=10).json()
    assert again["pay_url"] == started["pay_url"]  # the same trade number: the same session (Idempotency-Key)
    paid = httpx.post(started["pay_url"], timeout=20).json()
    assert paid["state"] == "succeeded"
    wait_for(lambda: order_state(svc, "os1") == "paid", timeout=20)
    history = svc.history()
    received = [e for e in history if e["type"] == "notify.received" and e["order"] == "os1"]
    assert received and received[0]["notify_id"].startswith("evt_") and received[0]["acked"]
    assert [e["trade"] for e in history if e["type"] == "order.paid" and e["order"] == "os1"] == ["os1-t0"]

    assert httpx.post(f"{c}/orders/os1/cancel", timeout=10).json()["state"] == "refund_pending"
    time.sleep(0.3)
    assert order_state(svc, "os1") == "refund_pending"  # the refund is pending at Stripe (60 s = 1 s wall)
    wait_for(lambda: order_state(svc, "os1") == "refunded", timeout=30)
    history = svc.history()
    pi = paid["trade"]
    assert [e["amount"] for e in history if e["type"] == "trade.refunded" and e.get("trade") == pi] == [2500]
    assert svc.admin("provider", "GET", "/admin/ledger").json()["balanced"]


def test_a_webhook_with_a_bad_signature_moves_nothing(stripe_checkout: Any) -> None:
    """A forged checkout.session.completed (wrong secret, or none) gets a 400; the order stays unpaid."""
    svc = stripe_checkout
    c = svc.checkout_url
    httpx.post(f"{c}/orders", json={"order": "os2", "user": "u2", "amount": 800}, timeout=10)
    started = httpx.post(f"{c}/orders/os2/pay", json={"trade": "os2-t0"}, timeout=10).json()
    cs = started["pay_url"].rsplit("/", 1)[1]
    body = json.dumps({"id": "evt_forged", "type": "checkout.session.completed", "data": {"object": {
        "id": cs, "client_reference_id": "os2", "amount_total": 800, "payment_status": "paid",
        "metadata": {"trade": "os2-t0"}}}}).encode()
    t = int(time.time())
    forged = hmac.new(b"whsec_not_the_secret", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    for headers in ({"Stripe-Signature": f"t={t},v1={forged}"}, {}):
        r = httpx.post(f"{c}/stripe/webhook", content=body, headers={**headers, "Content-Type": "application/json"},
                       timeout=10)
        assert r.status_code == 400, r.text
        assert "Stripe-Signature" in r.json()["error"]
    assert order_state(svc, "os2") == "awaiting_payment"


def test_a_restarted_checkout_keeps_its_sessions_and_webhook_secret(start: Any) -> None:
    """The trade -> session mapping and the endpoint's whsec_ live in the checkout's database: after a
    crash (kill -9) and restart, a session made before is still paid by its webhook, and closing works."""
    svc = start(checkout_psp="stripe")
    c = svc.checkout_url
    for order in ("os5", "os6"):
        httpx.post(f"{c}/orders", json={"order": order, "user": "u5", "amount": 700}, timeout=10)
    first = httpx.post(f"{c}/orders/os5/pay", json={"trade": "os5-t0"}, timeout=10).json()
    httpx.post(f"{c}/orders/os6/pay", json={"trade": "os6-t0"}, timeout=10)
    svc.kill("checkout")
    svc.restart("checkout")
    svc.set_faults({"order_service.close_policy": "close_trade_then_order"}, which=("checkout",))
    assert httpx.post(first["pay_url"], timeout=20).json()["state"] == "succeeded"
    wait_for(lambda: order_state(svc, "os5") == "paid", timeout=20)
    assert httpx.post(f"{c}/orders/os6/cancel", timeout=10).json()["state"] == "closed"
    assert any(e["type"] == "trade.closed" and e["order"] == "os6" for e in svc.history())  # session expired
    endpoints = [e for e in svc.history() if e["type"] == "notify.received" and e["order"] == "os5"]
    assert endpoints and endpoints[0]["acked"]


def test_a_failed_refund_is_made_again_until_it_succeeds(stripe_checkout: Any) -> None:
    """gateway.refund_failure: Stripe's refund fails when it lands; the checkout's next attempt (on its
    refund schedule) makes a new refund, which succeeds once the fault is gone; the order ends refunded
    and the buyer got the money back once."""
    svc = stripe_checkout
    svc.set_faults({"gateway.refund_latency": "20s", "gateway.refund_failure": 1.0,
                    "order_service.refund_retry_schedule": ["30s"] * 20})
    c = svc.checkout_url
    httpx.post(f"{c}/orders", json={"order": "os3", "user": "u3", "amount": 1500}, timeout=10)
    started = httpx.post(f"{c}/orders/os3/pay", json={"trade": "os3-t0"}, timeout=10).json()
    pi = httpx.post(started["pay_url"], timeout=20).json()["trade"]
    wait_for(lambda: order_state(svc, "os3") == "paid", timeout=20)
    httpx.post(f"{c}/orders/os3/cancel", timeout=10)
    wait_for(lambda: any(e["type"] == "trade.refund_failed" and e.get("trade") == pi for e in svc.history()), timeout=20)
    assert order_state(svc, "os3") == "refund_pending"
    svc.set_faults({"gateway.refund_failure": 0.0}, which=("provider",))
    wait_for(lambda: order_state(svc, "os3") == "refunded", timeout=30)
    history = svc.history()
    assert [e["amount"] for e in history if e["type"] == "trade.refunded" and e.get("trade") == pi] == [1500]
    assert svc.admin("provider", "GET", "/admin/ledger").json()["balanced"]


@pytest.mark.parametrize("policy, paid_but_closed", [("naive", True), ("query_then_close", False),
                                                     ("close_trade_then_order", False)])
def test_close_policies_on_stripe(stripe_checkout: Any, policy: str, paid_but_closed: bool) -> None:
    """The order's TTL passes before the buyer pays its Checkout Session. Naive: the session is left
    open, the late payment succeeds and the order stays closed (late payments ignored): paid but closed.
    Retrieve-then-expire and expire-first: the session is expired, the late payment is refused."""
    svc = stripe_checkout
    svc.set_faults({"order_service.order_ttl": "60s", "order_service.close_policy": policy,
                    "order_service.late_payment": "ignore"})
    c = svc.checkout_url
    order = f"os4-{policy}"
    httpx.post(f"{c}/orders", json={"order": order, "user": "u4", "amount": 990}, timeout=10)
    started = httpx.post(f"{c}/orders/{order}/pay", json={"trade": f"{order}-t0"}, timeout=10).json()
    wait_for(lambda: order_state(svc, order) == "closed", timeout=20)
    time.sleep(0.3)  # the session is expired just after (query_then_close) or before (expire-first) the close
    late = httpx.post(started["pay_url"], timeout=20)
    if paid_but_closed:
        assert late.status_code == 200 and late.json()["state"] == "succeeded", late.text
        wait_for(lambda: any(e["type"] == "notify.received" and e["order"] == order for e in svc.history()), timeout=20)
    else:
        assert late.status_code == 409 and late.json()["code"] == "ACQ.TRADE_HAS_CLOSE", late.text
    assert order_state(svc, order) == "closed"
    charged = [e for e in svc.history() if e["type"] == "trade.succeeded" and e["order"] == order]
    assert bool(charged) is paid_but_closed


@pytest.mark.slow
def test_mall_pattern_live_on_stripe_naive_vs_expire_first(tmp_path: Path) -> None:
    """A short real `load --psp stripe` of the compressed mall scenario: the reference checkout pays
    through Checkout Sessions. Naive close (the session is left open) loses money: paid_but_closed;
    expiring the session first (close_trade_then_order) finds none."""
    runs = mall_runs(tmp_path, "stripe", naive=[], safe=["--set", "order_service.close_policy=close_trade_then_order"])
    naive, safe = runs["naive"], runs["safe"]
    assert naive["live"]["harness_errors"] == 0
    assert naive["anomalies"]["paid_but_closed"]["count"] >= 1, naive["anomalies"]["paid_but_closed"]
    events = [json.loads(line) for line in (tmp_path / "naive" / "history.jsonl").read_text().splitlines()]
    assert any(e["type"] == "trade.succeeded" and e.get("trade", "").startswith("pi_") for e in events)
    assert safe["live"]["harness_errors"] == 0
    assert safe["anomalies"]["paid_but_closed"]["count"] == 0, safe["examples"].get("paid_but_closed")
    events = [json.loads(line) for line in (tmp_path / "safe" / "history.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "order.paid" for e in events) >= 1  # buyers still paid
