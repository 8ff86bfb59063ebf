"""A small shop written the way a merchant writes one on WeChat Pay: Flask, SQLite, ``wechatpayv3``
(unmodified; pointed at a gateway by ``_core._gate_way``, the SDK's base-URL override), Native pay
(the buyer scans a ``code_url``), and a notify handler that verifies and decrypts with the SDK's
``callback()``. It knows nothing of checkout-chaos but its configuration (the merchant's ids, key
files and gateway, from the environment), so ``checkout-chaos load --target`` can test it black box.

Orders live ``SHOP_ORDER_TTL`` wall seconds; a close job runs every ``SHOP_CLOSE_EVERY`` seconds and
closes expired unpaid orders, either

* ``SHOP_CLOSE=naive`` — the order is closed and nothing else: the ``code_url`` stays payable at
  WeChat, a buyer who pays it later is charged for a closed order, and the notification that comes is
  acknowledged and ignored; or
* ``SHOP_CLOSE=safe`` — the WeChat order carries ``time_expire`` (the order's own expiry) and is
  queried first: paid, the order is paid; closed at WeChat, the order is closed; otherwise it is closed
  at WeChat before the order. WeChat refuses to close an order younger than 5 minutes
  (``INVALID_REQUEST``) and while the buyer's payment is being decided (``SYSTEM_ERROR``, or
  ``USERPAYING``): then the order stays open and the job looks again at its next run. A payment that
  still arrives for a closed order is refunded.

Environment: ``WECHAT_GATEWAY`` (``http://127.0.0.1:8801``), ``WECHAT_KEY_DIR`` (holding
``merchant_private_key.pem``, ``platform_public_key.pem`` and ``apiv3_key``), ``WECHAT_MCHID``,
``WECHAT_APPID``, ``WECHAT_SERIAL_NO``, ``WECHAT_PUBLIC_KEY_ID`` (as ``checkout-chaos serve --psp wechat``
prints them), ``SHOP_DB``, ``SHOP_PORT``, ``SHOP_PUBLIC_URL``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask, abort, jsonify, request
from wechatpayv3 import WeChatPay, WeChatPayType

GATEWAY = os.environ.get("WECHAT_GATEWAY", "https://api.mch.weixin.qq.com")
KEY_DIR = Path(os.environ.get("WECHAT_KEY_DIR", "."))
MCHID = os.environ.get("WECHAT_MCHID", "1900000109")
APPID = os.environ.get("WECHAT_APPID", "wxd678efh567hg6787")
SERIAL_NO = os.environ.get("WECHAT_SERIAL_NO", "")
PUBLIC_KEY_ID = os.environ.get("WECHAT_PUBLIC_KEY_ID", "")
CLOSE = os.environ.get("SHOP_CLOSE", "naive")
ORDER_TTL = float(os.environ.get("SHOP_ORDER_TTL", "900"))
CLOSE_EVERY = float(os.environ.get("SHOP_CLOSE_EVERY", "10"))
DB = os.environ.get("SHOP_DB", "shop.db")
PUBLIC_URL = os.environ.get("SHOP_PUBLIC_URL", "http://127.0.0.1:9000")

app = Flask(__name__)
_lock = threading.Lock()  # one writer at a time (SQLite), and the shop's per-order critical sections
_client: list[WeChatPay] = []


def wxpay() -> WeChatPay:
    """The SDK client, made at first use (the key files appear when the gateway first starts)."""
    if not _client:
        w = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
                      private_key=(KEY_DIR / "merchant_private_key.pem").read_text(), cert_serial_no=SERIAL_NO,
                      appid=APPID, apiv3_key=(KEY_DIR / "apiv3_key").read_text().strip(),
                      notify_url=f"{PUBLIC_URL}/wxpay/notify",
                      public_key=(KEY_DIR / "platform_public_key.pem").read_text(), public_key_id=PUBLIC_KEY_ID)
        w._core._gate_way = GATEWAY  # the SDK's base-URL override
        _client.append(w)
    return _client[0]


def answer(result: tuple[int, str]) -> tuple[int, dict]:
    code, text = result
    try:
        return code, json.loads(text) if text else {}
    except ValueError:
        return code, {}


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for a shop, no fsync per commit
    return conn


def init() -> None:
    with db() as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, usr TEXT, amount INTEGER, state TEXT,"
                     " expires REAL, prepaid INTEGER DEFAULT 0)")


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
    extra = {}
    if CLOSE == "safe":  # WeChat closes the order itself when ours expires (to the second, rounded up)
        expire = datetime.fromtimestamp(math.ceil(row["expires"]), timezone.utc).astimezone()
        extra["time_expire"] = expire.isoformat(timespec="seconds")
    code, body = answer(wxpay().pay(description=f"order {order}", out_trade_no=order,
                                    amount={"total": row["amount"]}, pay_type=WeChatPayType.NATIVE, **extra))
    if code != 200:
        return jsonify(code="PSP_REFUSED", psp_code=body.get("code")), 409
    with _lock, db() as conn:
        conn.execute("UPDATE orders SET prepaid = 1 WHERE id = ?", (order,))
    return jsonify(order=order, out_trade_no=order, code_url=body["code_url"])


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


@app.post("/wxpay/notify")
def notify():
    result = wxpay().callback(dict(request.headers), request.get_data(as_text=True))
    if not result:  # the signature or the decryption failed: not from WeChat
        return jsonify(code="FAIL", message="signature"), 401
    resource = result.get("resource") or {}
    if result.get("event_type") != "TRANSACTION.SUCCESS" or resource.get("trade_state") != "SUCCESS":
        return "", 204
    order = resource.get("out_trade_no", "")
    with db() as conn:
        row = conn.execute("SELECT state, amount FROM orders WHERE id = ?", (order,)).fetchone()
    if row is None or (resource.get("amount") or {}).get("total") != row["amount"]:
        return "", 204  # not ours, or not what we asked for: nothing to do (a human looks at the log)
    if row["state"] == "awaiting_payment":
        set_state(order, "paid")
    elif row["state"] == "closed" and CLOSE == "safe":
        code, _ = answer(wxpay().refund(out_refund_no=f"{order}-late", out_trade_no=order,
                                        amount={"refund": row["amount"], "total": row["amount"], "currency": "CNY"}))
        if code != 200:
            return jsonify(code="FAIL", message="refund failed"), 500  # WeChat notifies again; retried then
        set_state(order, "refunded", where="closed")
    # naive: a payment for a closed order is acknowledged and ignored — the buyer's money stays taken
    return "", 204


def close_job() -> None:
    while True:
        time.sleep(CLOSE_EVERY)
        with db() as conn:
            due = conn.execute("SELECT id, prepaid FROM orders WHERE state = 'awaiting_payment' AND expires <= ?",
                               (time.time(),)).fetchall()
        for row in due:
            try:
                close_one(row["id"], bool(row["prepaid"]))
            except Exception as exc:  # a close that failed is tried again at the next run
                app.logger.warning("close of %s failed: %s", row["id"], exc)


def close_one(order: str, prepaid: bool = True) -> None:
    if CLOSE == "safe" and prepaid:
        code, q = answer(wxpay().query(out_trade_no=order))
        state = q.get("trade_state") if code == 200 else None
        if state in ("SUCCESS", "REFUND"):
            set_state(order, "paid")
            return
        if state in ("NOTPAY", "PAYERROR"):
            code, _ = answer(wxpay().close(out_trade_no=order))
            if code != 204:
                return  # within WeChat's 5 minutes (INVALID_REQUEST), or being paid: look again next run
        elif state != "CLOSED" and code != 404:
            return  # USERPAYING, or WeChat did not say: look again at the next run
    set_state(order, "closed")


if __name__ == "__main__":
    init()
    threading.Thread(target=close_job, daemon=True).start()
    app.run(host="127.0.0.1", port=int(os.environ.get("SHOP_PORT", "9000")), threaded=True)
