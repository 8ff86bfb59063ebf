"""The Stripe face: PaymentIntents, Checkout Sessions, Refunds, Products/Prices, Events and signed
webhooks, on Stripe's own wire protocol (form-encoded ``/v1`` REST, ``Authorization: Bearer sk_...``).

A PaymentIntent is a core trade (its id ``pi_...`` is the core's ``trade``), so the bank, the
scenario's declines, losses, holds and latencies, the ledger and the history are the core's. This
module keeps only protocol data in tables of its own: which payment method and capture mode an intent
has, Checkout Sessions' URLs, Products and Prices, webhook endpoints, Events, and the Idempotency-Key
replay cache. The official ``stripe`` SDK talks to it unchanged but for ``stripe.api_base``.

* Test payment methods go through the bank like any card: ``pm_card_visa`` (the scenario decides),
  ``pm_card_chargeDeclined`` (declined: ``generic_decline``), ``pm_card_chargeDeclinedInsufficientFunds``
  (``insufficient_funds``), ``pm_card_authenticationRequired`` (``requires_action``: the buyer passes
  3-D Secure at ``/stripe/3ds/{pi}`` first).
* A bank answer the gateway never got leaves the intent ``processing`` (HTTP 200, as Stripe answers
  for a payment whose outcome is still pending, rather than a 5xx the shop could not act on);
  retrieving it later shows what the bank did.
* ``capture_method=manual``: confirm debits the card and the intent waits in ``requires_capture``;
  capture completes it without moving money, cancel refunds it (an authorisation hold, modelled as a
  debit that a cancel gives back).
* Webhooks: an Event per state change, sent to every endpoint registered for its type, signed with the
  endpoint's ``whsec_`` secret (``Stripe-Signature: t=..,v1=..``), acknowledged by any 2xx, retried on
  Stripe's schedule (doubling from one minute, about three days), with the scenario's loss, latency and
  duplication.
* Idempotency-Key on any POST: the first answer (errors included) is replayed for 24 h of scenario
  time; the same key with other parameters is refused (400 ``idempotency_error``); a second request
  while the first is still running gets 409 ``idempotency_key_in_use`` (the SDK retries it).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sim.domain.schedules import NOTIFY_SCHEDULES

from loadtests.service.psp import core as C
from loadtests.service.psp.faces import Face
from loadtests.service.psp.keys import face_dir, secret_file, shown
from loadtests.service.web import ID_PATTERN, MAX_AMOUNT, json_response

API_VERSION = "2024-06-20"
IDEMPOTENCY_TTL = 24 * 3600.0  # scenario seconds
_TEST_CARDS = {
    "pm_card_visa": None, "pm_card_mastercard": None, "pm_card_amex": None,
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_authenticationRequired": None,
}
_DECLINE_MESSAGES = {"generic_decline": "Your card was declined.",
                     "insufficient_funds": "Your card has insufficient funds."}
REFUND_FAILURE_REASON = "declined"  # a refund the buyer's bank did not take (gateway.refund_failure)
_ID_RE = re.compile(ID_PATTERN)
_CURRENCY_RE = re.compile(r"^[a-z]{3}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS stripe_intents (
    pi TEXT PRIMARY KEY, secret TEXT NOT NULL, currency TEXT NOT NULL, payment_method TEXT,
    capture_method TEXT NOT NULL, captured INTEGER NOT NULL DEFAULT 0, needs_action INTEGER NOT NULL DEFAULT 0,
    confirmed INTEGER NOT NULL DEFAULT 0, last_error TEXT, cancellation_reason TEXT, session TEXT,
    metadata TEXT NOT NULL DEFAULT '{}', description TEXT, created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stripe_sessions (
    cs TEXT PRIMARY KEY, pi TEXT NOT NULL, success_url TEXT, cancel_url TEXT, expires_at INTEGER NOT NULL,
    line_items TEXT NOT NULL, client_reference_id TEXT, metadata TEXT NOT NULL DEFAULT '{}', created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stripe_refunds (
    re TEXT PRIMARY KEY, pi TEXT NOT NULL, amount INTEGER NOT NULL, metadata TEXT NOT NULL DEFAULT '{}',
    reason TEXT, created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stripe_products (id TEXT PRIMARY KEY, body TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stripe_prices (id TEXT PRIMARY KEY, body TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS stripe_endpoints (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, secret TEXT NOT NULL, events TEXT NOT NULL, created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stripe_events (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, body TEXT NOT NULL, created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stripe_idempotency (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL, t REAL NOT NULL
);
"""


class StripeError(Exception):
    """An answer in Stripe's error envelope."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None, code: str | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": type, "message": message, **({"param": param} if param else {}),
                               **({"code": code} if code else {}), **extra}}


def _invalid(message: str, param: str | None = None, code: str | None = None, status: int = 400) -> StripeError:
    return StripeError(status, "invalid_request_error", message, param, code)


def parse_form(raw: bytes) -> dict[str, Any]:
    """Stripe's form encoding (``a[b][c]=v``, ``a[0]=x``) as nested dicts and lists."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _invalid("The request body is not valid UTF-8 form data.") from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|\[\]", key)
        if not parts or len(parts) > 6:
            raise _invalid(f"Invalid parameter name: {key[:60]}", key[:60])
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "[]":
                part = str(sum(1 for k in node if k.isdigit())) if isinstance(node, dict) else "0"
            if last:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise _invalid(f"Invalid parameter: {key[:60]} mixes a value and a hash", key[:60])
                node = child
    return _lists(out)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


def _int(params: dict[str, Any], name: str, required: bool = False, low: int = 1, high: int = MAX_AMOUNT) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]{1,12}", value):
        raise _invalid(f"Invalid integer: {str(value)[:40]}", name, "parameter_invalid_integer")
    number = int(value)
    if not low <= number <= high:
        raise _invalid(f"{name} must be between {low} and {high}, found {number}.", name, "parameter_invalid_integer")
    return number


def _str(params: dict[str, Any], name: str, required: bool = False, limit: int = 5000) -> str | None:
    value = params.get(name)
    if value is None:
        if required:
            raise _invalid(f"Missing required param: {name}.", name, "parameter_missing")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _invalid(f"Invalid string: {name}", name, "parameter_invalid_string")
    return value


def _bool(params: dict[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {str(value)[:20]}", name)
    return value == "true"


def _metadata(params: dict[str, Any]) -> dict[str, str]:
    meta = params.get("metadata", {})
    if meta == "":
        return {}
    if not isinstance(meta, dict) or len(meta) > 50 or not all(isinstance(v, str) and len(v) <= 500 for v in meta.values()):
        raise _invalid("Invalid metadata: a hash of at most 50 string values is expected.", "metadata")
    return meta


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class StripeFace(Face):
    name = "stripe"
    schema = SCHEMA

    # -- keys and configuration --------------------------------------------------------------------

    def setup(self) -> None:
        self._keys()

    _cached_keys: tuple[str, str] | None = None

    def _keys(self) -> tuple[str, str]:
        if self._cached_keys is None:
            d = face_dir(self.data_dir, "stripe")
            self._cached_keys = ("sk_test_" + secret_file(d, "secret_key", 32),
                                 "pk_test_" + secret_file(d, "publishable_key", 32))
        return self._cached_keys

    def merchant_config(self, base_url: str) -> dict[str, Any]:
        sk, pk = self._keys()
        d = face_dir(self.data_dir, "stripe")
        return {
            "api base": base_url,
            "secret key": f"{shown(sk, 8)}  (sk_test_ + the contents of {d / 'secret_key'})",
            "publishable key": f"{shown(pk, 8)}  (pk_test_ + the contents of {d / 'publishable_key'})",
            "python SDK": f'stripe.api_base = "{base_url}"   # or StripeClient(key, base_addresses={{"api": "{base_url}"}})',
            "webhooks": f"stripe.WebhookEndpoint.create(url=..., enabled_events=['*']) against {base_url} -> whsec_ secret",
        }

    def notify_gaps(self, schedule: Any) -> tuple[float, ...]:
        return NOTIFY_SCHEDULES["stripe"]  # Stripe retries for up to three days, whatever the scenario's default

    # -- time -----------------------------------------------------------------------------------------

    def _unix(self, scenario_t: float) -> int:
        """Unix time at scenario time ``scenario_t`` (Stripe's timestamps are Unix seconds)."""
        clock = self.core.clock
        return int(clock.start_epoch + scenario_t / clock.scale)

    def _scenario_t(self, unix: float) -> float:
        clock = self.core.clock
        return (unix - clock.start_epoch) * clock.scale

    # -- objects ----------------------------------------------------------------------------------------

    def _intent_row(self, pi: str) -> tuple[Any, Any]:
        row = self.core.store.one("SELECT * FROM stripe_intents WHERE pi = ?", (pi,))
        if row is None:
            raise _invalid(f"No such payment_intent: '{pi}'", "intent", "resource_missing", status=404)
        trade = self.core.trade_row(pi, merchant_view=False)
        return row, trade

    def _intent(self, pi: str, state: str | None = None) -> dict[str, Any]:
        s, t = self._intent_row(pi)
        state = state or t["state"]
        manual = s["capture_method"] == "manual"
        status = {
            "created": "requires_confirmation" if s["payment_method"] and not s["confirmed"] else "requires_payment_method",
            "failed": "requires_payment_method", "processing": "processing", "unknown": "processing",
            "succeeded": "requires_capture" if manual and not s["captured"] else "succeeded",
            "refunded": "succeeded", "closed": "canceled",
        }[state]
        if state == "created" and s["needs_action"]:
            status = "requires_action"
        paid = state in ("succeeded", "refunded")
        charge = "ch_" + pi[3:] if paid or state == "failed" else None
        return {
            "id": pi, "object": "payment_intent", "amount": t["amount"],
            "amount_capturable": t["amount"] if status == "requires_capture" else 0,
            "amount_received": t["amount"] if status == "succeeded" else 0,
            "capture_method": s["capture_method"], "client_secret": f"{pi}_secret_{s['secret']}",
            "confirmation_method": "automatic", "created": s["created"], "currency": s["currency"],
            "description": s["description"], "livemode": False, "metadata": json.loads(s["metadata"]),
            "payment_method": s["payment_method"], "payment_method_types": ["card"],
            "latest_charge": charge, "last_payment_error": json.loads(s["last_error"]) if s["last_error"] else None,
            "next_action": ({"type": "redirect_to_url", "redirect_to_url": {
                "url": f"/stripe/3ds/{pi}", "return_url": None}} if status == "requires_action" else None),
            "cancellation_reason": s["cancellation_reason"] if status == "canceled" else None,
            "status": status,
        }

    def _session(self, cs: str) -> dict[str, Any]:
        s = self.core.store.one("SELECT * FROM stripe_sessions WHERE cs = ?", (cs,))
        if s is None:
            raise _invalid(f"No such checkout.session: '{cs}'", "session", "resource_missing", status=404)
        t = self.core.trade_row(s["pi"], merchant_view=False)
        i = self.core.store.one("SELECT currency, metadata FROM stripe_intents WHERE pi = ?", (s["pi"],))
        state = t["state"]
        status = "complete" if state in ("succeeded", "refunded") else ("expired" if state == "closed" else "open")
        return {
            "id": cs, "object": "checkout.session", "amount_subtotal": t["amount"], "amount_total": t["amount"],
            "cancel_url": s["cancel_url"], "success_url": s["success_url"], "client_reference_id": s["client_reference_id"],
            "created": s["created"], "currency": i["currency"], "expires_at": s["expires_at"], "livemode": False,
            "metadata": json.loads(s["metadata"]), "mode": "payment", "payment_intent": s["pi"],
            "payment_status": "paid" if status == "complete" else "unpaid", "status": status,
            "url": f"{self._base}/stripe/checkout/{cs}" if status == "open" else None,
        }

    def _refund(self, re_id: str) -> dict[str, Any]:
        """A Refund: its status is the core's refund (``pending`` until it lands, then ``succeeded`` or
        ``failed`` with a ``failure_reason``)."""
        r = self.core.store.one("SELECT * FROM stripe_refunds WHERE re = ?", (re_id,))
        if r is None:
            raise _invalid(f"No such refund: '{re_id}'", "id", "resource_missing", status=404)
        i = self.core.store.one("SELECT currency FROM stripe_intents WHERE pi = ?", (r["pi"],))
        core = self.core.store.one("SELECT amount, state FROM refunds WHERE trade = ? AND request_no = ?",
                                   (r["pi"], re_id))
        status = core["state"] if core is not None else "pending"
        return {"id": r["re"], "object": "refund", "amount": core["amount"] if core is not None else r["amount"],
                "charge": "ch_" + r["pi"][3:], "created": r["created"], "currency": i["currency"],
                "metadata": json.loads(r["metadata"]), "payment_intent": r["pi"], "reason": r["reason"],
                "status": status, "failure_reason": REFUND_FAILURE_REASON if status == "failed" else None}

    # -- webhooks -----------------------------------------------------------------------------------

    def notify_urls(self, row: Any, kind: str) -> list[Any]:
        """In the core's transaction: record the Events this change makes and address each to every
        endpoint enabled for its type, as ``(url, event id)``."""
        pi = row["trade"]
        s = self.core.store.one("SELECT * FROM stripe_intents WHERE pi = ?", (pi,))
        if s is None:
            return []
        types: list[tuple[str, str]] = []  # (event type, object kind)
        if kind == "trade.succeeded":
            types = [("payment_intent.succeeded", "pi"), ("charge.succeeded", "charge")]
            if s["session"]:
                types.append(("checkout.session.completed", "session"))
        elif kind == "trade.failed":
            types = [("payment_intent.payment_failed", "pi"), ("charge.failed", "charge")]
        elif kind == "trade.closed":
            types = [("payment_intent.canceled", "pi")]
            if s["session"]:
                types.append(("checkout.session.expired", "session"))
        elif kind == "refund.succeeded":
            types = [("charge.refunded", "charge"), ("refund.updated", "refund")]
        state = {"trade.succeeded": "succeeded", "trade.failed": "failed", "trade.closed": "closed"}.get(kind)
        return self._events(pi, s, types, state, None)

    def refund_notify_urls(self, row: Any, kind: str, re_id: str) -> list[Any]:
        """The core's hook for refunds that land later (``ProviderCore.refund_pending``): at creation
        ``refund.created`` and ``charge.refunded`` (the charge's ``amount_refunded`` counts a pending
        refund, as at Stripe); when it lands ``refund.updated`` (``succeeded``), or ``refund.updated``
        and ``refund.failed`` (``failed``: the charge's ``amount_refunded`` goes back down)."""
        pi = row["trade"]
        s = self.core.store.one("SELECT * FROM stripe_intents WHERE pi = ?", (pi,))
        if s is None:
            return []
        types = {"refund.created": [("refund.created", "refund"), ("charge.refunded", "charge")],
                 "refund.succeeded": [("refund.updated", "refund")],
                 "refund.failed": [("refund.updated", "refund"), ("refund.failed", "refund")]}.get(kind, [])
        return self._events(pi, s, types, None, re_id)

    def _events(self, pi: str, s: Any, types: list[tuple[str, str]], state: str | None,
                re_id: str | None) -> list[Any]:
        endpoints = self.core.store.all("SELECT * FROM stripe_endpoints ORDER BY created, id")
        out: list[Any] = []
        now = self._unix(self.core.clock.now())
        for etype, obj_kind in types:
            obj = self._event_object(obj_kind, pi, s, state, re_id)
            evt = _new_id("evt")
            body = {"id": evt, "object": "event", "api_version": API_VERSION, "created": now, "type": etype,
                    "data": {"object": obj}, "livemode": False, "pending_webhooks": 0,
                    "request": {"id": None, "idempotency_key": None}}
            targets = [e for e in endpoints if self._enabled(e, etype)]
            body["pending_webhooks"] = len(targets)
            self.core.store.conn.execute("INSERT INTO stripe_events (id, type, body, created) VALUES (?, ?, ?, ?)",
                                         (evt, etype, json.dumps(body, separators=(",", ":")), now))
            out += [(e["url"], f"{evt} {e['id']}") for e in targets]
        return out

    def _event_object(self, obj_kind: str, pi: str, s: Any, state: str | None,
                      re_id: str | None = None) -> dict[str, Any]:
        intent = self._intent(pi, state)
        if obj_kind == "pi":
            return intent
        if obj_kind == "session":
            session = self._session(s["session"])
            if state == "succeeded":
                session.update(status="complete", payment_status="paid", url=None)
            elif state == "closed":
                session.update(status="expired", url=None)
            return session
        if obj_kind == "refund":
            if re_id is None:
                last = self.core.store.one("SELECT re FROM stripe_refunds WHERE pi = ? ORDER BY created DESC, rowid DESC",
                                           (pi,))
                re_id = last["re"] if last else None
            return self._refund(re_id) if re_id else {}
        t = self.core.trade_row(pi, merchant_view=False)
        refunded = self.core.store.one("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE trade = ? AND state != 'failed'",
                                       (pi,))[0]
        return {"id": "ch_" + pi[3:], "object": "charge", "amount": t["amount"], "amount_refunded": refunded,
                "currency": s["currency"], "payment_intent": pi, "paid": intent["status"] == "succeeded",
                "refunded": refunded == t["amount"], "status": "failed" if state == "failed" else "succeeded",
                "failure_code": (intent["last_payment_error"] or {}).get("code")}

    @staticmethod
    def _enabled(endpoint: Any, etype: str) -> bool:
        events = json.loads(endpoint["events"])
        return "*" in events or etype in events

    def notification(self, note: C.Note) -> tuple[bytes, dict[str, str]]:
        evt, _, endpoint = (note.ref or "").partition(" ")
        e = self.core.store.one("SELECT body FROM stripe_events WHERE id = ?", (evt,))
        ep = self.core.store.one("SELECT secret FROM stripe_endpoints WHERE id = ?", (endpoint,))
        body = e["body"].encode() if e else b"{}"
        secret = ep["secret"] if ep else ""
        t = int(time.time())  # the receiver checks the timestamp against its own (wall) clock
        mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return body, {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": f"t={t},v1={mac}",
                      "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}

    def acknowledged(self, status: int, body: bytes) -> bool:
        return 200 <= status < 300

    # -- the HTTP side --------------------------------------------------------------------------------

    _base = ""

    def router(self) -> APIRouter:
        r = APIRouter(tags=["stripe"])
        self.in_flight: set[str] = set()

        async def handle(request: Request, action: Any, *args: Any, allow_publishable: bool = False) -> Response:
            self._base = str(request.base_url).rstrip("/")
            try:
                key = self._authenticate(request, allow_publishable)
                raw = await request.body()
                params = parse_form(raw) if request.method == "POST" else parse_form(request.url.query.encode())
                idem = request.headers.get("idempotency-key") if request.method == "POST" else None
                if idem:
                    return await self._idempotent(idem, request, params, action, key, *args)
                status, body = await self._run(action, params, key, *args)
            except StripeError as exc:
                status, body = exc.status, exc.body
            return json_response(body, status, {"Request-Id": _new_id("req"), "Stripe-Version": API_VERSION})

        def post(path: str, fn: Any, allow_publishable: bool = False) -> None:
            async def endpoint(request: Request) -> Response:
                return await handle(request, fn, *request.path_params.values(), allow_publishable=allow_publishable)
            r.add_api_route(path, endpoint, methods=["POST"], include_in_schema=True, summary=fn.__doc__)

        def get(path: str, fn: Any, allow_publishable: bool = False) -> None:
            async def endpoint(request: Request) -> Response:
                return await handle(request, fn, *request.path_params.values(), allow_publishable=allow_publishable)
            r.add_api_route(path, endpoint, methods=["GET"], summary=fn.__doc__)

        def delete(path: str, fn: Any) -> None:
            async def endpoint(request: Request) -> Response:
                return await handle(request, fn, *request.path_params.values())
            r.add_api_route(path, endpoint, methods=["DELETE"], summary=fn.__doc__)

        post("/v1/payment_intents", self.create_intent)
        get("/v1/payment_intents", self.list_intents)
        get("/v1/payment_intents/{pi}", self.retrieve_intent, allow_publishable=True)
        post("/v1/payment_intents/{pi}", self.update_intent)
        post("/v1/payment_intents/{pi}/confirm", self.confirm_intent, allow_publishable=True)
        post("/v1/payment_intents/{pi}/cancel", self.cancel_intent)
        post("/v1/payment_intents/{pi}/capture", self.capture_intent)
        post("/v1/refunds", self.create_refund)
        get("/v1/refunds/{re_id}", self.retrieve_refund)
        post("/v1/checkout/sessions", self.create_session)
        get("/v1/checkout/sessions/{cs}", self.retrieve_session)
        post("/v1/checkout/sessions/{cs}/expire", self.expire_session)
        post("/v1/products", self.create_product)
        get("/v1/products", self.list_products)
        get("/v1/products/{pid}", self.retrieve_product)
        post("/v1/prices", self.create_price)
        get("/v1/prices", self.list_prices)
        get("/v1/prices/{pid}", self.retrieve_price)
        get("/v1/events", self.list_events)
        get("/v1/events/{evt}", self.retrieve_event)
        post("/v1/webhook_endpoints", self.create_endpoint)
        get("/v1/webhook_endpoints", self.list_endpoints)
        delete("/v1/webhook_endpoints/{we}", self.delete_endpoint)

        async def unknown(request: Request) -> Response:
            body = _invalid(f"Unrecognized request URL ({request.method}: {request.url.path}).", status=404).body
            return json_response(body, 404)
        r.add_api_route("/v1/{rest:path}", unknown, methods=["GET", "POST", "DELETE"], include_in_schema=False)

        # the buyer's side: the hosted Checkout page and the 3-D Secure step
        @r.get("/stripe/checkout/{cs}", response_class=HTMLResponse, summary="the hosted Checkout page (the buyer)")
        async def checkout_page(cs: str, request: Request) -> Response:
            self._base = str(request.base_url).rstrip("/")
            try:
                session = self._session(cs)
            except StripeError:
                return HTMLResponse("<h1>This checkout session does not exist.</h1>", 404)
            if session["status"] != "open":
                return HTMLResponse(f"<h1>This checkout session is {session['status']}.</h1>", 410)
            self.core.open_trade(session["payment_intent"])
            amount = f"{session['amount_total'] / 100:.2f} {session['currency'].upper()}"
            cards = "".join(f'<option value="{c}">{c}</option>' for c in _TEST_CARDS)
            return HTMLResponse(
                f"<!doctype html><title>Pay {html.escape(amount)}</title><h1>Pay {html.escape(amount)}</h1>"
                f'<form method="post" action="/stripe/checkout/{html.escape(cs)}/pay">'
                f'<select name="payment_method">{cards}</select><button>Pay</button></form>')

        @r.post("/stripe/checkout/{cs}", summary="the buyer pays a Checkout Session, as a load generator does: "
                "form payment_method (default pm_card_visa); answers the payment's state as JSON (a session "
                "no longer open, or a payment in flight: 409 with the harness's code and trade_state)")
        async def checkout_pay_json(cs: str, request: Request) -> Response:
            try:
                params = parse_form(await request.body())
                session = self._session(cs)
                pi = session["payment_intent"]
                if session["status"] != "open":
                    return self._not_payable(session["status"], pi)
                self.core.open_trade(pi)
                try:
                    await self._confirm(pi, _str(params, "payment_method") or "pm_card_visa")
                except StripeError as exc:
                    if exc.status != 402:
                        status = self._session(cs)["status"]
                        if status != "open" or self._intent(pi)["status"] == "processing":
                            return self._not_payable(status, pi)
                        raise
                state = self.core.trade_row(pi)["state"]
                return json_response({"state": state, "trade": pi, "session": cs,
                                      "status": self._intent(pi)["status"]})
            except StripeError as exc:
                return json_response(exc.body, exc.status)

        @r.post("/stripe/checkout/{cs}/pay", summary="the buyer pays a Checkout Session (form: payment_method)")
        async def checkout_pay(cs: str, request: Request) -> Response:
            self._base = str(request.base_url).rstrip("/")
            try:
                params = parse_form(await request.body())
                session = self._session(cs)
                if session["status"] != "open":
                    raise _invalid(f"This Checkout Session is {session['status']}.", "session",
                                   "checkout_session_" + session["status"])
                pm = _str(params, "payment_method") or "pm_card_visa"
                intent = await self._confirm(session["payment_intent"], pm)
            except StripeError as exc:
                return json_response(exc.body, exc.status)
            if intent["status"] == "succeeded" and session["success_url"]:
                return RedirectResponse(session["success_url"].replace("{CHECKOUT_SESSION_ID}", cs), 303)
            return json_response({"session": self._session(cs), "payment_intent": intent})

        @r.post("/stripe/3ds/{pi}", summary="the buyer passes (or fails: form result=fail) 3-D Secure")
        async def three_ds(pi: str, request: Request) -> Response:
            try:
                params = parse_form(await request.body())
                s, t = self._intent_row(pi)
                if not s["needs_action"]:
                    raise _invalid("This PaymentIntent does not require authentication.", "intent",
                                   "payment_intent_unexpected_state")
                with self.core.store.tx() as conn:
                    conn.execute("UPDATE stripe_intents SET needs_action = 0 WHERE pi = ?", (pi,))
                if params.get("result") == "fail":
                    self._set_error(pi, "authentication_required", None,
                                    "The provided PaymentMethod has failed authentication.")
                    return json_response(self._intent(pi))
                return json_response(await self._pay(pi, s["payment_method"]))
            except StripeError as exc:
                return json_response(exc.body, exc.status)

        return r

    def _not_payable(self, status: str, pi: str) -> Response:
        """The buyer's JSON pay answer for a session that cannot be paid now: Stripe's error, plus the
        code and trade state a load generator reads (as the native API's pay refusals)."""
        state = self.core.trade_row(pi, merchant_view=False)["state"]
        code = {"complete": "ACQ.TRADE_HAS_SUCCESS", "expired": "ACQ.TRADE_HAS_CLOSE"}.get(status, "TRADE_IN_PROGRESS")
        body = _invalid(f"This Checkout Session is {status}." if status != "open" else
                        "A payment for this Checkout Session is being processed.", "session",
                        "checkout_session_" + status if status != "open" else "payment_intent_unexpected_state").body
        return json_response({**body, "code": code, "trade_state": state}, 409)

    def _authenticate(self, request: Request, allow_publishable: bool) -> str:
        sk, pk = self._keys()
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if hmac.compare_digest(token.encode(), sk.encode()):
            return "secret"
        if allow_publishable and hmac.compare_digest(token.encode(), pk.encode()):
            return "publishable"
        shown_key = shown(token, 6) if token else "none"
        raise StripeError(401, "invalid_request_error", f"Invalid API Key provided: {shown_key}")

    async def _run(self, action: Any, params: dict[str, Any], key: str, *args: Any) -> tuple[int, dict[str, Any]]:
        try:
            return 200, await action(params, key, *args)
        except StripeError as exc:
            return exc.status, exc.body
        except C.CoreError as exc:
            raise self._core_error(exc) from None

    @staticmethod
    def _core_error(exc: C.CoreError) -> StripeError:
        if exc.code in (C.SYSTEM_BUSY, C.DEADLINE_EXCEEDED):  # overload: Stripe's 429 rate_limit
            return _invalid("Too many requests hit the API too quickly; retry later.", None, "rate_limit", status=429)
        if exc.code == C.TRADE_NOT_EXIST:
            return _invalid(exc.error, "intent", "resource_missing", status=404)
        if exc.code == C.TRADE_IN_PROGRESS:
            return _invalid("This PaymentIntent's payment is being processed; retrieve it to see the outcome.",
                            "intent", "payment_intent_unexpected_state")
        if exc.code in (C.REFUND_AMOUNT_EXCEEDED,):
            return _invalid(exc.error, "amount", "amount_too_large")
        if exc.code == C.TRADE_NOT_PAID:
            return _invalid(exc.error, "payment_intent", "charge_not_refundable")
        return _invalid(exc.error, exc.field, "payment_intent_unexpected_state")

    async def _idempotent(self, key: str, request: Request, params: dict[str, Any], action: Any, auth: str,
                          *args: Any) -> Response:
        if len(key) > 255:
            raise _invalid("Idempotency-Key must be at most 255 characters.", "Idempotency-Key")
        fingerprint = hashlib.sha256(json.dumps([request.method, request.url.path, params], sort_keys=True)
                                     .encode()).hexdigest()
        store = self.core.store
        now = self.core.clock.now()
        prior = store.one("SELECT * FROM stripe_idempotency WHERE key = ?", (key,))
        if prior is not None and now - prior["t"] < IDEMPOTENCY_TTL:
            if prior["fingerprint"] != fingerprint:
                body = StripeError(400, "idempotency_error",
                                   "Keys for idempotent requests can only be used with the same parameters they were "
                                   f"first used with. Try using a key other than '{key}' if you meant to execute a "
                                   "different request.").body
                return json_response(body, 400)
            return Response(prior["body"].encode(), prior["status"], media_type="application/json",
                            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key})
        if key in self.in_flight:
            body = StripeError(409, "idempotency_error", "There is currently another in-progress request using this "
                               "Idempotency-Key; retry it later.", code="idempotency_key_in_use").body
            return json_response(body, 409)
        self.in_flight.add(key)
        try:
            try:
                status, body = await self._run(action, params, auth, *args)
            except StripeError as exc:
                status, body = exc.status, exc.body
            text = json.dumps(body, separators=(",", ":"))
            with store.tx() as conn:
                conn.execute("INSERT OR REPLACE INTO stripe_idempotency (key, fingerprint, status, body, t)"
                             " VALUES (?, ?, ?, ?, ?)", (key, fingerprint, status, text, now))
        finally:
            self.in_flight.discard(key)
        return Response(text.encode(), status, media_type="application/json", headers={"Idempotency-Key": key})

    # -- PaymentIntents ------------------------------------------------------------------------------

    async def create_intent(self, p: dict[str, Any], key: str, session: str | None = None,
                            lazy: bool = False, ttl: float | None = None) -> dict[str, Any]:
        """create a PaymentIntent"""
        amount = _int(p, "amount", required=True)
        currency = (_str(p, "currency", required=True) or "").lower()
        if not _CURRENCY_RE.match(currency):
            raise _invalid(f"Invalid currency: {currency[:10]}.", "currency")
        capture = _str(p, "capture_method") or "automatic"
        if capture not in ("automatic", "automatic_async", "manual"):
            raise _invalid(f"Invalid capture_method: {capture[:20]}", "capture_method")
        pm = _str(p, "payment_method")
        if pm is not None and pm not in _TEST_CARDS:
            raise _invalid(f"No such PaymentMethod: '{pm[:40]}'", "payment_method", "resource_missing")
        types = p.get("payment_method_types", ["card"])
        if not isinstance(types, list) or any(t != "card" for t in types):
            raise _invalid("payment_method_types: only 'card' is available here.", "payment_method_types")
        meta = _metadata(p)
        description = _str(p, "description", limit=1000)
        pi = _new_id("pi")
        # the order and buyer the history names: the shop's metadata[order_id] / [user], if it sets them
        order = meta.get("order_id") or meta.get("order") or pi
        user = meta.get("user") or _str(p, "customer") or "buyer"
        if not (_ID_RE.match(order) and _ID_RE.match(user)):
            raise _invalid("metadata[order_id] and metadata[user]: letters, digits and _.:- only, at most 64.", "metadata")
        created = self._unix(self.core.clock.now())
        await self.core.create_trade(pi, order, user, amount, merchant="stripe", face="stripe", ttl=ttl, lazy=lazy,
                                     trade_no="ch_" + pi[3:])
        with self.core.store.tx() as conn:
            conn.execute(
                "INSERT INTO stripe_intents (pi, secret, currency, payment_method, capture_method, session, metadata,"
                " description, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (pi, secrets.token_hex(12), currency, pm, capture, session, json.dumps(meta), description, created))
        if _bool(p, "confirm"):
            if pm is None:
                raise _invalid("You cannot confirm this PaymentIntent because it's missing a payment method.",
                               "payment_method", "payment_intent_unexpected_state")
            return await self._confirm(pi, pm)
        return self._intent(pi)

    async def list_intents(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """list PaymentIntents"""
        limit = _int(p, "limit", low=1, high=100) or 10
        rows = self.core.store.all("SELECT pi FROM stripe_intents ORDER BY created DESC, rowid DESC LIMIT ?", (limit,))
        return {"object": "list", "url": "/v1/payment_intents", "has_more": False,
                "data": [self._intent(r["pi"]) for r in rows]}

    def _check_client_secret(self, p: dict[str, Any], key: str, pi: str) -> None:
        if key != "publishable":
            return
        s, _ = self._intent_row(pi)
        if _str(p, "client_secret") != f"{pi}_secret_{s['secret']}":
            raise _invalid("The client_secret provided does not match the client_secret associated with the "
                           "PaymentIntent.", "client_secret", status=400)

    async def retrieve_intent(self, p: dict[str, Any], key: str, pi: str) -> dict[str, Any]:
        """retrieve a PaymentIntent"""
        self._check_client_secret(p, key, pi)
        self._intent_row(pi)
        s, t = self._intent_row(pi)
        if t["opened"]:
            await self.core.query(pi)  # applies a lapsed lifetime as the core does
        out = self._intent(pi)
        if key == "publishable":
            out = {k: v for k, v in out.items() if k not in ("metadata", "description")}
        return out

    async def update_intent(self, p: dict[str, Any], key: str, pi: str) -> dict[str, Any]:
        """update a PaymentIntent (metadata, description, payment_method)"""
        s, t = self._intent_row(pi)
        pm = _str(p, "payment_method")
        if pm is not None and pm not in _TEST_CARDS:
            raise _invalid(f"No such PaymentMethod: '{pm[:40]}'", "payment_method", "resource_missing")
        if any(k in p for k in ("amount", "currency")):
            raise _invalid("amount and currency cannot be changed here.", "amount")
        meta = {**json.loads(s["metadata"]), **_metadata(p)}
        with self.core.store.tx() as conn:
            conn.execute("UPDATE stripe_intents SET metadata = ?, description = COALESCE(?, description),"
                         " payment_method = COALESCE(?, payment_method) WHERE pi = ?",
                         (json.dumps(meta), _str(p, "description"), pm, pi))
        return self._intent(pi)

    async def confirm_intent(self, p: dict[str, Any], key: str, pi: str) -> dict[str, Any]:
        """confirm a PaymentIntent (with the secret key, or the publishable key and client_secret)"""
        self._check_client_secret(p, key, pi)
        s, _ = self._intent_row(pi)
        pm = _str(p, "payment_method") or s["payment_method"]
        if pm is None:
            raise _invalid("You cannot confirm this PaymentIntent because it's missing a payment method.",
                           "payment_method", "payment_intent_unexpected_state")
        if pm not in _TEST_CARDS:
            raise _invalid(f"No such PaymentMethod: '{pm[:40]}'", "payment_method", "resource_missing")
        return await self._confirm(pi, pm)

    async def _confirm(self, pi: str, pm: str) -> dict[str, Any]:
        s, t = self._intent_row(pi)
        status = self._intent(pi)["status"]
        if status not in ("requires_payment_method", "requires_confirmation", "requires_action"):
            raise _invalid(f"This PaymentIntent's status is {status}; it cannot be confirmed.", "intent",
                           "payment_intent_unexpected_state")
        with self.core.store.tx() as conn:
            conn.execute("UPDATE stripe_intents SET payment_method = ?, confirmed = 1, last_error = NULL,"
                         " needs_action = ? WHERE pi = ?", (pm, int(pm == "pm_card_authenticationRequired"), pi))
        if pm == "pm_card_authenticationRequired":
            if not t["opened"]:
                self.core.open_trade(pi)
            return self._intent(pi)  # requires_action: the buyer passes 3-D Secure at /stripe/3ds/{pi}
        return await self._pay(pi, pm)

    async def _pay(self, pi: str, pm: str) -> dict[str, Any]:
        try:
            view = await self.core.pay(pi, decline=_TEST_CARDS.get(pm))
        except C.CoreError as exc:
            raise self._core_error(exc) from None
        if view["state"] == "failed":
            reason = view.get("reason") or "generic_decline"
            decline = reason if reason in _DECLINE_MESSAGES else "generic_decline"
            self._set_error(pi, "card_declined", decline, _DECLINE_MESSAGES[decline])
            err = StripeError(402, "card_error", _DECLINE_MESSAGES[decline], None, "card_declined",
                              decline_code=decline, payment_intent=self._intent(pi))
            raise err
        return self._intent(pi, view["state"])

    def _set_error(self, pi: str, code: str, decline: str | None, message: str) -> None:
        error = {"type": "card_error", "code": code, "message": message,
                 **({"decline_code": decline} if decline else {})}
        with self.core.store.tx() as conn:
            conn.execute("UPDATE stripe_intents SET last_error = ?, confirmed = 0 WHERE pi = ?", (json.dumps(error), pi))

    async def cancel_intent(self, p: dict[str, Any], key: str, pi: str) -> dict[str, Any]:
        """cancel a PaymentIntent"""
        reason = _str(p, "cancellation_reason") or "requested_by_customer"
        s, t = self._intent_row(pi)
        status = self._intent(pi)["status"]
        if status == "requires_capture":  # an authorisation: give it back
            await self.core.refund(pi, request_no="cancel")
        elif status in ("succeeded", "canceled", "processing"):
            raise _invalid(f"You cannot cancel this PaymentIntent because it has a status of {status}.", "intent",
                           "payment_intent_unexpected_state")
        else:
            if not t["opened"]:
                self.core.open_trade(pi)
            await self.core.close(pi)
        with self.core.store.tx() as conn:
            conn.execute("UPDATE stripe_intents SET cancellation_reason = ? WHERE pi = ?", (reason, pi))
        out = self._intent(pi)
        if status == "requires_capture":
            out.update(status="canceled", cancellation_reason=reason, amount_capturable=0)
        return out

    async def capture_intent(self, p: dict[str, Any], key: str, pi: str) -> dict[str, Any]:
        """capture a PaymentIntent made with capture_method=manual"""
        if self._intent(pi)["status"] != "requires_capture":
            raise _invalid("This PaymentIntent could not be captured because it has a status of "
                           f"{self._intent(pi)['status']}.", "intent", "payment_intent_unexpected_state")
        with self.core.store.tx() as conn:
            conn.execute("UPDATE stripe_intents SET captured = 1 WHERE pi = ?", (pi,))
        return self._intent(pi)

    # -- refunds ---------------------------------------------------------------------------------------

    async def create_refund(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """refund a PaymentIntent (in full, or amount=...): pending, then succeeded or failed"""
        pi = _str(p, "payment_intent")
        if pi is None and _str(p, "charge"):
            pi = "pi_" + (_str(p, "charge") or "")[3:]
        if pi is None:
            raise _invalid("One of the following params should be provided for this request: payment_intent or "
                           "charge.", "payment_intent", "parameter_missing")
        self._intent_row(pi)
        amount = _int(p, "amount")
        meta, reason = _metadata(p), _str(p, "reason")
        if reason is not None and reason not in ("duplicate", "fraudulent", "requested_by_customer"):
            raise _invalid(f"Invalid reason: {reason[:40]}", "reason")
        re_id = _new_id("re")
        if self._intent(pi)["status"] != "succeeded":
            raise _invalid(f"PaymentIntent {pi} has not succeeded; there is nothing to refund.", "payment_intent",
                           "charge_not_refundable")
        with self.core.store.tx() as conn:  # first: the core's refund events are built from this row
            conn.execute("INSERT INTO stripe_refunds (re, pi, amount, metadata, reason, created) VALUES (?, ?, ?, ?, ?, ?)",
                         (re_id, pi, amount or 0, json.dumps(meta), reason, self._unix(self.core.clock.now())))
        try:
            view = await self.core.refund_pending(pi, amount, re_id)
        except BaseException:
            with self.core.store.tx() as conn:  # refused (or cancelled): no refund object is left behind
                conn.execute("DELETE FROM stripe_refunds WHERE re = ?", (re_id,))
            raise
        with self.core.store.tx() as conn:
            conn.execute("UPDATE stripe_refunds SET amount = ? WHERE re = ?", (view["refund"]["amount"], re_id))
        return self._refund(re_id)

    async def retrieve_refund(self, p: dict[str, Any], key: str, re_id: str) -> dict[str, Any]:
        """retrieve a Refund"""
        return self._refund(re_id)

    # -- Checkout Sessions ------------------------------------------------------------------------------

    async def create_session(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """create a Checkout Session (mode=payment)"""
        if _str(p, "mode") != "payment":
            raise _invalid("mode: only 'payment' is available here.", "mode")
        items = p.get("line_items")
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise _invalid("Missing required param: line_items.", "line_items", "parameter_missing")
        total, currency, lines = 0, None, []
        for n, item in enumerate(items):
            qty = _int(item, "quantity", low=1, high=1000) or 1
            if "price" in item:
                price = self.core.store.one("SELECT body FROM stripe_prices WHERE id = ?", (item["price"],))
                if price is None:
                    raise _invalid(f"No such price: '{str(item['price'])[:40]}'", f"line_items[{n}][price]",
                                   "resource_missing")
                body = json.loads(price["body"])
                unit, cur = body["unit_amount"], body["currency"]
            elif isinstance(item.get("price_data"), dict):
                pd = item["price_data"]
                unit = _int(pd, "unit_amount", required=True)
                cur = (_str(pd, "currency", required=True) or "").lower()
            else:
                raise _invalid("Each line item needs a price or price_data.", f"line_items[{n}]", "parameter_missing")
            if currency is not None and cur != currency:
                raise _invalid("All line items must have the same currency.", f"line_items[{n}]")
            currency = cur
            total += unit * qty
            lines.append({"unit_amount": unit, "quantity": qty, "currency": cur})
        if not 1 <= total <= MAX_AMOUNT:
            raise _invalid(f"The total amount must be between 1 and {MAX_AMOUNT}.", "line_items")
        now_unix = time.time()
        expires = _int(p, "expires_at", low=int(now_unix), high=int(now_unix) + 10 * 86400)
        ttl = None if expires is None else max(1.0, self._scenario_t(expires) - self.core.clock.now())
        if expires is None:
            ttl = 24 * 3600.0  # Stripe's default: a session is open for 24 hours
            expires = self._unix(self.core.clock.now() + ttl)
        cs = _new_id("cs_test")
        meta = _metadata(p)
        intent_params = {"amount": str(total), "currency": currency or "usd", "metadata": {
            **meta, **({"order_id": _str(p, "client_reference_id")} if _str(p, "client_reference_id") else {})}}
        pi_obj = await self.create_intent(intent_params, key, session=cs, lazy=True, ttl=ttl)
        with self.core.store.tx() as conn:
            conn.execute(
                "INSERT INTO stripe_sessions (cs, pi, success_url, cancel_url, expires_at, line_items,"
                " client_reference_id, metadata, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (cs, pi_obj["id"], _str(p, "success_url"), _str(p, "cancel_url"), expires, json.dumps(lines),
                 _str(p, "client_reference_id"), json.dumps(meta), self._unix(self.core.clock.now())))
        return self._session(cs)

    async def retrieve_session(self, p: dict[str, Any], key: str, cs: str) -> dict[str, Any]:
        """retrieve a Checkout Session"""
        session = self._session(cs)
        t = self.core.trade_row(session["payment_intent"], merchant_view=False)
        if t["opened"]:
            await self.core.query(session["payment_intent"])
        elif self.core.clock.now() >= t["expires_at"]:
            self.core.open_trade(session["payment_intent"])  # applies the lapsed lifetime
        return self._session(cs)

    async def expire_session(self, p: dict[str, Any], key: str, cs: str) -> dict[str, Any]:
        """expire an open Checkout Session (refused once it is complete)"""
        session = self._session(cs)
        if session["status"] != "open":
            raise _invalid(f"Only Checkout Sessions with a status of 'open' can be expired; this one is "
                           f"{session['status']}.", "session", "checkout_session_not_open")
        pi = session["payment_intent"]
        t = self.core.trade_row(pi, merchant_view=False)
        if not t["opened"]:
            self.core.open_trade(pi)
        try:
            await self.core.close(pi)
        except C.CoreError as exc:
            if exc.code == C.TRADE_HAS_SUCCESS:
                raise _invalid("This Checkout Session is complete and cannot be expired.", "session",
                               "checkout_session_complete") from None
            raise self._core_error(exc) from None
        return self._session(cs)

    # -- Products and Prices ------------------------------------------------------------------------------

    def _store_object(self, table: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.core.store.tx() as conn:
            conn.execute(f"INSERT INTO {table} (id, body, created) VALUES (?, ?, ?)",
                         (obj["id"], json.dumps(obj), obj["created"]))
        return obj

    def _load_object(self, table: str, oid: str, what: str) -> dict[str, Any]:
        row = self.core.store.one(f"SELECT body FROM {table} WHERE id = ?", (oid,))
        if row is None:
            raise _invalid(f"No such {what}: '{oid[:40]}'", "id", "resource_missing", status=404)
        return json.loads(row["body"])

    def _list(self, table: str, url: str, p: dict[str, Any]) -> dict[str, Any]:
        limit = _int(p, "limit", low=1, high=100) or 10
        rows = self.core.store.all(f"SELECT body FROM {table} ORDER BY created DESC, rowid DESC LIMIT ?", (limit,))
        return {"object": "list", "url": url, "has_more": False, "data": [json.loads(r["body"]) for r in rows]}

    async def create_product(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """create a Product"""
        name = _str(p, "name", required=True, limit=250)
        return self._store_object("stripe_products", {
            "id": _new_id("prod"), "object": "product", "active": True, "name": name,
            "description": _str(p, "description"), "metadata": _metadata(p), "livemode": False,
            "created": self._unix(self.core.clock.now())})

    async def list_products(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """list Products"""
        return self._list("stripe_products", "/v1/products", p)

    async def retrieve_product(self, p: dict[str, Any], key: str, pid: str) -> dict[str, Any]:
        """retrieve a Product"""
        return self._load_object("stripe_products", pid, "product")

    async def create_price(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """create a Price (unit_amount, currency, product or product_data[name])"""
        unit = _int(p, "unit_amount", required=True)
        currency = (_str(p, "currency", required=True) or "").lower()
        if not _CURRENCY_RE.match(currency):
            raise _invalid(f"Invalid currency: {currency[:10]}.", "currency")
        product = _str(p, "product")
        if product is None:
            data = p.get("product_data")
            if not isinstance(data, dict):
                raise _invalid("One of product or product_data is required.", "product", "parameter_missing")
            product = (await self.create_product(data, key))["id"]
        else:
            self._load_object("stripe_products", product, "product")
        return self._store_object("stripe_prices", {
            "id": _new_id("price"), "object": "price", "active": True, "currency": currency, "product": product,
            "unit_amount": unit, "type": "one_time", "metadata": _metadata(p), "livemode": False,
            "created": self._unix(self.core.clock.now())})

    async def list_prices(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """list Prices"""
        return self._list("stripe_prices", "/v1/prices", p)

    async def retrieve_price(self, p: dict[str, Any], key: str, pid: str) -> dict[str, Any]:
        """retrieve a Price"""
        return self._load_object("stripe_prices", pid, "price")

    # -- Events and webhook endpoints ----------------------------------------------------------------------

    async def list_events(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """list Events (newest first; type=... filters)"""
        limit = _int(p, "limit", low=1, high=100) or 10
        etype = _str(p, "type")
        sql = "SELECT body FROM stripe_events" + (" WHERE type = ?" if etype else "") + \
            " ORDER BY created DESC, rowid DESC LIMIT ?"
        rows = self.core.store.all(sql, ((etype,) if etype else ()) + (limit,))
        return {"object": "list", "url": "/v1/events", "has_more": False, "data": [json.loads(r["body"]) for r in rows]}

    async def retrieve_event(self, p: dict[str, Any], key: str, evt: str) -> dict[str, Any]:
        """retrieve an Event"""
        row = self.core.store.one("SELECT body FROM stripe_events WHERE id = ?", (evt,))
        if row is None:
            raise _invalid(f"No such event: '{evt[:40]}'", "id", "resource_missing", status=404)
        return json.loads(row["body"])

    async def create_endpoint(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """register a webhook endpoint (url, enabled_events[]) -> its whsec_ secret"""
        url = _str(p, "url", required=True, limit=2048) or ""
        if not re.match(r"^https?://\S+$", url):
            raise _invalid("Invalid URL: must be an http(s) URL.", "url", "url_invalid")
        events = p.get("enabled_events")
        if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
            raise _invalid("Missing required param: enabled_events.", "enabled_events", "parameter_missing")
        we, secret = _new_id("we"), "whsec_" + secrets.token_urlsafe(24)
        created = self._unix(self.core.clock.now())
        with self.core.store.tx() as conn:
            conn.execute("INSERT INTO stripe_endpoints (id, url, secret, events, created) VALUES (?, ?, ?, ?, ?)",
                         (we, url, secret, json.dumps(events), created))
        return {**self._endpoint(we), "secret": secret}

    def _endpoint(self, we: str) -> dict[str, Any]:
        row = self.core.store.one("SELECT * FROM stripe_endpoints WHERE id = ?", (we,))
        if row is None:
            raise _invalid(f"No such webhook endpoint: '{we[:40]}'", "id", "resource_missing", status=404)
        return {"id": row["id"], "object": "webhook_endpoint", "url": row["url"], "status": "enabled",
                "enabled_events": json.loads(row["events"]), "api_version": API_VERSION, "created": row["created"],
                "livemode": False, "metadata": {}}

    async def list_endpoints(self, p: dict[str, Any], key: str) -> dict[str, Any]:
        """list webhook endpoints"""
        rows = self.core.store.all("SELECT id FROM stripe_endpoints ORDER BY created, id")
        return {"object": "list", "url": "/v1/webhook_endpoints", "has_more": False,
                "data": [self._endpoint(r["id"]) for r in rows]}

    async def delete_endpoint(self, p: dict[str, Any], key: str, we: str) -> dict[str, Any]:
        """delete a webhook endpoint"""
        self._endpoint(we)
        with self.core.store.tx() as conn:
            conn.execute("DELETE FROM stripe_endpoints WHERE id = ?", (we,))
        return {"id": we, "object": "webhook_endpoint", "deleted": True}
