"""The reference checkout on Stripe: its native requests made as Stripe calls, written from the protocol
with the checkout's own HTTP client (httpx for an ``https://`` provider; form-encoded ``/v1`` REST, ``Authorization: Bearer sk_...``, ``Idempotency-Key``), never
with the ``stripe`` SDK.

========================  ===============================================================================
the checkout asks          this client does (and answers as the native API would)
========================  ===============================================================================
``POST /trades``           ``POST /v1/checkout/sessions`` (``mode=payment``, inline ``price_data``,
                           ``client_reference_id`` = the order, ``metadata[trade]`` = the checkout's trade
                           number, ``Idempotency-Key`` = the trade number): the session's ``url`` is the
                           buyer's ``pay_url``; the same number again replays the same session, other
                           parameters are a 409 conflict (the checkout moves on to a fresh number)
``GET /trades/{t}``        ``GET /v1/checkout/sessions/{cs}`` (and the PaymentIntent while it is open):
                           complete -> succeeded, expired -> closed, open -> created / processing / failed
``POST /trades/{t}/close`` ``POST /v1/checkout/sessions/{cs}/expire``: expired -> closed; complete ->
                           409 ``ACQ.TRADE_HAS_SUCCESS``; a payment in flight -> 409 in progress
``POST /trades/{t}/refund`` ``POST /v1/refunds`` (``payment_intent``, ``Idempotency-Key``), then
                           ``GET /v1/refunds/{re}`` on each retry: 200 only once it ``succeeded``;
                           ``pending`` is a 409 the checkout retries on its refund schedule; ``failed``
                           makes the next attempt a new refund
``/bnpl/...``              the mock provider's native API (Stripe has no pay-after-use here)
========================  ===============================================================================

Webhooks: on the first payment the client registers ``{checkout}/stripe/webhook`` for
``checkout.session.completed`` (``POST /v1/webhook_endpoints``) and keeps the endpoint's ``whsec_``
secret in the checkout's database. Each delivery is verified (``Stripe-Signature: t=..,v1=..``, HMAC-SHA256
over ``t.body`` with the ``whsec_`` secret, five minutes' tolerance) before the checkout reads it; a bad
signature gets a 400 and moves nothing. The trade numbers, sessions, PaymentIntents and refunds are
mapped in the checkout's own SQLite (``stripe_client_*`` tables). The secret key is read from the
provider's data directory (``psp/stripe/secret_key``), the mock's.

Close policies map onto Stripe's by themselves: ``naive`` closes the order and touches nothing at
Stripe (the session stays payable: the mall pattern), ``query_then_close`` retrieves the session, closes
the order, then expires the session, ``close_trade_then_order`` expires the session first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from loadtests.service import signing
from loadtests.service.httpclient import HttpError
from loadtests.service.psp_clients import Reply

log = logging.getLogger("checkout_chaos.checkout.stripe")

SCHEMA = """
CREATE TABLE IF NOT EXISTS stripe_client_trades (
    trade TEXT PRIMARY KEY, cs TEXT NOT NULL, pi TEXT NOT NULL, url TEXT
);
CREATE TABLE IF NOT EXISTS stripe_client_refunds (
    refund_id TEXT PRIMARY KEY, n INTEGER NOT NULL, re TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stripe_client_endpoint (id TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL);
"""
CURRENCY = "cny"  # the checkout's amounts are fen
MAX_SESSION = 24 * 3600.0  # Stripe keeps a Checkout Session open for at most 24 hours
EVENTS = ["checkout.session.completed"]


class StripeClient:
    """The checkout's native requests made as Stripe calls (see the module's table)."""

    def __init__(self, checkout: Any) -> None:
        self.svc = checkout
        self.http: httpx.AsyncClient | None = None
        self._key: str | None = None
        self._ready = False
        self._endpoint_lock = asyncio.Lock()

    # -- plumbing -----------------------------------------------------------------------------------

    def _tables(self) -> None:
        if not self._ready:
            with self.svc.store.tx() as conn:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            self._ready = True

    def _secret_key(self) -> str:
        if self._key is None:
            path = self.svc.config.data_dir / "psp" / "stripe" / "secret_key"
            try:
                self._key = "sk_test_" + path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise self._unavailable(f"no Stripe secret key at {path} ({exc.strerror}): is the provider "
                                        "serving --psp stripe?") from None
        return self._key

    @staticmethod
    def _unavailable(why: str) -> Exception:
        from loadtests.service.base import ProviderUnavailable

        return ProviderUnavailable(why)

    async def _stripe(self, method: str, path: str, form: dict[str, Any] | None = None,
                      idempotency_key: str | None = None) -> Any:
        """One Stripe call; the checkout's ``ProviderUnavailable`` on no answer, a 5xx or a 409 ``in use``."""
        headers = {"Authorization": f"Bearer {self._secret_key()}"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        timeout = self.svc.wall_timeout(self.svc.conditions.current().app.request_timeout)
        url = self.svc.provider_url + path
        try:
            if url.startswith("http://"):
                # the checkout's own pooled aiohttp client (httpx stalled the checkout under load: the
                # Alipay client found it, docs/psp/alipay.md); httpx only for an https:// provider
                body = urlencode(form).encode() if form else b""
                if form:
                    headers["Content-Type"] = "application/x-www-form-urlencoded"
                resp = await self.svc.http.request(method, url, body, headers, timeout)
            else:
                if self.http is None:
                    self.http = httpx.AsyncClient()
                resp = await self.http.request(method, url, data=form, headers=headers, timeout=timeout)
        except (HttpError, httpx.HTTPError) as exc:
            raise self._unavailable(f"{exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 500 or (resp.status_code == 409 and _code(resp) == "idempotency_key_in_use"):
            raise self._unavailable(f"Stripe answered {resp.status_code}: {resp.text[:200]}")
        return resp

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def _mapped(self, trade: str) -> Any:
        self._tables()
        return self.svc.store.one("SELECT * FROM stripe_client_trades WHERE trade = ?", (trade,))

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
        return await self.svc.native_call(method, path, body)  # BNPL: the mock provider's native API

    async def create(self, body: dict[str, Any]) -> Reply:
        trade, order, user, amount = body["trade"], body["order"], body["user"], body["amount"]
        await self._ensure_endpoint()
        clock = self.svc.clock
        ttl = min(self.svc.conditions.current().gateway.trade_ttl, MAX_SESSION)
        # from when the checkout first noted this trade number: a retry sends the very same parameters,
        # as the Idempotency-Key requires
        noted = self.svc.store.one("SELECT created_t FROM order_trades WHERE ord = ? AND trade = ?", (order, trade))
        since = noted["created_t"] if noted is not None else clock.now()
        form = {"mode": "payment", "client_reference_id": order,
                "line_items[0][quantity]": "1",
                "line_items[0][price_data][currency]": CURRENCY,
                "line_items[0][price_data][unit_amount]": str(amount),
                "line_items[0][price_data][product_data][name]": f"order {order}",
                "metadata[order_id]": order, "metadata[user]": user, "metadata[trade]": trade,
                "expires_at": str(int(clock.start_epoch + (since + ttl) / clock.scale))}
        resp = await self._stripe("POST", "/v1/checkout/sessions", form, idempotency_key=f"checkout-{trade}")
        if resp.status_code == 400 and _type(resp) == "idempotency_error":
            return Reply(409, {"error": f"trade {trade!r} exists at Stripe with other parameters", "field": "trade",
                               "code": "TRADE_PARAMS_CONFLICT"})
        if resp.status_code != 200:
            return Reply(400, {"error": _message(resp), "field": "trade", "code": "STRIPE_REFUSED"})
        session = resp.json()
        if resp.headers.get("idempotent-replayed") == "true":  # the same number again: as it is now
            again = await self._stripe("GET", f"/v1/checkout/sessions/{session['id']}")
            if again.status_code == 200:
                session = again.json()
        with self.svc.store.tx() as conn:
            conn.execute("INSERT OR REPLACE INTO stripe_client_trades (trade, cs, pi, url) VALUES (?, ?, ?, ?)",
                         (trade, session["id"], session["payment_intent"], session.get("url")))
        state = {"complete": "succeeded", "expired": "closed"}.get(session.get("status"), "created")
        return Reply(201, {**_facts(trade, session, state), "pay_url": session.get("url")})

    async def query(self, trade: str) -> Reply:
        row = self._mapped(trade)
        if row is None:
            return _no_trade(trade)
        resp = await self._stripe("GET", f"/v1/checkout/sessions/{row['cs']}")
        if resp.status_code == 404:
            return _no_trade(trade)
        if resp.status_code != 200:
            return Reply(400, {"error": _message(resp), "code": "STRIPE_REFUSED"})
        session = resp.json()
        state = {"complete": "succeeded", "expired": "closed"}.get(session.get("status"))
        if state is None:  # open: the PaymentIntent says whether a payment is under way or failed
            pi = await self._stripe("GET", f"/v1/payment_intents/{row['pi']}")
            intent = pi.json() if pi.status_code == 200 else {}
            status = intent.get("status")
            state = {"processing": "processing", "succeeded": "succeeded", "canceled": "closed",
                     "requires_capture": "succeeded"}.get(status)
            if state is None:
                state = "failed" if intent.get("last_payment_error") else "created"
        return Reply(200, _facts(trade, session, state))

    async def close(self, trade: str) -> Reply:
        row = self._mapped(trade)
        if row is None:
            return _no_trade(trade)
        resp = await self._stripe("POST", f"/v1/checkout/sessions/{row['cs']}/expire")
        if resp.status_code == 200:
            return Reply(200, {"result": "closed", **_facts(trade, resp.json(), "closed")})
        if resp.status_code == 404:
            return _no_trade(trade)
        code = _code(resp)
        if code == "checkout_session_not_open":  # expired already (closed) or complete (paid)
            now = await self.query(trade)
            if now.status_code == 200 and now.json()["state"] == "closed":
                return Reply(200, {"result": "closed", **now.json()})
            code = "checkout_session_complete" if now.status_code == 200 and now.json()["state"] == "succeeded" else code
        if code == "checkout_session_complete":
            return Reply(409, {"error": "the Checkout Session is complete", "code": "ACQ.TRADE_HAS_SUCCESS",
                               "trade_state": "succeeded"})
        return Reply(409, {"error": _message(resp), "code": "TRADE_IN_PROGRESS"})  # a payment in flight

    async def refund(self, trade: str, refund_id: str) -> Reply:
        row = self._mapped(trade)
        if row is None:
            return _no_trade(trade)
        prior = self.svc.store.one("SELECT * FROM stripe_client_refunds WHERE refund_id = ?", (refund_id,))
        n = prior["n"] if prior is not None else 0
        refund: dict[str, Any] | None = None
        if prior is not None:  # asked again: how did that refund go?
            resp = await self._stripe("GET", f"/v1/refunds/{prior['re']}")
            refund = resp.json() if resp.status_code == 200 else None
        if refund is None or refund.get("status") in ("failed", "canceled"):
            n += 1  # the first attempt, or a new refund after a failed one (its money came back)
            resp = await self._stripe("POST", "/v1/refunds", {"payment_intent": row["pi"], "metadata[trade]": trade},
                                      idempotency_key=f"refund-{refund_id}-{n}")
            if resp.status_code != 200:
                return Reply(409, {"error": _message(resp), "code": _code(resp) or "STRIPE_REFUSED"})
            refund = resp.json()
            with self.svc.store.tx() as conn:
                conn.execute("INSERT OR REPLACE INTO stripe_client_refunds (refund_id, n, re) VALUES (?, ?, ?)",
                             (refund_id, n, refund["id"]))
        status = refund.get("status")
        if status == "succeeded":
            return Reply(200, {"trade": trade, "state": "refunded", "refund": refund["id"]})
        return Reply(409, {"error": f"refund {refund['id']} is {status}"
                           + (f" ({refund.get('failure_reason')})" if refund.get("failure_reason") else ""),
                           "code": "REFUND_PENDING" if status == "pending" else "REFUND_FAILED"})

    # -- webhooks -----------------------------------------------------------------------------------

    def _webhook_url(self) -> str:
        return self.svc.notify_url.rsplit("/notify", 1)[0] + "/stripe/webhook"

    async def _ensure_endpoint(self) -> None:
        self._tables()
        url = self._webhook_url()
        if self.svc.store.one("SELECT 1 FROM stripe_client_endpoint WHERE url = ?", (url,)):
            return
        async with self._endpoint_lock:
            if self.svc.store.one("SELECT 1 FROM stripe_client_endpoint WHERE url = ?", (url,)):
                return
            form = {"url": url, **{f"enabled_events[{i}]": e for i, e in enumerate(EVENTS)}}
            resp = await self._stripe("POST", "/v1/webhook_endpoints", form)
            if resp.status_code != 200:
                raise self._unavailable(f"Stripe refused the webhook endpoint: {_message(resp)}")
            endpoint = resp.json()
            with self.svc.store.tx() as conn:
                conn.execute("INSERT OR REPLACE INTO stripe_client_endpoint (id, url, secret) VALUES (?, ?, ?)",
                             (endpoint["id"], url, endpoint["secret"]))
            await self.svc.store.durable()

    def router(self) -> APIRouter:
        r = APIRouter(tags=["notifications"])

        @r.post("/stripe/webhook", summary="Stripe's signed webhook (checkout.session.completed); any 2xx acknowledges")
        async def webhook(request: Request) -> Response:
            raw = await request.body()
            self._tables()
            header = request.headers.get("stripe-signature")
            secrets = [row["secret"] for row in self.svc.store.all("SELECT secret FROM stripe_client_endpoint")]
            problems = [signing.verify(s.encode(), raw, header) for s in secrets] or ["no webhook endpoint registered"]
            if all(problems):
                why = problems[0].replace(signing.HEADER, "Stripe-Signature")
                return JSONResponse({"error": why, "field": "Stripe-Signature"}, 400)
            try:
                event = json.loads(raw)
                obj = event["data"]["object"]
                etype, evt = event["type"], event["id"]
            except (ValueError, KeyError, TypeError):
                return JSONResponse({"error": "expected a Stripe Event", "field": "body"}, 400)
            if etype != "checkout.session.completed" or not isinstance(obj, dict):
                return JSONResponse({"received": True})
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            trade = meta.get("trade")
            if not isinstance(trade, str):
                row = self.svc.store.one("SELECT trade FROM stripe_client_trades WHERE cs = ?", (obj.get("id"),))
                trade = row["trade"] if row else obj.get("id")
            note = {"notify_id": evt, "trade": trade, "order": obj.get("client_reference_id"),
                    "amount": obj.get("amount_total"), "attempt": 1,
                    "trade_status": "TRADE_SUCCESS" if obj.get("payment_status") == "paid" else "WAIT_BUYER_PAY"}
            return await self.svc.on_notification(json.dumps(note).encode())

        return r


def _facts(trade: str, session: dict[str, Any], state: str) -> dict[str, Any]:
    """A session as the native API's trade view: what the checkout checks (order, amount) and the state."""
    return {"trade": trade, "order": session.get("client_reference_id"), "amount": session.get("amount_total"),
            "state": state, "session": session.get("id"), "payment_intent": session.get("payment_intent")}


def _no_trade(trade: str) -> Reply:
    return Reply(404, {"error": f"no such trade {trade!r} at Stripe", "field": "trade", "code": "ACQ.TRADE_NOT_EXIST"})


def _error(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    err = body.get("error") if isinstance(body, dict) else None
    return err if isinstance(err, dict) else {}


def _code(resp: httpx.Response) -> str | None:
    return _error(resp).get("code")


def _type(resp: httpx.Response) -> str | None:
    return _error(resp).get("type")


def _message(resp: httpx.Response) -> str:
    return str(_error(resp).get("message") or f"HTTP {resp.status_code}")[:200]
