"""A small shop written the way a merchant writes one on Alipay: Flask, SQLite, ``python-alipay-sdk``
(unmodified; pointed at a gateway by its ``_gateway`` attribute, the SDK's documented override), QR
code (``alipay.trade.precreate``) or page-pay trades, and a notify handler that verifies with the
SDK. It knows nothing of checkout-chaos but its configuration (the gateway URL and the key files,
from the environment), so ``checkout-chaos load --target`` can test it black box.

Orders live ``SHOP_ORDER_TTL`` wall seconds; a close job runs every ``SHOP_CLOSE_EVERY`` seconds and
closes expired unpaid orders, either

* ``SHOP_CLOSE=naive`` — the order is closed and nothing else: the QR code / cashier stays payable at
  Alipay, a buyer who pays it later is charged for a closed order, and the notification that comes is
  acknowledged and ignored; or
* ``SHOP_CLOSE=safe`` — the Alipay trade is queried first: paid, the order is paid; waiting for the
  buyer, it is closed at Alipay (``alipay.trade.close``) before the order; not yet opened by the buyer
  (``ACQ.TRADE_NOT_EXIST``: the link stays payable until its ``timeout_express``), the order is closed
  and a payment that still arrives for it is refunded. A trade whose payment is still being decided
  (the close is refused) is tried again at the next run.

Environment: ``ALIPAY_GATEWAY`` (``http://127.0.0.1:8801/gateway.do``), ``ALIPAY_KEY_DIR`` (holding
``app_private_key.pem`` and ``alipay_public_key.pem``), ``ALIPAY_APP_ID``, ``SHOP_PAY_MODE``
(``precreate``: answers ``qr_code`` | ``page``: ``cashier_url`` | ``form``: ``pay_form``, the HTML form), ``SHOP_TIMEOUT_EXPRESS`` (the trade's lifetime at Alipay, e.g. ``15m``;
only the safe shop sets it), ``SHOP_DB``, ``SHOP_PORT``, ``SHOP_PUBLIC_URL``.
"""

from __future__ import annotations

import html
import os
import sqlite3
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl

from alipay import AliPay
from flask import Flask, abort, jsonify, request

GATEWAY = os.environ.get("ALIPAY_GATEWAY", "https://openapi.alipay.com/gateway.do")
KEY_DIR = Path(os.environ.get("ALIPAY_KEY_DIR", "."))
APP_ID = os.environ.get("ALIPAY_APP_ID", "2021000000000001")
PAY_MODE = os.environ.get("SHOP_PAY_MODE", "precreate")
TIMEOUT_EXPRESS = os.environ.get("SHOP_TIMEOUT_EXPRESS", "")
CLOSE = os.environ.get("SHOP_CLOSE", "naive")
ORDER_TTL = float(os.environ.get("SHOP_ORDER_TTL", "900"))
CLOSE_EVERY = float(os.environ.get("SHOP_CLOSE_EVERY", "10"))
DB = os.environ.get("SHOP_DB", "shop.db")
PUBLIC_URL = os.environ.get("SHOP_PUBLIC_URL", "http://127.0.0.1:9000")

app = Flask(__name__)
_lock = threading.Lock()  # one writer at a time (SQLite), and the shop's per-order critical sections
_client: list[AliPay] = []


def alipay() -> AliPay:
    """The SDK client, made at first use (the key files appear when the gateway first starts)."""
    if not _client:
        a = AliPay(appid=APP_ID, app_notify_url=f"{PUBLIC_URL}/alipay/notify",
                   app_private_key_string=(KEY_DIR / "app_private_key.pem").read_text(),
                   alipay_public_key_string=(KEY_DIR / "alipay_public_key.pem").read_text(), sign_type="RSA2")
        a._gateway = GATEWAY  # the SDK's gateway override
        _client.append(a)
    return _client[0]


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for a shop, no fsync per commit
    return conn


def init() -> None:
    with db() as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, usr TEXT, amount INTEGER, state TEXT,"
                     " expires REAL, trade_no TEXT)")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def set_state(order: str, state: str, where: str = "awaiting_payment") -> bool:
    with _lock, db() as conn:
        return conn.execute("UPDATE orders SET state = ? WHERE id = ? AND state = ?", (state, order, where)).rowcount > 0


@app.post("/orders")
def create_order():
    body = request.get_json(force=True)
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
    extra = {"timeout_express": TIMEOUT_EXPRESS} if CLOSE == "safe" and TIMEOUT_EXPRESS else {}
    subject = f"order {order}"
    if PAY_MODE in ("page", "form"):
        query = alipay().api_alipay_trade_page_pay(subject, order, yuan(row["amount"]),
                                                   return_url=f"{PUBLIC_URL}/orders/{order}", **extra)
        if PAY_MODE == "page":
            return jsonify(order=order, out_trade_no=order, cashier_url=f"{GATEWAY}?{query}")
        # the auto-submitting form Alipay's own SDKs render for page pay (alipay-sdk-python's page_execute)
        inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in parse_qsl(query, keep_blank_values=True))
        form = (f'<form name="punchout_form" method="post" action="{html.escape(GATEWAY)}?charset=utf-8">{inputs}'
                '<input type="submit" value="立即支付" style="display:none"></form>'
                "<script>document.forms[0].submit();</script>")
        return jsonify(order=order, out_trade_no=order, pay_form=form)
    answer = alipay().api_alipay_trade_precreate(subject, order, yuan(row["amount"]), **extra)
    if answer.get("code") != "10000":
        return jsonify(code="PSP_REFUSED", psp_code=answer.get("sub_code") or answer.get("code")), 409
    return jsonify(order=order, out_trade_no=order, qr_code=answer["qr_code"])


@app.get("/orders/<order>")
def status(order: str):
    with db() as conn:
        row = conn.execute("SELECT state FROM orders WHERE id = ?", (order,)).fetchone()
    if row is None:
        abort(404)
    return jsonify(order=order, state=row["state"])


@app.post("/orders/<order>/cancel")
def cancel(order: str):
    with db() as conn:
        row = conn.execute("SELECT state FROM orders WHERE id = ?", (order,)).fetchone()
    if row is None:
        abort(404)
    if row["state"] == "awaiting_payment":
        close_one(order)
    with db() as conn:
        state = conn.execute("SELECT state FROM orders WHERE id = ?", (order,)).fetchone()["state"]
    return jsonify(order=order, state=state)


@app.post("/alipay/notify")
def notify():
    data = request.form.to_dict()
    signature = data.pop("sign", "")
    if not signature or not alipay().verify(data, signature):
        return "fail", 400
    order = data.get("out_trade_no", "")
    if data.get("trade_status") not in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        return "success"
    with db() as conn:
        row = conn.execute("SELECT state, amount FROM orders WHERE id = ?", (order,)).fetchone()
    if row is None or data.get("total_amount") != yuan(row["amount"]):
        return "success"  # not ours, or not what we asked for: nothing to do (a human looks at the log)
    if row["state"] == "awaiting_payment":
        set_state(order, "paid")
    elif row["state"] == "closed" and CLOSE == "safe":
        answer = alipay().api_alipay_trade_refund(yuan(row["amount"]), out_trade_no=order,
                                                  out_request_no=f"{order}-late")
        if answer.get("code") != "10000":
            return "fail", 500  # Alipay will notify again; the refund is retried then
        set_state(order, "refunded", where="closed")
    # naive: a payment for a closed order is acknowledged and ignored — the buyer's money stays taken
    return "success"


def close_job() -> None:
    while True:
        time.sleep(CLOSE_EVERY)
        with db() as conn:
            due = conn.execute("SELECT id FROM orders WHERE state = 'awaiting_payment' AND expires <= ?",
                               (time.time(),)).fetchall()
        for row in due:
            try:
                close_one(row["id"])
            except Exception as exc:  # a close that failed is tried again at the next run
                app.logger.warning("close of %s failed: %s", row["id"], exc)


def close_one(order: str) -> None:
    if CLOSE == "safe":
        q = alipay().api_alipay_trade_query(out_trade_no=order)
        if q.get("code") == "10000":
            if q.get("trade_status") in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                set_state(order, "paid")
                return
            if q.get("trade_status") == "WAIT_BUYER_PAY":
                closed = alipay().api_alipay_trade_close(out_trade_no=order)
                if closed.get("code") != "10000":
                    return  # being paid right now, or Alipay busy: look again at the next run
        elif q.get("sub_code") != "ACQ.TRADE_NOT_EXIST":
            return  # Alipay did not say: look again at the next run
        # TRADE_CLOSED, closed just now, or never opened by the buyer (a late payment is refunded)
    set_state(order, "closed")


if __name__ == "__main__":
    init()
    threading.Thread(target=close_job, daemon=True).start()
    app.run(host="127.0.0.1", port=int(os.environ.get("SHOP_PORT", "9000")), threaded=True)
