"""The native face: the project's own JSON API, which the reference checkout speaks.

Amounts are integer fen; errors are ``{error, field, code?}`` with Alipay-like codes
(``ACQ.TRADE_HAS_SUCCESS``...). Notifications are JSON, signed with ``X-Chaos-Signature`` (HMAC-SHA256
over the timestamp and body, the Stripe scheme: ``loadtests.service.signing``) and acknowledged by a 2xx
answer whose body is ``success``. The buyer's side is ``POST /trades/{trade}/pay`` (the wallet or bank
app confirming the payment).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from sim.scenario import parse_duration

from loadtests.service import signing
from loadtests.service.psp import core as C
from loadtests.service.psp.faces import Face
from loadtests.service.store import json_text
from loadtests.service.web import ID_PATTERN, MAX_AMOUNT, ApiError, json_response

_compact = json_text  # compact JSON (orjson when installed); the bodies hold ASCII ids and integers only

Id = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits and _.:- ; at most 64")]
Amount = Annotated[int, Field(gt=0, le=MAX_AMOUNT, description="fen (1/100 CNY), at most 10 million CNY")]
TradePath = Annotated[str, Path(pattern=ID_PATTERN)]
AgreementPath = Annotated[str, Path(pattern=ID_PATTERN)]

# The core's refusal codes as this API names them (Alipay's business codes where Alipay has one).
_CODES = {C.TRADE_NOT_EXIST: "ACQ.TRADE_NOT_EXIST", C.TRADE_HAS_SUCCESS: "ACQ.TRADE_HAS_SUCCESS",
          C.TRADE_HAS_CLOSE: "ACQ.TRADE_HAS_CLOSE"}


class TradeCreate(BaseModel):
    model_config = ConfigDict(strict=True)
    trade: Id = Field(description="the merchant's trade number (out_trade_no); reuse it to retry idempotently")
    order: Id
    user: Id
    merchant: Id = "m1"
    amount: Amount
    notify_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2048)] | None = None
    timeout_express: Annotated[str, Field(pattern=r"^[0-9]{1,9}(\.[0-9]{1,6})?(ms|s|min|m|h|d)$",
                                          description='trade lifetime, e.g. "15m"; default gateway.trade_ttl')] | None = None
    method: Literal["wallet", "card"] | None = Field(
        None, description="what the buyer pays with: the bank's buyer account debits the wallet balance or the "
        "card line (user.wallet_balance / card_limit); default card")


class RefundBody(BaseModel):
    model_config = ConfigDict(strict=True)
    amount: Amount | None = Field(None, description="must equal the trade amount (full refunds only)")
    refund_id: Id | None = None


class AgreementCreate(BaseModel):
    model_config = ConfigDict(strict=True)
    agreement: Id
    order: Id
    user: Id
    merchant: Id = "m1"
    amount: Amount


class TradeView(BaseModel):
    trade: str
    order: str
    user: str
    merchant: str
    amount: int
    state: Literal["created", "processing", "succeeded", "failed", "unknown", "closed", "refunded"]
    reason: str | None = None
    expires_at: float
    refunded: int = 0


_VIEW_KEYS = ("trade", "order", "user", "merchant", "amount", "state", "reason", "expires_at", "refunded")


_TRADE_STATUS = {"succeeded": "TRADE_SUCCESS", "refunded": "TRADE_CLOSED", "closed": "TRADE_CLOSED",
                 "created": "WAIT_BUYER_PAY", "failed": "WAIT_BUYER_PAY", "processing": "WAIT_BUYER_PAY",
                 "unknown": "WAIT_BUYER_PAY"}


def _view(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view[k] for k in _VIEW_KEYS}


def _api_error(exc: C.CoreError) -> ApiError:
    return ApiError(exc.status, exc.error, exc.field, _CODES.get(exc.code or "", exc.code), **exc.extra)


async def create_trade_response(svc: C.ProviderCore, body: TradeCreate) -> Response:
    """``POST /trades`` once its body is validated (the route's, and ``psp.app.FastPay``'s)."""
    ttl = None
    if body.timeout_express is not None:
        try:
            ttl = parse_duration(body.timeout_express)
        except ValueError as exc:
            raise ApiError(422, f"timeout_express: {exc}", "timeout_express") from None
        if ttl <= 0:
            raise ApiError(422, "timeout_express: expected a positive duration", "timeout_express")
    # gateway.trade_creation = on_open: a pay link, created at the gateway when the buyer opens it
    lazy = svc.conditions.current().gateway.trade_creation == "on_open"
    try:
        view, created = await svc.create_trade(body.trade, body.order, body.user, body.amount, body.merchant,
                                               body.notify_url, ttl, lazy=lazy,
                                               meta={"method": body.method} if body.method else None)
    except C.CoreError as exc:
        raise _api_error(exc) from None
    return json_response(_view(view), 201 if created else 200)


class NativeFace(Face):
    name = "native"

    def notification(self, note: C.Note) -> tuple[bytes, dict[str, str]]:
        t = note.trade
        if note.kind in ("refund.succeeded", "refund.failed"):
            body = _compact({"notify_id": note.notify_id, "notify_type": "refund_status_sync", "trade": t["trade"],
                               "order": t["order"], "amount": t["amount"], "trade_status": _TRADE_STATUS[t["state"]],
                               "refund_status": "REFUND_SUCCESS" if note.kind == "refund.succeeded" else "REFUND_FAILED",
                               "refund_id": note.ref, "attempt": note.attempt}).encode()
            return body, {"Content-Type": "application/json", signing.HEADER: signing.sign(self.core.secret, body)}
        body = _compact({"notify_id": note.notify_id, "notify_type": "trade_status_sync", "trade": t["trade"],
                           "order": t["order"], "amount": t["amount"], "trade_status": "TRADE_SUCCESS",
                           "attempt": note.attempt}).encode()
        return body, {"Content-Type": "application/json", signing.HEADER: signing.sign(self.core.secret, body)}

    def acknowledged(self, status: int, body: bytes) -> bool:
        return 200 <= status < 300 and body.strip() == b"success"

    def merchant_config(self, base_url: str) -> dict[str, Any]:
        return {"api": base_url, "signature": f"{signing.HEADER} (HMAC-SHA256 with the notify secret)"}

    def router(self) -> APIRouter:
        svc = self.core
        r = APIRouter()

        async def call(coro: Any) -> Any:
            try:
                return await coro
            except C.CoreError as exc:
                raise _api_error(exc) from None

        @r.post("/trades", tags=["trades"], status_code=201, summary="create a trade (idempotent on the same parameters)")
        async def create_trade(body: TradeCreate) -> Response:
            return await create_trade_response(svc, body)

        @r.get("/trades/{trade}", tags=["trades"], response_model=TradeView, summary="query a trade")
        async def query_trade(trade: TradePath) -> Response:
            return json_response(_view(await call(svc.query(trade))))

        @r.post("/trades/{trade}/pay", tags=["trades"], response_model=TradeView,
                summary="the buyer confirms payment: bank debit; answers succeeded, failed or unknown")
        async def pay(trade: TradePath) -> Response:
            return json_response(_view(await call(svc.pay(trade))))

        @r.post("/trades/{trade}/close", tags=["trades"],
                summary="close an unpaid trade (409 ACQ.TRADE_HAS_SUCCESS once paid, TRADE_CLOSE_TOO_EARLY "
                        "younger than gateway.min_close_age)")
        async def close(trade: TradePath) -> Response:
            out = await call(svc.close(trade, svc.conditions.current().gateway.min_close_age))
            return json_response({"result": out["result"], **_view(out)})

        @r.post("/trades/{trade}/refund", tags=["trades"], response_model=TradeView, summary="refund a paid trade in full")
        async def refund(trade: TradePath, body: RefundBody | None = None) -> Response:
            row = await call(_row(trade))
            if body is not None and body.amount is not None and body.amount != row["amount"]:
                raise ApiError(422, f"amount: only full refunds are supported (the trade is {row['amount']} fen)",
                               "amount")
            # The scenario's refund latency and failure (gateway.refund_*): a pending refund whose outcome
            # is notified to the trade's notify_url; instant and synchronous by default.
            terms = svc.refund_terms()
            if terms:
                terms.update(notify=row["notify_url"] is not None, notify_url=row["notify_url"])
            out = await call(svc.refund(trade, **terms))
            refund = out.get("refund")
            return json_response({**_view(out), **({"refund_state": refund["state"]} if refund else {})})

        async def _row(trade: str) -> Any:
            return svc.trade_row(trade)

        @r.post("/trades/{trade}/reverse", tags=["trades"],
                summary="return a debit the bank made on a closed trade (a 长款 found by reconciliation); "
                        "409 TRADE_NOT_CLOSED, NO_DEBIT")
        async def reverse(trade: TradePath) -> Response:
            out = await call(svc.reverse_debit(trade))
            return json_response({"result": out["result"], **_view(out)})

        @r.get("/statement", tags=["statement"],
               summary="the bank's statement: debits made in (since, until] (scenario s), oldest first, paged")
        async def statement(since: float = Query(-1.0, description="exclusive lower bound, scenario seconds"),
                            until: float | None = Query(None, description="inclusive upper bound; default now"),
                            offset: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000)) -> Response:
            now = svc.clock.now()
            until = now if until is None else until
            for name, value in (("since", since), ("until", until)):
                if not math.isfinite(value):
                    raise ApiError(422, f"{name}: expected a finite number of scenario seconds, found {value!r}", name)
            return json_response(svc.statement(since, until, offset, limit))

        @r.post("/bnpl/agreements", tags=["bnpl"], status_code=201,
                summary="authorize pay-after-use within the credit limit")
        async def authorize(body: AgreementCreate) -> Response:
            out = await call(svc.authorize(body))
            created = out.pop("created", False)
            return json_response(out, 201 if created else 200)

        @r.get("/bnpl/agreements/{agreement}", tags=["bnpl"], summary="query an agreement")
        async def get_agreement(agreement: AgreementPath) -> Response:
            row = await call(_agreement(agreement))
            return json_response(C.agreement_view(row))

        async def _agreement(agreement: str) -> Any:
            return svc.agreement_row(agreement)

        @r.post("/bnpl/agreements/{agreement}/finish", tags=["bnpl"], summary="the merchant's finish call: deduction starts")
        async def finish(agreement: AgreementPath) -> Response:
            return json_response(await call(svc.finish(agreement)))

        @r.post("/bnpl/agreements/{agreement}/cancel", tags=["bnpl"], summary="cancel an authorized agreement")
        async def cancel(agreement: AgreementPath) -> Response:
            return json_response(await call(svc.cancel_agreement(agreement)))

        @r.post("/bnpl/agreements/{agreement}/return", tags=["bnpl"],
                summary="an accepted return: cancel while nothing is collected, refund what was collected")
        async def return_(agreement: AgreementPath) -> Response:
            return json_response(await call(svc.return_agreement(agreement)))

        @r.post("/bnpl/agreements/{agreement}/repay", tags=["bnpl"], summary="the buyer repays by hand")
        async def repay(agreement: AgreementPath) -> Response:
            return json_response(await call(svc.repay(agreement)))

        return r
