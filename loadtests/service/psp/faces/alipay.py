"""The Alipay face: the classic open-platform gateway (``/gateway.do``) as Alipay's SDKs speak it.

* **Requests** (GET query or POST form, or both merged): the common parameters (``app_id, method,
  charset, sign_type, sign, timestamp, version, biz_content``...), verified RSA2 (SHA256withRSA,
  PKCS#1 v1.5) over every non-empty parameter but ``sign``, sorted, ``k=v`` joined by ``&``, with the
  merchant's app public key (face option ``merchant_public_key``, else the public half of a key pair
  generated in ``<data>/psp/alipay/``). Nothing is looked up or moved before the signature verifies.
* **Responses**: HTTP 200, ``{"<method>_response": {...}, "sign": "..."}``; ``sign`` is RSA2 over the
  exact bytes of the inner object with the mock's key (whose public PEM the merchant configures as its
  ``alipay_public_key``). Errors: ``code`` 40001 (missing), 40002 (invalid, bad signature), 40004 +
  ``ACQ.*`` sub-code (business), 20000 (unavailable), 10003 (the buyer is still paying).
* **Trades** map onto the core with ``trade = out_trade_no``, ``order = merchant_order_no`` (else
  ``out_trade_no``); ``trade_no`` is the mock's.
  Page/wap pay and precreate trades are *lazy*: they exist for the merchant once the buyer opens the
  cashier or scans the QR code (the buyer's side below).
* **Notifications**: form POSTs signed RSA2 over the sorted fields minus ``sign`` and ``sign_type``,
  acknowledged only by a 200 whose body is ``success``.
* **Buyer's side** (what the wallet app or browser does): ``GET /alipay/cashier/{trade_no}`` (opens the
  trade), ``POST /alipay/cashier/{trade_no}/confirm`` (pays), ``GET /alipay/qr/{trade_no}`` (the scan),
  ``GET /alipay/barcode`` (a payment code for ``alipay.trade.pay``). JSON when asked
  (``Accept: application/json``), else HTML a person can click through.
* **Pay after use** (``zhima.credit.payafteruse.*``) on the core's BNPL (authorize, finish, query).
* **The trade bill** (``alipay.data.dataservice.bill.downloadurl.query``, ``bill_type`` trade): a day's
  bill once the day is over, on the scenario calendar, as a 30-second signed ``bill_download_url``
  (``GET /alipay/bill/download``) to a zip of GBK CSV (``loadtests.service.alipay_bill``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from loadtests.service import alipay_bill as bill
from loadtests.service.psp import core as C
from loadtests.service.psp import keys
from loadtests.service.psp.faces import Face
from loadtests.service.web import MAX_AMOUNT

log = logging.getLogger("checkout_chaos.provider.alipay")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")
AMOUNT_RE = re.compile(r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$")
AUTH_CODE_RE = re.compile(r"^(2[5-9]|30)[0-9]{14,22}$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
EXPRESS_RE = re.compile(r"^([1-9][0-9]{0,5})([mhdc])$")
BEIJING = timezone(timedelta(hours=8))
DEFAULT_APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
MSG = {"10000": "Success", "10003": "order success pay inprocess", "20000": "Service Currently Unavailable",
       "40001": "Missing Required Arguments", "40002": "Invalid Arguments", "40004": "Business Failed"}
PZ = "zhima.credit.payafteruse."
BILL_METHOD = "alipay.data.dataservice.bill.downloadurl.query"
BILL_URL_TTL = 30.0  # wall seconds a bill_download_url stays valid (Alipay: 30 s)
TRADE_METHODS = ("page.pay", "wap.pay", "precreate", "create", "pay", "query", "close", "cancel", "refund",
                 "fastpay.refund.query")
METHODS = {f"alipay.trade.{m}" for m in TRADE_METHODS} | {
    PZ + "creditagreement.sign", PZ + "creditbizorder.order", PZ + "creditbizorder.finish",
    PZ + "creditbizorder.query", BILL_METHOD}
PAGE_METHODS = {"alipay.trade.page.pay", "alipay.trade.wap.pay"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS alipay_credit (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, ref TEXT NOT NULL, usr TEXT NOT NULL, created_t REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alipay_credit_ref ON alipay_credit (kind, ref);
"""


class Refusal(Exception):
    """An Alipay error answer: ``code`` (40001/40002/40004/20000/10003), ``sub_code``, ``sub_msg``."""

    def __init__(self, code: str, sub_code: str | None = None, sub_msg: str | None = None, **extra: Any) -> None:
        super().__init__(sub_msg or code)
        self.code, self.sub_code, self.sub_msg, self.extra = code, sub_code, sub_msg, extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "msg": MSG.get(self.code, "Business Failed")}
        if self.sub_code:
            out["sub_code"] = self.sub_code
        if self.sub_msg:
            out["sub_msg"] = _brace_free(self.sub_msg)
        return {**out, **self.extra}


def _brace_free(text: str) -> str:
    # python-alipay-sdk finds the signed object by counting braces, strings included: keep them out.
    return text.replace("{", "(").replace("}", ")")


def _bad(field: str, expected: str) -> Refusal:
    return Refusal("40002", "isv.invalid-parameter", f"{field}: expected {expected}")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def fen_of(value: Any, field: str) -> int:
    """Yuan as Alipay takes them (``"89.00"``; a JSON number is read as its text) -> fen."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(field, 'yuan as a string with at most two decimals, e.g. "89.00"')
    text = value if isinstance(value, str) else repr(value)
    if not AMOUNT_RE.match(text):
        raise _bad(field, 'yuan with at most two decimals, e.g. "89.00"')
    try:
        fen = int(Decimal(text) * 100)
    except InvalidOperation:
        raise _bad(field, 'yuan, e.g. "89.00"') from None
    if not 0 < fen <= MAX_AMOUNT:
        raise _bad(field, f"between 0.01 and {yuan(MAX_AMOUNT)} yuan")
    return fen


def _digits(text: str, n: int) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest(), 16) % 10 ** n).zfill(n)


class AlipayFace(Face):
    name = "alipay"
    schema = SCHEMA

    # -- keys and configuration ---------------------------------------------------------------------

    def __init__(self, core: Any, data_dir: Path, options: dict[str, Any] | None = None) -> None:
        super().__init__(core, data_dir, options)
        self.app_id = str(self.options.get("app_id", DEFAULT_APP_ID))
        self.notify_closed = bool(self.options.get("notify_closed", False))
        self.pay_wait = float(self.options.get("pay_wait_s", 5.0))  # scenario s before trade.pay answers 10003
        self.dir = keys.face_dir(data_dir, "alipay")
        self._tasks: set[asyncio.Task] = set()

    def setup(self) -> None:
        self.key, _, self.public_path = keys.rsa_key_pair(self.dir, "alipay")
        if self.options.get("merchant_public_key"):
            self.merchant_key = keys.load_public_key(Path(self.options["merchant_public_key"]))
        else:
            private, _, _ = keys.rsa_key_pair(self.dir, "app")
            self.merchant_key = private.public_key()

    def merchant_config(self, base_url: str) -> dict[str, Any]:
        gateway = f"{base_url}/gateway.do"
        mock_pub = self.dir / "alipay_public_key.pem"
        if self.options.get("merchant_public_key"):
            app_key = f"your own (the mock verifies with {self.options['merchant_public_key']})"
            app_key_expr = "open('YOUR_APP_PRIVATE_KEY.pem').read()"
        else:
            app_key = str(self.dir / "app_private_key.pem")
            app_key_expr = f"open({app_key!r}).read()"
        port = base_url.rsplit(":", 1)[-1]
        return {
            "gateway": gateway,
            "app_id": self.app_id,
            "alipay_public_key": f"{mock_pub}  (the mock's public key, PEM)",
            "app_private_key": app_key,
            "python-alipay-sdk": (f"alipay = AliPay(appid={self.app_id!r}, app_private_key_string={app_key_expr}, "
                                  f"alipay_public_key_string=open({str(mock_pub)!r}).read(), sign_type='RSA2'); "
                                  f"alipay._gateway = {gateway!r}"),
            "alipay-sdk-python": ("AlipayClientConfig().server_url = 'http://127.0.0.1/gateway.do' — the SDK drops "
                                  f"the port (WebUtils.get_http_connection): serve the provider on port 80, not {port}"),
            "buyer side": f"{base_url}/alipay/cashier/{{trade_no}} (open), .../confirm (pay), /alipay/barcode",
        }

    # -- signatures ---------------------------------------------------------------------------------

    def _sign(self, data: bytes, sign_type: str = "RSA2") -> str:
        algo = hashes.SHA1() if sign_type == "RSA" else hashes.SHA256()
        return base64.b64encode(self.key.sign(data, padding.PKCS1v15(), algo)).decode()

    def _verified(self, params: dict[str, str]) -> bool:
        content = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "sign" and v != "")
        try:
            sig = base64.b64decode(params["sign"].replace(" ", "+"), validate=True)
            algo = hashes.SHA1() if params["sign_type"] == "RSA" else hashes.SHA256()
            self.merchant_key.verify(sig, content.encode(), padding.PKCS1v15(), algo)
            return True
        except (InvalidSignature, ValueError):
            return False

    def signed_fields(self, fields: dict[str, str], sign_type: str = "RSA2") -> dict[str, str]:
        """``fields`` plus ``sign_type`` and ``sign`` the Alipay way of async messages (notifications,
        the browser's return): over the sorted fields minus ``sign`` and ``sign_type``."""
        content = "&".join(f"{k}={v}" for k, v in sorted(fields.items()) if v != "")
        return {**fields, "sign_type": sign_type, "sign": self._sign(content.encode(), sign_type)}

    def _answer(self, method: str | None, body: dict[str, Any], sign_type: str = "RSA2") -> Response:
        key = method.replace(".", "_") + "_response" if method in METHODS else "error_response"
        inner = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        raw = '{"%s":%s,"sign":"%s"}' % (key, inner, self._sign(inner.encode(), sign_type))
        return Response(raw.encode(), media_type="application/json;charset=utf-8")

    # -- time ---------------------------------------------------------------------------------------

    def _when(self, t: float | None) -> str:
        """A core time (scenario s) as Alipay shows times: Beijing wall time of that moment."""
        clock = self.core.clock
        epoch = time.time() if t is None else clock.start_epoch + t / clock.scale
        return datetime.fromtimestamp(epoch, BEIJING).strftime("%Y-%m-%d %H:%M:%S")

    def _ttl(self, biz: dict[str, Any]) -> float | None:
        """``timeout_express`` (``90m``, ``2h``, ``15d``, ``1c`` = end of today) or ``time_expire``
        (``yyyy-MM-dd HH:mm:ss`` Beijing time) -> the trade's lifetime in scenario seconds (a lifetime
        the merchant means in its own time, scaled like every other duration of the scenario)."""
        if biz.get("time_expire") is not None:
            text = biz["time_expire"]
            try:
                at = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
            except (TypeError, ValueError):
                raise _bad("time_expire", "yyyy-MM-dd HH:mm:ss (Beijing time)") from None
            # a deadline on the merchant's (wall) clock: its distance from now, in scenario seconds
            ttl = (at.timestamp() - time.time()) * self.core.clock.scale
            if ttl <= 0:
                raise _bad("time_expire", "a time in the future")
            return ttl
        if biz.get("timeout_express") is not None:
            m = EXPRESS_RE.match(str(biz["timeout_express"]))
            if not m:
                raise _bad("timeout_express", "1m to 15d, e.g. 90m, 2h, 15d or 1c")
            n, unit = int(m.group(1)), m.group(2)
            if unit == "c":
                now = datetime.now(BEIJING)
                end = (now + timedelta(days=n)).replace(hour=0, minute=0, second=0, microsecond=0)
                return (end - now).total_seconds()
            ttl = n * {"m": 60, "h": 3600, "d": 86400}[unit]
            if ttl > 15 * 86400:
                raise _bad("timeout_express", "at most 15d")
            return float(ttl)
        return None

    # -- trades: the core's view in Alipay's words ----------------------------------------------------

    @staticmethod
    def trade_status(view: dict[str, Any]) -> str:
        state = view["state"]
        if state == "succeeded":
            return "TRADE_SUCCESS"
        if state in ("closed", "refunded"):
            return "TRADE_CLOSED"  # Alipay: closed unpaid, or refunded in full
        return "WAIT_BUYER_PAY"  # created, failed (the buyer may try again), processing, unknown

    def _trade_fields(self, view: dict[str, Any]) -> dict[str, Any]:
        out = {"trade_no": view["trade_no"], "out_trade_no": view["trade"], "buyer_user_id": view["user"],
               "buyer_logon_id": view["user"][:3] + "***", "trade_status": self.trade_status(view),
               "total_amount": yuan(view["amount"])}
        if view["paid_t"] is not None and view["state"] in ("succeeded", "refunded"):
            paid = yuan(view["amount"])
            out.update(receipt_amount=paid, buyer_pay_amount=paid, invoice_amount=paid, point_amount="0.00",
                       send_pay_date=self._when(view["paid_t"]))
        return out

    def _row(self, biz: dict[str, Any]) -> Any:
        """The Alipay trade named by ``out_trade_no`` or ``trade_no`` (even one not opened yet)."""
        if biz.get("trade_no") not in (None, ""):
            row = self.core.find_trade(trade_no=str(biz["trade_no"]))
        elif biz.get("out_trade_no") not in (None, ""):
            row = self.core.find_trade(trade=str(biz["out_trade_no"]))
        else:
            raise Refusal("40002", "isv.missing-parameter", "out_trade_no or trade_no: one of them is required")
        if row is None or row["face"] != self.name:
            raise Refusal("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在 the trade does not exist")
        return row

    @staticmethod
    def _business(exc: C.CoreError, method: str) -> Refusal:
        code, state = exc.code, exc.extra.get("trade_state")
        if code == C.TRADE_PARAMS_CONFLICT:
            code = {"succeeded": C.TRADE_HAS_SUCCESS, "refunded": C.TRADE_HAS_SUCCESS,
                    "closed": C.TRADE_HAS_CLOSE}.get(state or "", code)
        if code == C.TRADE_IN_PROGRESS and method == "alipay.trade.pay":
            return Refusal("10003", None, None)
        if code in (C.SYSTEM_BUSY, C.DEADLINE_EXCEEDED):  # the gateway's overload policies refused or dropped it
            return Refusal("20000", "isp.unknow-error", "系统繁忙 service unavailable: the gateway is overloaded "
                           f"({exc.extra.get('overload', 'busy')}), retry later; a payment was not taken")
        sub = {C.TRADE_NOT_EXIST: "ACQ.TRADE_NOT_EXIST",
               C.TRADE_HAS_SUCCESS: "ACQ.TRADE_STATUS_ERROR" if method == "alipay.trade.close" else "ACQ.TRADE_HAS_SUCCESS",
               C.TRADE_HAS_CLOSE: "ACQ.TRADE_HAS_CLOSE", C.TRADE_IN_PROGRESS: "ACQ.SYSTEM_ERROR",
               C.TRADE_PARAMS_CONFLICT: "ACQ.CONTEXT_INCONSISTENT", C.TRADE_NOT_PAID: "ACQ.TRADE_STATUS_ERROR",
               C.REFUND_AMOUNT_EXCEEDED: "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL",
               C.REFUND_PARAMS_CONFLICT: "ACQ.DISCORDANT_REPEAT_REQUEST",
               C.AGREEMENT_NOT_EXIST: "ORDER_NOT_EXIST", C.AGREEMENT_PARAMS_CONFLICT: "ACQ.CONTEXT_INCONSISTENT",
               C.AGREEMENT_CLOSED: "ORDER_STATUS_INVALID", C.AGREEMENT_NOT_CANCELLABLE: "ORDER_STATUS_INVALID",
               C.AGREEMENT_NOT_DUE: "ORDER_STATUS_INVALID",
               C.AGREEMENT_AWAITING_PAYMENT: "ORDER_STATUS_INVALID"}.get(code or "")
        if code == C.INVALID or sub is None:
            return Refusal("40002", "isv.invalid-parameter", f"{exc.field}: {exc.error}")
        return Refusal("40004", sub, exc.error, **({"retry_flag": "Y"} if sub == "ACQ.SYSTEM_ERROR" else {}))

    async def _create(self, biz: dict[str, Any], notify_url: str | None, lazy: bool, user: str | None = None,
                      extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        out_trade_no = _id(biz, "out_trade_no")
        amount = fen_of(_required(biz, "total_amount"), "total_amount")
        subject = biz.get("subject")
        if not isinstance(subject, str) or not 0 < len(subject) <= 256:
            raise _bad("subject", "a string of 1 to 256 characters")
        ttl = self._ttl(biz)
        if notify_url is not None and not re.match(r"^https?://\S{1,2000}$", notify_url):
            raise _bad("notify_url", "an http(s) URL")
        buyer = user or _optional_id(biz, "buyer_id") or "2088" + _digits("buyer:" + out_trade_no, 12)
        # merchant_order_no (the merchant's original order, one of whose payments this is) names the
        # order in the history; without it the trade is its own order
        order = _optional_id(biz, "merchant_order_no") or out_trade_no
        view, _ = await self.core.create_trade(
            out_trade_no, order, buyer, amount, notify_url=notify_url, ttl=ttl, face=self.name,
            trade_no=self._trade_no(out_trade_no), lazy=lazy,
            meta={"subject": subject, "app_id": self.app_id, **(extra_meta or {})})
        if view["state"] in ("succeeded", "refunded"):
            raise Refusal("40004", "ACQ.TRADE_HAS_SUCCESS", "交易已被支付 the trade is paid already")
        if view["state"] == "closed":
            raise Refusal("40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭 the trade is closed")
        return view

    def _trade_no(self, out_trade_no: str) -> str:
        day = datetime.fromtimestamp(self.core.clock.start_epoch, BEIJING).strftime("%Y%m%d")
        return f"{day}22001{_digits('trade_no:' + out_trade_no, 15)}"

    # -- methods --------------------------------------------------------------------------------------

    async def _page_pay(self, p: dict[str, str], biz: dict[str, Any], base: str) -> Response:
        meta = {"return_url": p.get("return_url") or None, "product_code": biz.get("product_code")}
        view = await self._create(biz, p.get("notify_url") or None, lazy=True, extra_meta=meta)
        return RedirectResponse(f"{base}/alipay/cashier/{view['trade_no']}", status_code=302)

    async def _method(self, method: str, p: dict[str, str], biz: dict[str, Any], base: str) -> dict[str, Any]:
        core, notify_url = self.core, p.get("notify_url") or None
        if method == "alipay.trade.precreate":
            view = await self._create(biz, notify_url, lazy=True)
            return {"out_trade_no": view["trade"], "qr_code": f"{base}/alipay/qr/{view['trade_no']}"}
        if method == "alipay.trade.create":
            view = await self._create(biz, notify_url, lazy=False)
            return {"out_trade_no": view["trade"], "trade_no": view["trade_no"]}
        if method == "alipay.trade.pay":
            return await self._barcode_pay(biz, notify_url)
        if method == "alipay.trade.query":
            return self._trade_fields(await core.query(self._row(biz)["trade"]))
        if method == "alipay.trade.close":
            out = await core.close(self._row(biz)["trade"])
            return {"trade_no": out["trade_no"], "out_trade_no": out["trade"]}
        if method == "alipay.trade.cancel":
            return await self._cancel(self._row(biz))
        if method == "alipay.trade.refund":
            return await self._refund(biz)
        if method == "alipay.trade.fastpay.refund.query":
            return self._refund_query(biz)
        if method == BILL_METHOD:
            return self._bill_url(biz, base)
        return await self._credit(method, biz)

    # -- the trade bill (alipay.data.dataservice.bill.downloadurl.query) -------------------------------

    def _bill_origin(self) -> datetime:
        return self.core.calendar_origin()

    def _bill_day(self, biz: dict[str, Any]) -> date:
        """The day asked for: ``bill_type`` trade, ``bill_date`` yyyy-MM-dd of a scenario day that is over."""
        kind = biz.get("bill_type")
        if kind is None:
            raise Refusal("40002", "isv.missing-parameter", "bill_type: missing")
        if kind != "trade":
            raise _bad("bill_type", "trade (the mock serves the trade bill only; signcustomer is not modelled)")
        text = biz.get("bill_date")
        if text is None:
            raise Refusal("40002", "isv.missing-parameter", "bill_date: missing")
        try:
            day = datetime.strptime(str(text), "%Y-%m-%d").date() if re.match(r"^\d{4}-\d{2}-\d{2}$", str(text)) \
                else None
        except ValueError:
            day = None
        if day is None:
            raise _bad("bill_date", "a day as yyyy-MM-dd (monthly bills, yyyy-MM, are not served)")
        _start, end = bill.day_bounds(self._bill_origin(), day)
        if self.core.clock.now() < end:
            raise Refusal("40004", "isp.bill_not_exist",
                          "账单不存在 the bill of a day exists once the day is over (T+1)")
        return day

    def _bill_token(self, stamp: str, expires: str) -> str:
        return hmac.new(self.core.secret, f"bill:{stamp}:{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _bill_url(self, biz: dict[str, Any], base: str) -> dict[str, Any]:
        stamp = self._bill_day(biz).strftime("%Y%m%d")
        expires = f"{time.time() + BILL_URL_TTL:.3f}"
        query = urlencode({"bizType": "trade", "userId": SELLER_ID + "0156", "fileType": "csv.zip",
                           "bizDates": stamp, "downloadFileName": f"{SELLER_ID}0156_{stamp}.csv.zip",
                           "timestamp": expires, "token": self._bill_token(stamp, expires)})
        return {"bill_download_url": f"{base}/alipay/bill/download?{query}"}

    def _bill_rows(self, day: date) -> list[dict[str, Any]]:
        """The trades of this face paid (``charge``) and refunded in ``day``, oldest first."""
        start, end = bill.day_bounds(self._bill_origin(), day)
        rows = self.core.store.all(
            "SELECT txns.txn, txns.kind, txns.t, trades.trade, trades.trade_no, trades.usr, trades.created_t,"
            " trades.meta, (SELECT SUM(amount) FROM postings WHERE postings.txn = txns.txn AND amount > 0) AS amount"
            " FROM txns JOIN trades ON trades.trade = txns.trade WHERE trades.face = ? AND txns.kind IN (?, ?)"
            " AND txns.t >= ? AND txns.t < ? ORDER BY txns.t, txns.txn", (self.name, C.CHARGE, C.REFUND, start, end))
        out = []
        for r in rows:
            paid = r["kind"] == C.CHARGE
            out.append({"kind": bill.PAID if paid else bill.REFUND, "trade_no": r["trade_no"] or "",
                        "out_trade_no": r["trade"], "subject": json.loads(r["meta"] or "{}").get("subject") or "",
                        "created_t": r["created_t"], "t": r["t"], "amount": (r["amount"] or 0) * (1 if paid else -1),
                        "buyer": r["usr"], "request_no": "" if paid else r["txn"]})
        return out

    def _bill_download(self, params: dict[str, str]) -> Response:
        stamp, expires, token = params.get("bizDates", ""), params.get("timestamp", ""), params.get("token", "")
        try:
            fresh = float(expires) >= time.time()
            day = datetime.strptime(stamp, "%Y%m%d").date()
        except ValueError:
            fresh, day = False, None
        if day is None or not hmac.compare_digest(token, self._bill_token(stamp, expires)):
            return Response("账单下载地址无效 invalid bill download URL".encode(), status_code=404,
                            media_type="text/plain;charset=utf-8")
        if not fresh:
            return Response("下载超时，请重新下载 the URL is valid for 30 s: ask for a new one".encode(), status_code=410,
                            media_type="text/plain;charset=utf-8")
        name, data = bill.make_zip(self._bill_origin(), day, SELLER_ID + "0156", self._bill_rows(day),
                                   datetime.now(BEIJING).strftime("%Y年%m月%d日 %H:%M:%S"))
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def _barcode_pay(self, biz: dict[str, Any], notify_url: str | None) -> dict[str, Any]:
        scene = biz.get("scene", "bar_code")
        if scene not in ("bar_code", "wave_code", "security_code"):
            raise _bad("scene", "bar_code, wave_code or security_code")
        code = biz.get("auth_code")
        if not isinstance(code, str) or not AUTH_CODE_RE.match(code):
            raise Refusal("40004", "ACQ.PAYMENT_AUTH_CODE_INVALID", "支付授权码无效 the payment code is not valid")
        view = await self._create(biz, notify_url, lazy=False, user="2088" + code[-12:])
        task = asyncio.ensure_future(self.core.pay(view["trade"]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # outcome read back by query
        done, _ = await asyncio.wait({task}, timeout=self.core.clock.wall(self.pay_wait))
        if not done:  # still with the bank: the buyer "is paying"; the merchant polls query
            raise Refusal("10003", None, None, trade_no=view["trade_no"], out_trade_no=view["trade"])
        try:
            out = task.result()
        except C.CoreError as exc:
            raise self._business(exc, "alipay.trade.pay") from None
        fields = {**self._trade_fields(out), "gmt_payment": self._when(out["paid_t"] or core_now(self.core))}
        if out["state"] == "succeeded":
            fields.pop("trade_status")
            return fields
        if out["state"] == "failed":
            raise Refusal("40004", "ACQ.PAYMENT_FAIL", f"支付失败 the payment failed: {out['reason']}",
                          trade_no=out["trade_no"], out_trade_no=out["trade"])
        raise Refusal("40004", "ACQ.SYSTEM_ERROR", "系统错误 result unknown: query the trade", retry_flag="Y",
                      trade_no=out["trade_no"], out_trade_no=out["trade"])

    async def _cancel(self, row: Any) -> dict[str, Any]:
        if row["state"] in ("succeeded", "refunded"):
            out = await self.core.refund(row["trade"])
            action = "refund"
        else:
            out = await self.core.close(row["trade"])
            action = "close"
        return {"trade_no": out["trade_no"], "out_trade_no": out["trade"], "retry_flag": "N", "action": action}

    async def _refund(self, biz: dict[str, Any]) -> dict[str, Any]:
        row = self._row(biz)
        amount = fen_of(_required(biz, "refund_amount"), "refund_amount")
        request_no = _optional_id(biz, "out_request_no")
        if request_no == row["trade"]:
            request_no = None  # Alipay: no out_request_no means out_trade_no
        out = await self.core.refund(row["trade"], amount, request_no)
        return {"trade_no": out["trade_no"], "out_trade_no": out["trade"], "buyer_logon_id": out["user"][:3] + "***",
                "buyer_user_id": out["user"], "fund_change": "N" if out["replayed"] else "Y",
                "refund_fee": yuan(out["refunded"]), "send_back_fee": yuan(amount),
                "gmt_refund_pay": self._when(out["refund"]["created_t"] if out["refund"] else None)}

    def _refund_query(self, biz: dict[str, Any]) -> dict[str, Any]:
        row = self._row(biz)
        request_no = _optional_id(biz, "out_request_no") or row["trade"]
        key = "full" if request_no == row["trade"] else request_no
        out: dict[str, Any] = {"trade_no": row["trade_no"], "out_trade_no": row["trade"], "out_request_no": request_no}
        for r in self.core.refunds_of(row["trade"]):
            if r["request_no"] == key:  # none found: success without refund fields, as Alipay answers
                out.update(total_amount=yuan(row["amount"]), refund_amount=yuan(r["amount"]),
                           refund_status="REFUND_SUCCESS", gmt_refund_pay=self._when(r["created_t"]))
        return out

    # -- pay after use --------------------------------------------------------------------------------

    def _credit_row(self, kind: str, **where: str) -> Any:
        (col, value), = where.items()
        return self.core.store.one(f"SELECT * FROM alipay_credit WHERE kind = ? AND {col} = ?", (kind, value))

    async def _credit(self, method: str, biz: dict[str, Any]) -> dict[str, Any]:
        core = self.core
        if method == PZ + "creditagreement.sign":
            no = _id(biz, "out_agreement_no")
            row = self._credit_row("agreement", ref=no)
            if row is None:
                user = _optional_id(biz, "buyer_id") or "2088" + _digits("agreement:" + no, 12)
                cid = "ZMPAU" + _digits("credit_agreement:" + no, 22)
                with core.store.tx() as conn:
                    conn.execute("INSERT OR IGNORE INTO alipay_credit VALUES (?, 'agreement', ?, ?, ?)",
                                 (cid, no, user, core.clock.now()))
                row = self._credit_row("agreement", ref=no)
            return {"out_agreement_no": no, "credit_agreement_id": row["id"], "agreement_status": "VALID",
                    "alipay_user_id": row["usr"]}
        if method == PZ + "creditbizorder.order":
            no = _id(biz, "out_order_no")
            agreement = self._credit_row("agreement", id=str(_required(biz, "credit_agreement_id")))
            if agreement is None:
                raise Refusal("40004", "AGREEMENT_NOT_EXIST", "the credit agreement does not exist (sign it first)")
            amount = fen_of(_required(biz, "order_amount" if "order_amount" in biz else "total_amount"), "total_amount")
            body = _Obj(agreement=no, order=no, user=agreement["usr"], merchant="m1", amount=amount)
            out = await core.authorize(body)
            if out["state"] == "declined":
                raise Refusal("40004", "CREDIT_AMOUNT_NOT_ENOUGH", "芝麻先享额度不足 the buyer's credit limit is used up")
            oid = "ZMCB" + _digits("credit_biz_order:" + no, 24)
            with core.store.tx() as conn:
                conn.execute("INSERT OR IGNORE INTO alipay_credit VALUES (?, 'order', ?, ?, ?)",
                             (oid, no, agreement["usr"], core.clock.now()))
            return {"out_order_no": no, "credit_biz_order_id": oid, "order_status": self._order_status(out)}
        order = self._credit_order(biz)
        if method == PZ + "creditbizorder.finish":
            _id(biz, "out_request_no")
            fulfilled = str(biz.get("is_fulfilled", "TRUE")).upper()
            if fulfilled not in ("TRUE", "FALSE"):
                raise _bad("is_fulfilled", "TRUE or FALSE")
            if biz.get("total_amount") is not None:
                amount = fen_of(biz["total_amount"], "total_amount")
                if amount != core.agreement_row(order["ref"])["amount"]:
                    raise Refusal("40004", "ORDER_AMOUNT_NOT_MATCH", "total_amount: must equal the order amount")
            out = await (core.finish(order["ref"]) if fulfilled == "TRUE" else core.cancel_agreement(order["ref"]))
            return {"credit_biz_order_id": order["id"], "out_request_no": biz["out_request_no"],
                    "order_status": self._order_status(out)}
        view = C.agreement_view(core.agreement_row(order["ref"]))
        return {"credit_biz_order_id": order["id"], "out_order_no": order["ref"], "total_amount": yuan(view["amount"]),
                "order_status": self._order_status(view),
                "pay_status": "PAID" if view["paid_by_user"] else "UNPAID",
                "merchant_settled": "Y" if view["merchant_paid"] else "N"}

    def _credit_order(self, biz: dict[str, Any]) -> Any:
        if biz.get("credit_biz_order_id") not in (None, ""):
            row = self._credit_row("order", id=str(biz["credit_biz_order_id"]))
        else:
            row = self._credit_row("order", ref=_id(biz, "out_order_no"))
        if row is None:
            raise Refusal("40004", "ORDER_NOT_EXIST", "the credit order does not exist")
        return row

    @staticmethod
    def _order_status(view: dict[str, Any]) -> str:
        """The core agreement's state as the mock's order_status (see docs/psp/alipay.md)."""
        state = view["state"]
        if view.get("paid_by_user") or state == "settled":
            return "FINISHED"
        return {"authorized": "ORDERED", "finish_requested": "DEDUCTING", "deducting": "DEDUCTING",
                "compensated": "DEDUCTING", "overdue": "OVERDUE", "cancelled": "CANCELLED",
                "expired": "CLOSED"}.get(state, state.upper())

    # -- notifications ------------------------------------------------------------------------------

    def notify_urls(self, row: Any, kind: str) -> list[str]:
        wanted = kind == "trade.succeeded" or (kind == "trade.closed" and self.notify_closed)
        return [row["notify_url"]] if row["notify_url"] and wanted else []

    def notification(self, note: C.Note) -> tuple[bytes, dict[str, str]]:
        view = note.trade
        amount = yuan(view["amount"])
        status = "TRADE_CLOSED" if note.kind == "trade.closed" else "TRADE_SUCCESS"
        fields = {"notify_time": self._when(None), "notify_type": "trade_status_sync",
                  "notify_id": hashlib.sha256(note.notify_id.encode()).hexdigest()[:34],
                  "app_id": view["meta"].get("app_id", self.app_id), "auth_app_id": self.app_id, "charset": "utf-8",
                  "version": "1.0", "trade_no": view["trade_no"] or "", "out_trade_no": view["trade"],
                  "buyer_id": view["user"], "seller_id": SELLER_ID, "trade_status": status, "total_amount": amount,
                  "gmt_create": self._when(view["created_t"]), "subject": view["meta"].get("subject", "")}
        if view["paid_t"] is not None:
            fields.update(receipt_amount=amount, buyer_pay_amount=amount, invoice_amount=amount, point_amount="0.00",
                          gmt_payment=self._when(view["paid_t"]))
        if status == "TRADE_CLOSED":
            fields["gmt_close"] = self._when(None)
        body = urlencode(self.signed_fields({k: v for k, v in fields.items() if v != ""}))
        return body.encode(), {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}

    def acknowledged(self, status: int, body: bytes) -> bool:
        return status == 200 and body.strip() == b"success"

    # -- HTTP -----------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()

        @r.api_route("/gateway.do", methods=["GET", "POST"], tags=["alipay"],
                     summary="Alipay open-platform gateway (RSA2-signed; responses signed with the mock's key)")
        async def gateway(request: Request) -> Response:
            return await self.gateway(request)

        @r.get("/alipay/cashier/{trade_no}", tags=["alipay buyer"], summary="the buyer opens the cashier (opens the trade)")
        async def cashier(trade_no: str, request: Request) -> Response:
            return await self._buyer(request, trade_no, confirm=False)

        @r.get("/alipay/qr/{trade_no}", tags=["alipay buyer"], summary="the buyer's wallet scans the QR code")
        async def scan(trade_no: str, request: Request) -> Response:
            return await self._buyer(request, trade_no, confirm=False)

        @r.post("/alipay/cashier/{trade_no}/confirm", tags=["alipay buyer"],
                summary="the buyer confirms: bank debit; answers success, failure or unknown")
        async def confirm(trade_no: str, request: Request) -> Response:
            return await self._buyer(request, trade_no, confirm=True)

        @r.get("/alipay/bill/download", tags=["alipay"],
               summary="the trade bill a bill_download_url names: a zip of GBK CSV (valid 30 s)")
        async def bill_download(request: Request) -> Response:
            return self._bill_download(dict(request.query_params))

        @r.get("/alipay/barcode", tags=["alipay buyer"], summary="the buyer's payment code for alipay.trade.pay")
        async def barcode(buyer_id: str | None = None) -> Response:
            digits = buyer_id[-12:] if buyer_id and re.match(r"^2088[0-9]{12}$", buyer_id) else \
                str(secrets.randbelow(10 ** 12)).zfill(12)
            body = json.dumps({"auth_code": "28" + "0000" + digits, "buyer_id": "2088" + digits})
            return Response(body, media_type="application/json")

        return r

    async def gateway(self, request: Request) -> Response:
        method: str | None = None
        sign_type = "RSA2"
        try:
            params = await _params(request)
            method = params.get("method") or None
            sign_type = "RSA" if params.get("sign_type") == "RSA" else "RSA2"
            self._check_common(params, method)
            if not self._verified(params):
                raise Refusal("40002", "isv.invalid-signature",
                              "验签出错 the signature does not verify with the merchant's app public key")
            biz = _biz(params)
            base = str(request.base_url).rstrip("/")
            if method in PAGE_METHODS:
                return await self._page_pay(params, biz, base)
            body = {"code": "10000", "msg": "Success", **await self._method(method, params, biz, base)}
        except Refusal as exc:
            body = exc.body()
        except C.CoreError as exc:
            body = self._business(exc, method or "").body()
        except Exception:  # never a 5xx: Alipay's "unavailable, result unknown" (the bug is in the log)
            log.exception("alipay gateway: %s", method)
            body = Refusal("20000", "isp.unknow-error", "系统繁忙 service unavailable, result unknown").body()
        if method in PAGE_METHODS:  # a browser is on the other end: Alipay's error page
            return _page("支付宝 - 错误", f"<p>错误代码 {html.escape(str(body.get('sub_code', body['code'])))}</p>"
                         f"<p>{html.escape(str(body.get('sub_msg', body['msg'])))}</p>", body)
        return self._answer(method, body, sign_type)

    def _check_common(self, p: dict[str, str], method: str | None) -> None:
        for key, sub in (("method", "isv.missing-method"), ("app_id", "isv.missing-app-id"),
                         ("sign_type", "isv.missing-signature-type"), ("sign", "isv.missing-signature"),
                         ("timestamp", "isv.missing-timestamp"), ("version", "isv.missing-version")):
            if not p.get(key):
                raise Refusal("40001", sub, f"{key}: missing")
        if method not in METHODS:
            raise Refusal("40002", "isv.invalid-method", "不存在的方法名 no such method")
        if p["app_id"] != self.app_id:
            raise Refusal("40002", "isv.invalid-app-id", "无效的AppID参数 app_id: not this merchant's app")
        if p["sign_type"] not in ("RSA2", "RSA"):
            raise Refusal("40002", "isv.invalid-signature-type", "sign_type: expected RSA2")
        if not TIMESTAMP_RE.match(p["timestamp"]):
            raise Refusal("40002", "isv.invalid-timestamp", "timestamp: expected yyyy-MM-dd HH:mm:ss")
        if p.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
            raise Refusal("40002", "isv.invalid-charset", "charset: only utf-8 is supported")
        if p.get("format", "JSON").upper() != "JSON":
            raise Refusal("40002", "isv.invalid-format", "format: expected JSON")
        if p["version"] != "1.0":
            raise Refusal("40002", "isv.invalid-version", "version: expected 1.0")

    async def _buyer(self, request: Request, trade_no: str, confirm: bool) -> Response:
        want_json = "application/json" in request.headers.get("accept", "") + request.headers.get("content-type", "")
        row = self.core.find_trade(trade_no=trade_no) if re.match(r"^[0-9]{8,32}$", trade_no) else None
        view = None
        try:
            if row is None or row["face"] != self.name:
                raise Refusal("40004", "ACQ.TRADE_NOT_EXIST", "交易不存在 the trade does not exist")
            if confirm:
                view = await self.core.pay(row["trade"])
            else:
                view = self.core.open_trade(row["trade"])
                if view["state"] in ("succeeded", "refunded"):
                    raise Refusal("40004", "ACQ.TRADE_HAS_SUCCESS", "交易已被支付 the trade is paid already")
                if view["state"] == "closed":
                    raise Refusal("40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭 the trade is closed")
            body: dict[str, Any] = {"code": "10000", "msg": "Success", **self._trade_fields(view),
                                    "subject": view["meta"].get("subject")}
            if confirm and view["state"] == "failed":
                body = Refusal("40004", "ACQ.PAYMENT_FAIL", f"支付失败 the payment failed: {view['reason']}",
                               **self._trade_fields(view)).body()
            elif confirm and view["state"] != "succeeded":
                body = Refusal("20000", "ACQ.SYSTEM_ERROR", "结果未知 result unknown: the payment is being confirmed",
                               **self._trade_fields(view)).body()
        except Refusal as exc:
            body = exc.body()
        except C.CoreError as exc:
            body = self._business(exc, "cashier").body()
        if want_json:
            return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
        return self._buyer_page(trade_no, body, view, confirm)

    def _buyer_page(self, trade_no: str, body: dict[str, Any], view: dict[str, Any] | None, confirm: bool) -> Response:
        e = lambda v: html.escape(str(v))  # noqa: E731
        if body["code"] != "10000":
            return _page("支付宝 - 错误", f"<p>错误代码 {e(body.get('sub_code', body['code']))}</p>"
                         f"<p>{e(body.get('sub_msg', body['msg']))}</p>", body)
        assert view is not None
        head = f"<p>{e(view['meta'].get('subject', ''))}</p><p>¥ {e(yuan(view['amount']))} — {e(view['trade'])}</p>"
        if not confirm:
            return _page("支付宝 - 收银台", head + f'<form method="post" action="/alipay/cashier/{e(trade_no)}/confirm">'
                         '<button type="submit">确认付款 Confirm payment</button></form>', body)
        back = ""
        if view["meta"].get("return_url"):
            fields = self.signed_fields({"app_id": self.app_id, "charset": "utf-8", "method": "alipay.trade.page.pay.return",
                                         "out_trade_no": view["trade"], "trade_no": view["trade_no"],
                                         "total_amount": yuan(view["amount"]), "seller_id": SELLER_ID,
                                         "timestamp": self._when(None), "version": "1.0"})
            sep = "&" if "?" in view["meta"]["return_url"] else "?"
            back = f'<p><a href="{e(view["meta"]["return_url"] + sep + urlencode(fields))}">返回商户 back to the shop</a></p>'
        return _page("支付宝 - 支付成功", head + "<p>支付成功 paid</p>" + back, body)


class _Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def core_now(core: Any) -> float:
    return core.clock.now()


def _page(title: str, content: str, body: dict[str, Any]) -> Response:
    code = html.escape(str(body.get("sub_code", body.get("code"))))
    return HTMLResponse(f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
                        f'<body data-code="{code}"><h1>{html.escape(title)}</h1>{content}</body></html>')


async def _params(request: Request) -> dict[str, str]:
    """Query and form parameters merged (alipay-sdk-python puts the common ones in the query and
    ``biz_content`` in the form); the first value of a repeated key."""
    try:
        pairs = parse_qsl(request.url.query, keep_blank_values=True, max_num_fields=64, errors="strict")
        if request.method == "POST":
            ctype = request.headers.get("content-type", "")
            raw = await request.body()
            if len(raw) > 256 * 1024:
                raise Refusal("40002", "isv.invalid-parameter", "the request body is larger than 256 KiB")
            if ctype.startswith("multipart/form-data"):
                form = await request.form()
                pairs += [(k, v) for k, v in form.items() if isinstance(v, str)]
            elif raw:
                pairs += parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=64, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise Refusal("40002", "isv.invalid-charset", "the parameters are not url-encoded utf-8") from None
    except Refusal:
        raise
    except Exception:  # a malformed multipart body
        raise Refusal("40002", "isv.invalid-parameter", "the form body cannot be parsed") from None
    params: dict[str, str] = {}
    for k, v in pairs:
        params.setdefault(k, v)
    return params


def _biz(params: dict[str, str]) -> dict[str, Any]:
    text = params.get("biz_content")
    if not text:
        raise Refusal("40001", "isv.missing-biz-content", "biz_content: missing")
    try:
        biz = json.loads(text)
    except ValueError:
        raise Refusal("40002", "isv.invalid-biz-content", "biz_content: expected a JSON object") from None
    if not isinstance(biz, dict):
        raise Refusal("40002", "isv.invalid-biz-content", "biz_content: expected a JSON object")
    return biz


def _required(biz: dict[str, Any], key: str) -> Any:
    if biz.get(key) in (None, ""):
        raise Refusal("40002", "isv.missing-parameter", f"{key}: missing from biz_content")
    return biz[key]


def _id(biz: dict[str, Any], key: str) -> str:
    value = _required(biz, key)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise _bad(key, "1 to 64 letters, digits or _.:- (starting with a letter or digit)")
    return value


def _optional_id(biz: dict[str, Any], key: str) -> str | None:
    return _id(biz, key) if biz.get(key) not in (None, "") else None

