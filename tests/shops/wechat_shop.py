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

import functools
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from flask import jsonify, request
from wechatpayv3 import WeChatPay, WeChatPayType

from _common import Shop

GATEWAY = os.environ.get("WECHAT_GATEWAY", "https://api.mch.weixin.qq.com")
KEY_DIR = Path(os.environ.get("WECHAT_KEY_DIR", "."))
MCHID = os.environ.get("WECHAT_MCHID", "1900000109")
APPID = os.environ.get("WECHAT_APPID", "wxd678efh567hg6787")
SERIAL_NO = os.environ.get("WECHAT_SERIAL_NO", "")
PUBLIC_KEY_ID = os.environ.get("WECHAT_PUBLIC_KEY_ID", "")

shop = Shop(__name__, "expires REAL, prepaid INTEGER DEFAULT 0")
app, CLOSE, PUBLIC_URL = shop.app, shop.close, shop.public_url


@functools.cache
def wxpay() -> WeChatPay:
    """The SDK client, made at first use (the key files appear when the gateway first starts)."""
    w = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
                  private_key=(KEY_DIR / "merchant_private_key.pem").read_text(), cert_serial_no=SERIAL_NO,
                  appid=APPID, apiv3_key=(KEY_DIR / "apiv3_key").read_text().strip(),
                  notify_url=f"{PUBLIC_URL}/wxpay/notify",
                  public_key=(KEY_DIR / "platform_public_key.pem").read_text(), public_key_id=PUBLIC_KEY_ID)
    w._core._gate_way = GATEWAY  # the SDK's base-URL override
    return w


def answer(result: tuple[int, str]) -> tuple[int, dict]:
    code, text = result
    try:
        return code, json.loads(text) if text else {}
    except ValueError:
        return code, {}


@app.post("/orders/<order>/pay")
def pay(order: str):
    row = shop.payable(order)
    extra = {}
    if CLOSE == "safe":  # WeChat closes the order itself when ours expires (to the second, rounded up)
        expire = datetime.fromtimestamp(math.ceil(row["expires"]), timezone.utc).astimezone()
        extra["time_expire"] = expire.isoformat(timespec="seconds")
    code, body = answer(wxpay().pay(description=f"order {order}", out_trade_no=order,
                                    amount={"total": row["amount"]}, pay_type=WeChatPayType.NATIVE, **extra))
    if code != 200:
        return jsonify(code="PSP_REFUSED", psp_code=body.get("code")), 409
    with shop.lock, shop.db() as conn:
        conn.execute("UPDATE orders SET prepaid = 1 WHERE id = ?", (order,))
    return jsonify(order=order, out_trade_no=order, code_url=body["code_url"])


@app.post("/wxpay/notify")
def notify():
    result = wxpay().callback(dict(request.headers), request.get_data(as_text=True))
    if not result:  # the signature or the decryption failed: not from WeChat
        return jsonify(code="FAIL", message="signature"), 401
    resource = result.get("resource") or {}
    if result.get("event_type") != "TRANSACTION.SUCCESS" or resource.get("trade_state") != "SUCCESS":
        return "", 204
    order = resource.get("out_trade_no", "")
    row = shop.row(order, "state, amount")
    if row is None or (resource.get("amount") or {}).get("total") != row["amount"]:
        return "", 204  # not ours, or not what we asked for: nothing to do (a human looks at the log)
    if row["state"] == "awaiting_payment":
        shop.set_state(order, "paid")
    elif row["state"] == "closed" and CLOSE == "safe":
        code, _ = answer(wxpay().refund(out_refund_no=f"{order}-late", out_trade_no=order,
                                        amount={"refund": row["amount"], "total": row["amount"], "currency": "CNY"}))
        if code != 200:
            return jsonify(code="FAIL", message="refund failed"), 500  # WeChat notifies again; retried then
        shop.set_state(order, "refunded", where="closed")
    # naive: a payment for a closed order is acknowledged and ignored — the buyer's money stays taken
    return "", 204


def close_one(order: str, prepaid: bool = True) -> None:
    if CLOSE == "safe" and prepaid:
        code, q = answer(wxpay().query(out_trade_no=order))
        state = q.get("trade_state") if code == 200 else None
        if state in ("SUCCESS", "REFUND"):
            shop.set_state(order, "paid")
            return
        if state in ("NOTPAY", "PAYERROR"):
            code, _ = answer(wxpay().close(out_trade_no=order))
            if code != 204:
                return  # within WeChat's 5 minutes (INVALID_REQUEST), or being paid: look again next run
        elif state != "CLOSED" and code != 404:
            return  # USERPAYING, or WeChat did not say: look again at the next run
    shop.set_state(order, "closed")


shop.cancel_route(close_one)

if __name__ == "__main__":
    shop.serve("id, prepaid", lambda row: close_one(row["id"], bool(row["prepaid"])))
