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

import functools
import html
import os
from pathlib import Path
from urllib.parse import parse_qsl

from alipay import AliPay
from flask import jsonify, request

from _common import Shop

GATEWAY = os.environ.get("ALIPAY_GATEWAY", "https://openapi.alipay.com/gateway.do")
KEY_DIR = Path(os.environ.get("ALIPAY_KEY_DIR", "."))
APP_ID = os.environ.get("ALIPAY_APP_ID", "2021000000000001")
PAY_MODE = os.environ.get("SHOP_PAY_MODE", "precreate")
TIMEOUT_EXPRESS = os.environ.get("SHOP_TIMEOUT_EXPRESS", "")

shop = Shop(__name__, "expires REAL, trade_no TEXT")
app, CLOSE, PUBLIC_URL = shop.app, shop.close, shop.public_url


@functools.cache
def alipay() -> AliPay:
    """The SDK client, made at first use (the key files appear when the gateway first starts)."""
    a = AliPay(appid=APP_ID, app_notify_url=f"{PUBLIC_URL}/alipay/notify",
               app_private_key_string=(KEY_DIR / "app_private_key.pem").read_text(),
               alipay_public_key_string=(KEY_DIR / "alipay_public_key.pem").read_text(), sign_type="RSA2")
    a._gateway = GATEWAY  # the SDK's gateway override
    return a


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


@app.post("/orders/<order>/pay")
def pay(order: str):
    row = shop.payable(order)
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


@app.post("/alipay/notify")
def notify():
    data = request.form.to_dict()
    signature = data.pop("sign", "")
    if not signature or not alipay().verify(data, signature):
        return "fail", 400
    order = data.get("out_trade_no", "")
    if data.get("trade_status") not in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        return "success"
    row = shop.row(order, "state, amount")
    if row is None or data.get("total_amount") != yuan(row["amount"]):
        return "success"  # not ours, or not what we asked for: nothing to do (a human looks at the log)
    if row["state"] == "awaiting_payment":
        shop.set_state(order, "paid")
    elif row["state"] == "closed" and CLOSE == "safe":
        answer = alipay().api_alipay_trade_refund(yuan(row["amount"]), out_trade_no=order,
                                                  out_request_no=f"{order}-late")
        if answer.get("code") != "10000":
            return "fail", 500  # Alipay will notify again; the refund is retried then
        shop.set_state(order, "refunded", where="closed")
    # naive: a payment for a closed order is acknowledged and ignored — the buyer's money stays taken
    return "success"


def close_one(order: str) -> None:
    if CLOSE == "safe":
        q = alipay().api_alipay_trade_query(out_trade_no=order)
        if q.get("code") == "10000":
            if q.get("trade_status") in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                shop.set_state(order, "paid")
                return
            if q.get("trade_status") == "WAIT_BUYER_PAY":
                closed = alipay().api_alipay_trade_close(out_trade_no=order)
                if closed.get("code") != "10000":
                    return  # being paid right now, or Alipay busy: look again at the next run
        elif q.get("sub_code") != "ACQ.TRADE_NOT_EXIST":
            return  # Alipay did not say: look again at the next run
        # TRADE_CLOSED, closed just now, or never opened by the buyer (a late payment is refunded)
    shop.set_state(order, "closed")


shop.cancel_route(close_one)

if __name__ == "__main__":
    shop.serve("id", lambda row: close_one(row["id"]))
