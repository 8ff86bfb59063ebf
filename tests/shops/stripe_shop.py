"""A small shop written the way a merchant writes one on Stripe: Flask, SQLite, the official ``stripe``
SDK, Checkout Sessions (or, with ``SHOP_PAY_MODE=intent``, PaymentIntents the buyer's browser confirms
with Stripe.js: the shop answers the ``client_secret`` and its publishable key) and a webhook handler. It knows nothing of checkout-chaos but its configuration
(the API base and key file, from the environment), so ``checkout-chaos load --target`` can test it
black box, as it would a team's staging checkout.

Orders live ``SHOP_ORDER_TTL`` wall seconds; a close job runs every ``SHOP_CLOSE_EVERY`` seconds and
closes expired unpaid orders, either

* ``SHOP_CLOSE=naive`` — the order is closed and nothing else (the Checkout Session stays open: a buyer
  who pays it later is charged for a closed order; the webhook arrives and the shop ignores it), or
* ``SHOP_CLOSE=safe`` — the session is expired (the PaymentIntent cancelled) first; if Stripe says it
  is already complete the order is paid, not closed; a payment that still arrives for a closed order is
  refunded.

Run: ``STRIPE_API_BASE=http://127.0.0.1:8801 STRIPE_KEY_FILE=.../psp/stripe/secret_key SHOP_PORT=9000
python tests/shops/stripe_shop.py``.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path

import stripe
from flask import jsonify, request

from _common import Shop

API_BASE = os.environ.get("STRIPE_API_BASE", "https://api.stripe.com")
KEY_FILE = os.environ.get("STRIPE_KEY_FILE", "")
PAY_MODE = os.environ.get("SHOP_PAY_MODE", "checkout")  # checkout | intent
PK_FILE = os.environ.get("STRIPE_PUBLISHABLE_KEY_FILE", "")

shop = Shop(__name__, "session TEXT, expires REAL, intent TEXT", order_ttl="15", close_every="2", public_url="",
            synchronous_normal=False)
app, CLOSE, PUBLIC_URL = shop.app, shop.close, shop.public_url
_webhook_secret: list[str] = []


@functools.cache
def client() -> stripe.StripeClient:
    """The SDK client, made at first use (the key file appears when the PSP first starts)."""
    key = os.environ.get("STRIPE_SECRET_KEY") or "sk_test_" + Path(KEY_FILE).read_text().strip()
    return stripe.StripeClient(key, base_addresses={"api": API_BASE}, max_network_retries=2)


def webhook_secret() -> str:
    """Register this shop's webhook endpoint once (at the first order: the PSP may start after us)."""
    with shop.lock:
        if not _webhook_secret:
            endpoint = client().v1.webhook_endpoints.create(params={
                "url": f"{PUBLIC_URL}/stripe/webhook",
                "enabled_events": ["checkout.session.completed", "payment_intent.succeeded"]})
            _webhook_secret.append(endpoint.secret)
    return _webhook_secret[0]


shop.before_create = webhook_secret


@app.post("/orders/<order>/pay")
def pay(order: str):
    row = shop.payable(order)
    if PAY_MODE == "intent":
        return pay_intent(order, row)
    session = client().v1.checkout.sessions.create(params={
        "mode": "payment", "client_reference_id": order, "metadata": {"order_id": order, "user": row["usr"]},
        "line_items": [{"quantity": 1, "price_data": {"currency": "cny", "unit_amount": row["amount"],
                                                      "product_data": {"name": f"order {order}"}}}],
        "success_url": f"{PUBLIC_URL}/orders/{order}"})
    with shop.lock, shop.db() as conn:
        conn.execute("UPDATE orders SET session = ? WHERE id = ?", (session.id, order))
    return jsonify(order=order, checkout_url=session.url, session=session.id)


def pay_intent(order: str, row: sqlite3.Row):
    """A PaymentIntent per order (the same one again when the buyer comes back), confirmed by the browser."""
    if row["intent"]:
        intent = client().v1.payment_intents.retrieve(row["intent"])
    else:
        intent = client().v1.payment_intents.create(params={
            "amount": row["amount"], "currency": "cny", "metadata": {"order_id": order, "user": row["usr"]}})
        with shop.lock, shop.db() as conn:
            conn.execute("UPDATE orders SET intent = ? WHERE id = ?", (intent.id, order))
    pk = "pk_test_" + Path(PK_FILE).read_text().strip()
    return jsonify(order=order, intent=intent.id, client_secret=intent.client_secret, publishable_key=pk)


@app.post("/stripe/webhook")
def webhook():
    try:
        event = stripe.Webhook.construct_event(request.get_data(), request.headers.get("Stripe-Signature", ""),
                                               webhook_secret())
    except (ValueError, stripe.SignatureVerificationError):
        return "bad signature", 400
    if event["type"] in ("checkout.session.completed", "payment_intent.succeeded"):
        obj = event["data"]["object"]
        if event["type"] == "checkout.session.completed":
            order, intent = obj["client_reference_id"], obj["payment_intent"]
        elif PAY_MODE == "intent":
            order, intent = obj["metadata"]["order_id"], obj["id"]
        else:
            return "", 200  # a Checkout payment: its checkout.session.completed says so
        with shop.lock, shop.db() as conn:
            row = conn.execute("SELECT state FROM orders WHERE id = ?", (order,)).fetchone()
            if row is not None and row["state"] == "awaiting_payment":
                conn.execute("UPDATE orders SET state = 'paid' WHERE id = ?", (order,))
            elif row is not None and row["state"] == "closed" and CLOSE == "safe":
                client().v1.refunds.create(params={"payment_intent": intent})
                conn.execute("UPDATE orders SET state = 'refunded' WHERE id = ?", (order,))
            # naive: a payment for a closed order is ignored — the buyer's money stays taken
    return "", 200


def close_one(order: str, session: str | None, intent: str | None = None) -> None:
    if CLOSE == "safe" and intent:
        try:
            client().v1.payment_intents.cancel(intent)
        except stripe.InvalidRequestError:
            if client().v1.payment_intents.retrieve(intent).status == "succeeded":
                shop.set_state(order, "paid")
                return
            raise  # processing, or Stripe did not say: look again at the next run
    if CLOSE == "safe" and session:
        try:
            client().v1.checkout.sessions.expire(session)
        except stripe.InvalidRequestError:
            if client().v1.checkout.sessions.retrieve(session).status == "complete":
                shop.set_state(order, "paid")
                return
            raise
    shop.set_state(order, "closed")


if __name__ == "__main__":
    shop.serve("id, session, intent", lambda row: close_one(row["id"], row["session"], row["intent"]))
