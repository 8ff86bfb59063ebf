"""The reference checkout on Alipay: its native requests made as open-platform gateway calls, written
from the protocol — form POSTs to ``/gateway.do`` through the checkout's own keep-alive client
(``loadtests.service.httpclient``; httpx for an ``https://`` provider), RSA2 (SHA256withRSA, PKCS#1 v1.5)
with the ``cryptography`` package — never with an Alipay SDK.

==========================  =============================================================================
the checkout asks            this client does (and answers as the native API would)
==========================  =============================================================================
``POST /trades``             ``alipay.trade.precreate`` (``out_trade_no`` = the checkout's trade number,
                             ``merchant_order_no`` = the order, ``total_amount`` in yuan, ``notify_url`` =
                             ``{checkout}/alipay/notify``, ``timeout_express`` in whole minutes when the
                             checkout passes the order's expiry): the ``qr_code`` is the buyer's
                             ``pay_url`` (the buyer scans it, then confirms in the wallet); the same number
                             again replays it; ``ACQ.CONTEXT_INCONSISTENT`` is a 409 conflict (the
                             checkout moves on to a fresh number); ``ACQ.TRADE_HAS_SUCCESS`` /
                             ``ACQ.TRADE_HAS_CLOSE`` answer the trade as it is (succeeded / closed)
``GET /trades/{t}``          ``alipay.trade.query``: ``TRADE_SUCCESS`` -> succeeded, ``TRADE_CLOSED`` ->
                             closed (refunded when it was paid), ``WAIT_BUYER_PAY`` -> created;
                             ``ACQ.TRADE_NOT_EXIST`` (also a QR code nobody has scanned yet) -> 404
``POST /trades/{t}/close``   ``alipay.trade.close``: 10000 -> closed; ``ACQ.TRADE_NOT_EXIST`` -> 404 (the
                             checkout reads "no trade" and closes the order: an unscanned QR code stays
                             payable, Alipay's own race); ``ACQ.TRADE_STATUS_ERROR`` -> queried: paid ->
                             409 ``ACQ.TRADE_HAS_SUCCESS``, closed -> closed; ``ACQ.SYSTEM_ERROR`` (a debit
                             in flight) -> 409 in progress
``POST /trades/{t}/refund``  ``alipay.trade.refund`` (the trade's full amount, ``out_request_no`` = the
                             checkout's refund id: idempotent; ``fund_change N`` on a replay) -> refunded
``/bnpl/...``                the mock provider's native API
==========================  =============================================================================

Every answer of the gateway is verified with the Alipay public key (RSA2 over the exact bytes of the
``<method>_response`` object) before it is read; one that does not verify, a 5xx, no answer, or code
``20000`` (result unknown) is the checkout's ``ProviderUnavailable``. Notifications arrive at
``POST /alipay/notify`` as signed forms: verified RSA2 over the sorted fields minus ``sign`` and
``sign_type`` with the Alipay public key, then handed to the checkout as the native notification
(``Checkout.on_notification``) and acknowledged with the seven bytes ``success``; a bad signature gets a
400 and moves nothing. Keys are read from the provider's data directory (``psp/alipay/``): the merchant's
``app_private_key.pem`` signs, ``alipay_public_key.pem`` verifies. The trade -> order mapping lives in the
checkout's SQLite (``alipay_client_trades``).

Close policies map onto Alipay's by themselves: ``naive`` touches nothing at Alipay (the QR code stays
payable: the mall pattern), ``query_then_close`` queries, closes the order, then the trade,
``close_trade_then_order`` closes the trade first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from loadtests.service import alipay_bill as bill
from loadtests.service.psp_clients import Reply

log = logging.getLogger("checkout_chaos.checkout.alipay")

SCHEMA = """
CREATE TABLE IF NOT EXISTS alipay_client_trades (
    trade TEXT PRIMARY KEY, ord TEXT NOT NULL, amount INTEGER NOT NULL, qr_code TEXT, trade_no TEXT
);
"""
APP_ID = "2021000000000001"  # the app id the mock's Alipay face serves (its face option app_id)
BEIJING = timezone(timedelta(hours=8))
MAX_ID = 64  # out_trade_no, out_request_no
FORM = "application/x-www-form-urlencoded; charset=utf-8"
MAX_BILL_DAYS = 31  # trade bills read by one reconciliation run at most (the next run goes on)


class AlipayClient:
    """The checkout's native requests made as Alipay gateway calls (see the module's table)."""

    def __init__(self, checkout: Any) -> None:
        self.svc = checkout
        self.http: httpx.AsyncClient | None = None
        self._app_key: RSAPrivateKey | None = None
        self._alipay_key: RSAPublicKey | None = None
        self._ready = False

    # -- plumbing -----------------------------------------------------------------------------------

    def _tables(self) -> None:
        if not self._ready:
            with self.svc.store.tx() as conn:
                conn.execute(SCHEMA)
            self._ready = True

    def _keys(self) -> tuple[RSAPrivateKey, RSAPublicKey]:
        if self._app_key is None or self._alipay_key is None:
            where = self.svc.config.data_dir / "psp" / "alipay"
            try:
                private = serialization.load_pem_private_key((where / "app_private_key.pem").read_bytes(), None)
                public = serialization.load_pem_public_key((where / "alipay_public_key.pem").read_bytes())
            except OSError as exc:
                raise _unavailable(f"no Alipay keys in {where} ({exc.strerror}): is the provider serving "
                                   "--psp alipay with its own merchant key pair?") from None
            if not isinstance(private, RSAPrivateKey) or not isinstance(public, RSAPublicKey):
                raise _unavailable(f"{where}: expected RSA keys")
            self._app_key, self._alipay_key = private, public
        return self._app_key, self._alipay_key

    def _gateway_url(self) -> str:
        return self.svc.provider_url + "/gateway.do"

    def _notify_url(self) -> str:
        return self.svc.notify_url.rsplit("/notify", 1)[0] + "/alipay/notify"

    async def _alipay(self, method: str, biz: dict[str, Any], notify_url: str | None = None) -> dict[str, Any]:
        """One signed gateway call; the verified ``<method>_response`` object. ``ProviderUnavailable`` on no
        answer, a 5xx, an answer whose signature does not verify, or code 20000 (result unknown)."""
        app_key, alipay_key = self._keys()
        params = {"app_id": APP_ID, "method": method, "format": "JSON", "charset": "utf-8", "sign_type": "RSA2",
                  "timestamp": datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S"), "version": "1.0",
                  "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":"))}
        if notify_url:
            params["notify_url"] = notify_url
        params["sign"] = base64.b64encode(app_key.sign(_content(params, ("sign",)).encode(), padding.PKCS1v15(),
                                                       hashes.SHA256())).decode()
        timeout = self.svc.wall_timeout(self.svc.conditions.current().app.request_timeout)
        form = urlencode(params).encode()
        try:
            resp = await self._post(form, timeout)
        except Exception as exc:  # HttpError, httpx.HTTPError: the gateway did not answer
            raise _unavailable(f"{exc.__class__.__name__}: {exc}") from None
        if resp.status_code != 200:
            raise _unavailable(f"Alipay answered HTTP {resp.status_code}: {resp.text[:200]}")
        raw = resp.body if hasattr(resp, "body") else resp.content
        body = _verified_response(raw, method.replace(".", "_") + "_response", alipay_key)
        if body is None:
            raise _unavailable(f"{method}: the answer's signature does not verify with the Alipay public key")
        if body.get("code") == "20000":
            raise _unavailable(f"{method}: {body.get('sub_code')} {body.get('sub_msg')} (result unknown)")
        return body

    async def _post(self, form: bytes, timeout: float) -> Any:
        """The form POST to the gateway: the checkout's own keep-alive client (aiohttp) for a plain
        ``http://`` provider, httpx for an ``https://`` one."""
        url = self._gateway_url()
        headers = {"Content-Type": FORM}
        if url.startswith("http://"):
            return await self.svc.http.request("POST", url, form, headers, timeout)
        if self.http is None:
            self.http = httpx.AsyncClient()
        return await self.http.post(url, content=form, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def _mapped(self, trade: str) -> Any:
        self._tables()
        return self.svc.store.one("SELECT * FROM alipay_client_trades WHERE trade = ?", (trade,))

    # -- the native requests ------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: dict | None) -> Any:
        parts = path.strip("/").split("/")
        if parts[0] == "trades":
            if method == "POST" and len(parts) == 1:
                return await self.create(body or {})
            if method == "GET" and len(parts) == 2:
                return await self.query(parts[1])
            if method == "POST" and len(parts) == 3 and parts[2] == "close":
                return await self.close(parts[1])
            if method == "POST" and len(parts) == 3 and parts[2] == "refund":
                return await self.refund(parts[1], (body or {}).get("refund_id") or f"{parts[1]}-refund")
        if method == "GET" and parts[0].startswith("statement?"):
            return await self.statement(dict(parse_qsl(parts[0].partition("?")[2])))
        return await self.svc.native_call(method, path, body)  # BNPL: the mock provider's native API

    async def create(self, body: dict[str, Any]) -> Reply:
        trade, order, amount = body["trade"], body["order"], body["amount"]
        self._tables()
        prior = self._mapped(trade)
        if prior is not None and (prior["ord"], prior["amount"]) != (order, amount):
            return _conflict(trade)
        biz: dict[str, Any] = {"out_trade_no": trade, "merchant_order_no": order, "total_amount": _yuan(amount),
                               "subject": f"order {order}"}
        minutes = _minutes(body.get("timeout_express"))
        if minutes is not None:
            biz["timeout_express"] = f"{minutes}m"
        if prior is None:  # noted before Alipay hears of it: a notification may come before the answer
            with self.svc.store.tx() as conn:
                conn.execute("INSERT OR IGNORE INTO alipay_client_trades (trade, ord, amount) VALUES (?, ?, ?)",
                             (trade, order, amount))
        answer = await self._alipay("alipay.trade.precreate", biz, self._notify_url())
        facts = {"trade": trade, "order": order, "amount": amount}
        if answer.get("code") == "10000" and isinstance(answer.get("qr_code"), str):
            with self.svc.store.tx() as conn:
                conn.execute("UPDATE alipay_client_trades SET qr_code = ? WHERE trade = ?", (answer["qr_code"], trade))
            return Reply(201, {**facts, "state": "created", "pay_url": answer["qr_code"]})
        sub = answer.get("sub_code")
        if sub in ("ACQ.TRADE_HAS_SUCCESS", "ACQ.TRADE_HAS_CLOSE") and prior is not None and prior["qr_code"]:
            now = await self.query(trade)  # a trade this checkout made: paid or closed already
            if now.status_code == 200 and now.json()["amount"] == amount:
                return Reply(200, {**now.json(), "pay_url": prior["qr_code"] if prior is not None else None})
        self._forget(trade, prior)
        if sub in ("ACQ.CONTEXT_INCONSISTENT", "ACQ.TRADE_HAS_SUCCESS", "ACQ.TRADE_HAS_CLOSE"):
            return _conflict(trade)
        return Reply(400, {"error": _message(answer), "field": "trade", "code": sub or "ALIPAY_REFUSED"})

    def _forget(self, trade: str, prior: Any) -> None:
        if prior is None:
            with self.svc.store.tx() as conn:
                conn.execute("DELETE FROM alipay_client_trades WHERE trade = ? AND qr_code IS NULL", (trade,))

    async def query(self, trade: str) -> Reply:
        row = self._mapped(trade)
        if row is None:
            return _no_trade(trade)
        answer = await self._alipay("alipay.trade.query", {"out_trade_no": trade})
        if answer.get("code") != "10000":
            if answer.get("sub_code") == "ACQ.TRADE_NOT_EXIST":
                return _no_trade(trade)
            return Reply(400, {"error": _message(answer), "code": answer.get("sub_code") or "ALIPAY_REFUSED"})
        status = answer.get("trade_status")
        if status == "TRADE_SUCCESS" or status == "TRADE_FINISHED":
            state = "succeeded"
        elif status == "TRADE_CLOSED":  # closed unpaid, or refunded in full (then it was paid)
            state = "refunded" if answer.get("send_pay_date") else "closed"
        else:
            state = "created"  # WAIT_BUYER_PAY: Alipay does not say whether a debit is in flight
        return Reply(200, {"trade": trade, "order": row["ord"], "amount": _fen(answer.get("total_amount")),
                           "state": state, "trade_no": answer.get("trade_no")})

    async def close(self, trade: str) -> Reply:
        row = self._mapped(trade)
        if row is None:
            return _no_trade(trade)
        answer = await self._alipay("alipay.trade.close", {"out_trade_no": trade})
        facts = {"trade": trade, "order": row["ord"], "amount": row["amount"]}
        sub = answer.get("sub_code")
        if answer.get("code") == "10000" or sub == "ACQ.TRADE_HAS_CLOSE":
            return Reply(200, {"result": "closed", **facts, "state": "closed"})
        if sub == "ACQ.TRADE_NOT_EXIST":
            return _no_trade(trade)
        if sub == "ACQ.TRADE_STATUS_ERROR":  # not WAIT_BUYER_PAY: paid, or closed meanwhile?
            now = await self.query(trade)
            state = now.json().get("state") if now.status_code == 200 else None
            if state == "closed":
                return Reply(200, {"result": "closed", **facts, "state": "closed"})
            if state in ("succeeded", "refunded"):
                return Reply(409, {"error": "the trade is paid: cannot close", "code": "ACQ.TRADE_HAS_SUCCESS",
                                   "trade_state": state})
        return Reply(409, {"error": _message(answer), "code": "TRADE_IN_PROGRESS"})  # a debit in flight

    async def refund(self, trade: str, refund_id: str) -> Reply:
        row = self._mapped(trade)
        if row is None:
            return _no_trade(trade)
        request_no = refund_id if len(refund_id) <= MAX_ID else hashlib.sha256(refund_id.encode()).hexdigest()[:MAX_ID]
        answer = await self._alipay("alipay.trade.refund", {"out_trade_no": trade, "refund_amount": _yuan(row["amount"]),
                                                            "out_request_no": request_no})
        if answer.get("code") == "10000":
            return Reply(200, {"trade": trade, "order": row["ord"], "amount": row["amount"], "state": "refunded",
                               "refund": request_no, "fund_change": answer.get("fund_change")})
        sub = answer.get("sub_code")
        if sub == "ACQ.TRADE_NOT_EXIST":
            return _no_trade(trade)
        return Reply(409, {"error": _message(answer), "code": sub or "ALIPAY_REFUSED"})

    # -- notifications ------------------------------------------------------------------------------

    async def statement(self, q: dict[str, str]) -> Reply:
        """The statement of debits, from Alipay's own trade bills: for each calendar day after ``since``
        that is over by ``until`` (Alipay's bills are T+1; the scenario's calendar,
        ``loadtests.service.alipay_bill``), ``alipay.data.dataservice.bill.downloadurl.query``
        (``bill_type`` trade), then the zip at ``bill_download_url``; its 交易 rows of this checkout's
        trades are the debits. Answers in the native statement's shape, with ``until`` = the end of the
        last day read (the reconciler goes on from there), on one page. A day whose bill cannot be had
        (no answer, a bad download) ends the read there: the days before it are answered, so a
        reconciler that fell behind keeps what it read rather than starting over from ``since`` with
        more days each time; with no day read, ``ProviderUnavailable`` as before."""
        try:
            since, until = float(q.get("since", "-1")), float(q.get("until", "0"))
        except ValueError:
            return Reply(400, {"code": "INVALID_REQUEST", "message": "since/until: expected scenario seconds"})
        o = self.svc.calendar_origin()
        day = bill.day_of(o, max(since, 0.0))
        _start, end = bill.day_bounds(o, day)  # a since inside a day (not where this stopped): read it again
        reached, debits = since, []
        for _ in range(MAX_BILL_DAYS):
            if end > until:
                break
            try:
                rows = await self._bill(day)
            except Exception as exc:
                from loadtests.service.base import ProviderUnavailable

                if not isinstance(exc, ProviderUnavailable) or reached == since:
                    raise
                log.warning("Alipay bill of %s: %s; answering the days before it", day.isoformat(), exc)
                break
            if rows is None:
                break  # not there yet
            for r in rows:
                if r.get("业务类型") != bill.PAID:
                    continue
                trade = r.get("商户订单号", "")
                mapped = self._mapped(trade)
                amount = _fen(r.get("商家实收（元）"))
                debits.append({"trade": trade, "order": mapped["ord"] if mapped is not None else None,
                               "amount": amount, "trade_no": r.get("支付宝交易号"), "paid_at": r.get("完成时间")})
            reached = end
            day += timedelta(days=1)
            end += 86400.0
        return Reply(200, {"since": since, "until": reached, "offset": 0, "debits": debits, "next_offset": None})

    async def _bill(self, day: Any) -> list[dict[str, str]] | None:
        """The detail rows of ``day``'s trade bill; None while Alipay says it does not exist yet."""
        answer = await self._alipay(bill.METHOD, {"bill_type": "trade", "bill_date": day.isoformat()})
        if answer.get("code") != "10000":
            if answer.get("sub_code") == "isp.bill_not_exist":
                return None
            raise _unavailable(f"{bill.METHOD}: {_message(answer)}")
        url = answer.get("bill_download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _unavailable(f"{bill.METHOD}: no bill_download_url in the answer")
        timeout = self.svc.wall_timeout(self.svc.conditions.current().app.request_timeout)
        try:
            if url.startswith("http://"):
                resp = await self.svc.http.request("GET", url, b"", None, timeout)
                data = resp.body if hasattr(resp, "body") else resp.content
            else:
                if self.http is None:
                    self.http = httpx.AsyncClient()
                resp = await self.http.get(url, timeout=timeout)
                data = resp.content
        except Exception as exc:  # HttpError, httpx.HTTPError
            raise _unavailable(f"bill download: {exc.__class__.__name__}: {exc}") from None
        if resp.status_code != 200:
            raise _unavailable(f"bill download answered HTTP {resp.status_code}")
        try:
            return bill.read_zip(data)
        except ValueError as exc:
            raise _unavailable(f"bill download: {exc}") from None

    def router(self) -> APIRouter:
        r = APIRouter(tags=["notifications"])

        @r.post("/alipay/notify", summary="Alipay's signed trade notification (form, RSA2); answers 'success'")
        async def notify(request: Request) -> Response:
            raw = await request.body()
            try:
                fields = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=64,
                                        errors="strict"))
            except (UnicodeDecodeError, ValueError):
                return JSONResponse({"error": "expected a url-encoded utf-8 form", "field": "body"}, 400)
            try:
                _, alipay_key = self._keys()
            except Exception as exc:  # no keys yet: not acknowledged, Alipay sends it again
                return JSONResponse({"error": str(exc), "field": "sign"}, 400)
            if not _verified_fields(fields, alipay_key):
                return JSONResponse({"error": "sign: the notification's signature does not verify with the "
                                              "Alipay public key", "field": "sign"}, 400)
            if fields.get("app_id") != APP_ID:
                return JSONResponse({"error": f"app_id: expected {APP_ID}", "field": "app_id"}, 400)
            trade, amount = fields.get("out_trade_no", ""), _fen(fields.get("total_amount"))
            if amount is None or not trade:
                return JSONResponse({"error": "expected out_trade_no and total_amount", "field": "body"}, 400)
            row = self._mapped(trade)
            note = {"notify_id": fields.get("notify_id") or trade, "trade": trade,
                    "order": row["ord"] if row is not None else trade, "amount": amount, "attempt": 1,
                    "trade_status": fields.get("trade_status", "")}
            answer = await self.svc.on_notification(json.dumps(note).encode())
            if isinstance(answer, PlainTextResponse) and answer.body.strip() == b"success":
                return PlainTextResponse("success")
            return answer

        return r


# -- the protocol's small pieces -----------------------------------------------------------------------


def _unavailable(why: str) -> Exception:
    from loadtests.service.base import ProviderUnavailable

    return ProviderUnavailable(why)


def _content(params: dict[str, str], leave_out: tuple[str, ...]) -> str:
    """What Alipay signs: the non-empty parameters but ``leave_out``, sorted by key, ``k=v`` joined by ``&``."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in leave_out and v != "")


def _verify(key: RSAPublicKey, signature: str, data: bytes, sign_type: str = "RSA2") -> bool:
    try:
        sig = base64.b64decode(signature.replace(" ", "+"), validate=True)
        key.verify(sig, data, padding.PKCS1v15(), hashes.SHA1() if sign_type == "RSA" else hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _verified_fields(fields: dict[str, str], key: RSAPublicKey) -> bool:
    """A notification's signature: over the sorted fields minus ``sign`` and ``sign_type``."""
    sign = fields.get("sign")
    if not sign:
        return False
    return _verify(key, sign, _content(fields, ("sign", "sign_type")).encode(), fields.get("sign_type", "RSA2"))


def _verified_response(raw: bytes, name: str, key: RSAPublicKey) -> dict[str, Any] | None:
    """The ``name`` object of a gateway answer, if its signature (over the object's exact bytes) verifies."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("sign"), str):
        return None
    if name not in doc:
        name = "error_response"
    head = raw.find(b'"' + name.encode() + b'":')
    tail = raw.rfind(b',"sign":')
    if head < 0 or tail < 0:
        return None
    inner = raw[head + len(name) + 3:tail]
    if not _verify(key, doc["sign"], inner):
        return None
    body = doc.get(name)
    return body if isinstance(body, dict) else None


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _fen(value: Any) -> int | None:
    try:
        return int(Decimal(str(value)) * 100) if value not in (None, "") else None
    except InvalidOperation:
        return None


def _minutes(timeout_express: Any) -> int | None:
    """The checkout's trade lifetime (scenario time, e.g. ``"1234.5s"``) as Alipay's whole minutes,
    rounded down — the QR code expires no later than the order — and at least Alipay's 1m."""
    if not isinstance(timeout_express, str):
        return None
    from sim.scenario import parse_duration

    try:
        seconds = parse_duration(timeout_express)
    except ValueError:
        return None
    return max(1, math.floor(seconds / 60))


def _message(answer: dict[str, Any]) -> str:
    return str(answer.get("sub_msg") or answer.get("msg") or "Alipay refused")[:200]


def _conflict(trade: str) -> Reply:
    return Reply(409, {"error": f"trade {trade!r} exists at Alipay with other parameters", "field": "trade",
                       "code": "TRADE_PARAMS_CONFLICT"})


def _no_trade(trade: str) -> Reply:
    return Reply(404, {"error": f"no such trade {trade!r} at Alipay", "field": "trade", "code": "ACQ.TRADE_NOT_EXIST"})
