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

import os
import sqlite3
import threading
import time
from pathlib import Path

import stripe
from flask import Flask, abort, jsonify, request

API_BASE = os.environ.get("STRIPE_API_BASE", "https://api.stripe.com")
KEY_FILE = os.environ.get("STRIPE_KEY_FILE", "")
CLOSE = os.environ.get("SHOP_CLOSE", "naive")
ORDER_TTL = float(os.environ.get("SHOP_ORDER_TTL", "15"))
CLOSE_EVERY = float(os.environ.get("SHOP_CLOSE_EVERY", "2"))
DB = os.environ.get("SHOP_DB", "shop.db")
PUBLIC_URL = os.environ.get("SHOP_PUBLIC_URL", "")
PAY_MODE = os.environ.get("SHOP_PAY_MODE", "checkout")  # checkout | intent
PK_FILE = os.environ.get("STRIPE_PUBLISHABLE_KEY_FILE", "")

app = Flask(__name__)
_lock = threading.Lock()  # one writer at a time (SQLite), and the shop's per-order critical sections
_webhook_secret: list[str] = []


_client: list[stripe.StripeClient] = []


def client() -> stripe.StripeClient:
    """The SDK client, made at first use (the key file appears when the PSP first starts)."""
    if not _client:
        key = os.environ.get("STRIPE_SECRET_KEY") or "sk_test_" + Path(KEY_FILE).read_text().strip()
        _client.append(stripe.StripeClient(key, base_addresses={"api": API_BASE}, max_network_retries=2))
    return _client[0]


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def init() -> None:
    with db() as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, usr TEXT, amount INTEGER, state TEXT,"
                     " session TEXT, expires REAL, intent TEXT)")


def webhook_secret() -> str:
    """Register this shop's webhook endpoint once (at the first order: the PSP may start after us)."""
    with _lock:
        if not _webhook_secret:
            endpoint = client().v1.webhook_endpoints.create(params={
                "url": f"{PUBLIC_URL}/stripe/webhook",
                "enabled_events": ["checkout.session.completed", "payment_intent.succeeded"]})
            _webhook_secret.append(endpoint.secret)
    return _webhook_secret[0]


@app.post("/orders")
def create_order():
    body = request.get_json(force=True)
    webhook_secret()
    with _lock, db() as conn:
        conn.execute("INSERT OR IGNORE INTO orders (id, usr, amount, state, expires) VALUES (?, ?, ?, 'awaiting_payment', ?)",
                     (body["order"], body["user"], int(body["amount"]), time.time() + ORDER_TTL))
    return jsonify(order=body["order"], state="awaiting_payment"), 201


@app.post("/orders/<order>/pay")
def pay(order: str):
    with db() as conn:
        row = conn.execute("SELECT * FROM orders WHERE id = ?", (order,)).fetchone()
    if row is None:
        abort(404)
    if row["state"] != "awaiting_payment":
        return jsonify(code="ORDER_NOT_PAYABLE", state=row["state"]), 409
    if PAY_MODE == "intent":
        return pay_intent(order, row)
    session = client().v1.checkout.sessions.create(params={
        "mode": "payment", "client_reference_id": order, "metadata": {"order_id": order, "user": row["usr"]},
        "line_items": [{"quantity": 1, "price_data": {"currency": "cny", "unit_amount": row["amount"],
                                                      "product_data": {"name": f"order {order}"}}}],
        "success_url": f"{PUBLIC_URL}/orders/{order}"})
    with _lock, db() as conn:
        conn.execute("UPDATE orders SET session = ? WHERE id = ?", (session.id, order))
    return jsonify(order=order, checkout_url=session.url, session=session.id)


def pay_intent(order: str, row: sqlite3.Row):
    """A PaymentIntent per order (the same one again when the buyer comes back), confirmed by the browser."""
    if row["intent"]:
        intent = client().v1.payment_intents.retrieve(row["intent"])
    else:
        intent = client().v1.payment_intents.create(params={
            "amount": row["amount"], "currency": "cny", "metadata": {"order_id": order, "user": row["usr"]}})
        with _lock, db() as conn:
            conn.execute("UPDATE orders SET intent = ? WHERE id = ?", (intent.id, order))
    pk = "pk_test_" + Path(PK_FILE).read_text().strip()
    return jsonify(order=order, intent=intent.id, client_secret=intent.client_secret, publishable_key=pk)


@app.get("/orders/<order>")
def status(order: str):
    with db() as conn:
        row = conn.execute("SELECT state FROM orders WHERE id = ?", (order,)).fetchone()
    if row is None:
        abort(404)
    return jsonify(order=order, state=row["state"])


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
        with _lock, db() as conn:
            row = conn.execute("SELECT state FROM orders WHERE id = ?", (order,)).fetchone()
            if row is not None and row["state"] == "awaiting_payment":
                conn.execute("UPDATE orders SET state = 'paid' WHERE id = ?", (order,))
            elif row is not None and row["state"] == "closed" and CLOSE == "safe":
                client().v1.refunds.create(params={"payment_intent": intent})
                conn.execute("UPDATE orders SET state = 'refunded' WHERE id = ?", (order,))
            # naive: a payment for a closed order is ignored — the buyer's money stays taken
    return "", 200


def close_job() -> None:
    while True:
        time.sleep(CLOSE_EVERY)
        with db() as conn:
            due = conn.execute("SELECT id, session, intent FROM orders WHERE state = 'awaiting_payment' AND expires <= ?",
                               (time.time(),)).fetchall()
        for row in due:
            try:
                close_one(row["id"], row["session"], row["intent"])
            except Exception as exc:  # a close that failed is tried again at the next run
                app.logger.warning("close of %s failed: %s", row["id"], exc)


def close_one(order: str, session: str | None, intent: str | None = None) -> None:
    if CLOSE == "safe" and intent:
        try:
            client().v1.payment_intents.cancel(intent)
        except stripe.InvalidRequestError:
            if client().v1.payment_intents.retrieve(intent).status == "succeeded":
                with _lock, db() as conn:
                    conn.execute("UPDATE orders SET state = 'paid' WHERE id = ? AND state = 'awaiting_payment'", (order,))
                return
            raise  # processing, or Stripe did not say: look again at the next run
    if CLOSE == "safe" and session:
        try:
            client().v1.checkout.sessions.expire(session)
        except stripe.InvalidRequestError:
            if client().v1.checkout.sessions.retrieve(session).status == "complete":
                with _lock, db() as conn:
                    conn.execute("UPDATE orders SET state = 'paid' WHERE id = ? AND state = 'awaiting_payment'", (order,))
                return
            raise
    with _lock, db() as conn:
        conn.execute("UPDATE orders SET state = 'closed' WHERE id = ? AND state = 'awaiting_payment'", (order,))


if __name__ == "__main__":
    init()
    threading.Thread(target=close_job, daemon=True).start()
    app.run(host="127.0.0.1", port=int(os.environ.get("SHOP_PORT", "9000")), threaded=True)
