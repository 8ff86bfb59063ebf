"""The mock payment provider: gateway, bank and BNPL provider in one HTTP service.

Behaves like the real ones described in ``docs/domain.md``, at the scenario's latencies and
failure rates (scaled by the time scale):

* **Trades** (``out_trade_no`` = ``trade``): create (idempotent on the same parameters, a conflict on
  others — ``policies.idempotent_create``), pay (the buyer's wallet or bank app confirming: a debit
  through the simulated bank), query, close (``policies.gateway_close_result``: refused once paid with
  ``ACQ.TRADE_HAS_SUCCESS``), refund.
* **The bank**: ``bank.channels`` concurrent debits, ``bank.latency``, declines, risk-control blocks
  and holds, the single-payment limit, and ``bank.response_loss`` — the debit happens but the gateway
  never hears, times out after ``gateway.timeout`` and leaves the trade ``unknown`` until its
  ``gateway.bank_query_schedule`` asks the bank again.
* **Notifications**: a durable outbox; each attempt is a real, signed HTTP POST to the trade's
  ``notify_url`` with ``gateway.notify_latency``, ``notify_loss`` and ``notify_duplicate``, acknowledged
  by a 2xx answer whose body is ``success`` within ``notify_ack_timeout``, retried on
  ``gateway.notify_schedule`` (``policies.notify_delay``).
* **BNPL** (pay after use): authorize within ``bnpl.credit_limit``, finish, deductions with
  ``deduction_failure`` and ``deduction_retry_schedule``, the buyer repaying by hand after
  ``user_repay_delay``, ``sync_lag`` between the payment side and the credit side, compensation of the
  merchant after ``compensation_after`` and the overdue mark (``policies.bnpl_overdue_decision``).

Money moves only through the domain entities (``Trade.debit``/``refund``, ``Agreement.deducted``/
``compensate``) posting to the SQLite ledger, each in the same transaction as the state change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from sim.domain import policies
from sim.domain.entities import Agreement, Trade
from sim.domain.ledger import CHARGE, transfer
from sim.domain.states import TRADE_PAYABLE, AgreementState, TradeState
from sim.scenario import parse_duration

from loadtests.service import base, signing
from loadtests.service.http11 import HttpClient
from loadtests.service.runtime import Limiter
from loadtests.service.store import LEDGER_SCHEMA, Job, SqlLedger, ledger_summary
from loadtests.service.web import (ID_PATTERN, MAX_AMOUNT, ApiError, InFlightLimit, admin_router,
                                   install_error_handlers, json_response, require_admin)

log = logging.getLogger("checkout_chaos.provider")
T, A = TradeState, AgreementState

SCHEMA = LEDGER_SCHEMA + """
CREATE TABLE IF NOT EXISTS trades (
    trade TEXT PRIMARY KEY, ord TEXT NOT NULL, usr TEXT NOT NULL, merchant TEXT NOT NULL,
    amount INTEGER NOT NULL, notify_url TEXT, state TEXT NOT NULL, expires_at REAL NOT NULL,
    created_t REAL NOT NULL, reason TEXT, refunded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS notifications (
    notify_id TEXT PRIMARY KEY, trade TEXT NOT NULL, ord TEXT NOT NULL, url TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_t REAL NOT NULL, acked_t REAL
);
CREATE TABLE IF NOT EXISTS agreements (
    agreement TEXT PRIMARY KEY, ord TEXT NOT NULL, usr TEXT NOT NULL, merchant TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, expires_at REAL NOT NULL, created_t REAL NOT NULL,
    paid_by_user INTEGER NOT NULL DEFAULT 0, merchant_paid INTEGER NOT NULL DEFAULT 0,
    credit_paid INTEGER NOT NULL DEFAULT 0, finish_t REAL
);
CREATE INDEX IF NOT EXISTS agreements_user ON agreements (usr);
"""

Id = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits and _.:- ; at most 64")]
Amount = Annotated[int, Field(gt=0, le=MAX_AMOUNT, description="fen (1/100 CNY), at most 10 million CNY")]
TradePath = Annotated[str, Path(pattern=ID_PATTERN)]
AgreementPath = Annotated[str, Path(pattern=ID_PATTERN)]

# Domain refusals, named like Alipay's business error codes.
_NOT_PAYABLE = {
    T.SUCCEEDED: ("ACQ.TRADE_HAS_SUCCESS", "trade already paid"),
    T.REFUNDED: ("ACQ.TRADE_HAS_SUCCESS", "trade already paid (and refunded)"),
    T.CLOSED: ("ACQ.TRADE_HAS_CLOSE", "trade closed"),
    T.PROCESSING: ("TRADE_IN_PROGRESS", "a debit for this trade is in progress"),
    T.UNKNOWN: ("TRADE_IN_PROGRESS", "the outcome of this trade's debit is not known yet"),
}


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


def _trade_view(row: Any, state: str | None = None) -> dict[str, Any]:
    return {"trade": row["trade"], "order": row["ord"], "user": row["usr"], "merchant": row["merchant"],
            "amount": row["amount"], "state": state or row["state"], "reason": row["reason"],
            "expires_at": row["expires_at"], "refunded": row["refunded"]}


def _agreement_view(row: Any) -> dict[str, Any]:
    return {"agreement": row["agreement"], "order": row["ord"], "user": row["usr"], "merchant": row["merchant"],
            "amount": row["amount"], "state": row["state"], "expires_at": row["expires_at"],
            "paid_by_user": bool(row["paid_by_user"]), "merchant_paid": bool(row["merchant_paid"]),
            "credit_side_paid": bool(row["credit_paid"])}


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


class Provider(base.ServiceBase):
    name = "provider"
    schema = SCHEMA

    def __init__(self, config: base.ServiceConfig) -> None:
        super().__init__(config)
        self.secret = config.notify_secret.encode()
        cur = self.conditions.current
        self.gateway_workers = Limiter(lambda: cur().gateway.workers)
        self.bank_channels = Limiter(lambda: cur().bank.channels)
        self.waiting: dict[str, asyncio.Future] = {}  # trade -> the gateway awaiting the bank's answer
        self.bank_inflight: set[str] = set()  # debits the bank is working on (lost on a crash)
        self.bank_declined: dict[str, str] = {}  # declines whose answer the gateway never got
        self.bank_held: set[str] = set()  # debits risk control holds (a durable bank_release job each)
        self.sent_at: dict[str, float] = {}  # trade -> when its debit left for the bank (scenario s)
        self.http = HttpClient()
        self._httpx: Any = None
        self._timed_out = object()  # what a gateway's wait resolves to when gateway.timeout fires
        self._tasks: set[asyncio.Task] = set()

    # -- plumbing -----------------------------------------------------------------------------------

    def job_handlers(self) -> dict:
        return {"notify": self._deliver, "bank_query": self._bank_query, "bank_release": self._bank_release,
                "trade_expire": self._trade_expire, "bnpl_deduct": self._bnpl_deduct,
                "bnpl_sync": self._bnpl_sync, "bnpl_compensate": self._bnpl_compensate,
                "bnpl_expire": self._bnpl_expire, "bnpl_repay": self._bnpl_repay}

    def recover(self) -> None:
        """After a crash: a debit that was in flight either never reached the bank (its trade is still
        payable, nothing to do) or was made while the gateway had not heard yet (the charge is in the
        ledger, the trade still payable): those trades become ``unknown`` and the gateway's query
        schedule finds the debit. (``processing`` rows, from databases of earlier versions, likewise.)"""
        self.bank_held = {job.key for job in self.store.load_jobs() if job.kind == "bank_release"}
        now = self.clock.now()
        rows = self.store.all(
            "SELECT * FROM trades WHERE state = ? OR (state IN (?, ?) AND EXISTS "
            "(SELECT 1 FROM txns WHERE txns.txn = trades.trade || '-charge'))",
            (T.PROCESSING.value, T.CREATED.value, T.FAILED.value))
        if not rows:
            return
        gaps = self.conditions.current().gateway.bank_query_schedule.gaps
        with self.store.tx():
            for row in rows:
                trade = self._sent_to_bank(row) if T(row["state"]) in TRADE_PAYABLE else self._entity(row)
                trade.to(T.UNKNOWN)
                self._save_state(row["trade"], T.UNKNOWN)
                self.store.emit(now, "trade.unknown", "gateway", row["ord"], trade=row["trade"], recovered=True)
                self.store.schedule("bank_query", row["trade"], now + (gaps[0] if gaps else 0.0), 1)

    async def aclose(self) -> None:
        for task in list(self._tasks):  # bank debits in flight: lost, as in a crash (see recover)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
        if self._httpx is not None:
            await self._httpx.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def gateway_work(self) -> None:
        """One unit of gateway work: a worker for ``gateway.service_time`` (queueing when all are busy)."""
        async with self.gateway_workers:
            await self.clock.sleep(self.conditions.sample("gateway.service_time"))

    def _trade(self, trade: str) -> Any:
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (trade,))
        if row is None:
            raise ApiError(404, f"no such trade {trade!r}", "trade", "ACQ.TRADE_NOT_EXIST")
        return row

    def _entity(self, row: Any) -> Trade:
        trade = Trade(row["trade"], row["ord"], row["usr"], row["amount"], row["expires_at"])
        trade.state = T(row["state"])
        trade.refunded = row["refunded"]
        return trade

    def _save_state(self, trade: str, state: TradeState, reason: str | None = None) -> None:
        self.store.conn.execute("UPDATE trades SET state = ?, reason = ? WHERE trade = ?", (state.value, reason, trade))

    # -- trades -------------------------------------------------------------------------------------

    async def create_trade(self, body: TradeCreate) -> Response:
        cond = self.conditions.current()
        ttl = cond.gateway.trade_ttl
        if body.timeout_express is not None:
            try:
                ttl = parse_duration(body.timeout_express)
            except ValueError as exc:
                raise ApiError(422, f"timeout_express: {exc}", "timeout_express") from None
            if ttl <= 0:
                raise ApiError(422, "timeout_express: expected a positive duration", "timeout_express")
        params = (body.order, body.user, body.merchant, body.amount, body.notify_url)
        await self.gateway_work()
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (body.trade,))
        existing = (row["ord"], row["usr"], row["merchant"], row["amount"], row["notify_url"]) if row else None
        decision = policies.idempotent_create(existing, params)
        if decision == "conflict":
            raise ApiError(409, f"trade {body.trade!r} exists with other parameters", "trade",
                           "TRADE_PARAMS_CONFLICT", trade_state=row["state"])
        if decision == "replay":
            return json_response(_trade_view(row), 200)
        now = self.clock.now()
        expires_at = now + ttl
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO trades (trade, ord, usr, merchant, amount, notify_url, state, expires_at, created_t)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (body.trade, body.order, body.user, body.merchant, body.amount, body.notify_url, T.CREATED.value,
                 expires_at, now),
            )
            self.store.emit(now, "trade.created", "gateway", body.order, trade=body.trade, amount=body.amount,
                            expires_at=round(expires_at, 6), user=body.user)
            if expires_at <= self.observation_end:  # otherwise expired lazily, when someone tries to pay
                self.store.schedule("trade_expire", body.trade, expires_at)
        return json_response(_trade_view(self._trade(body.trade)), 201)

    def _refuse_pay(self, trade: str, state: TradeState) -> ApiError:
        code, message = _NOT_PAYABLE.get(state, ("TRADE_IN_PROGRESS", "a debit for this trade is in progress"))
        return ApiError(409, message, "trade", code, trade_state=state.value)

    async def pay(self, trade_id: str) -> Response:
        """The buyer confirms payment in the wallet/bank app: debit through the bank, wait at most
        ``gateway.timeout`` for its answer, answer ``succeeded``, ``failed`` or ``unknown``."""
        row = self._trade(trade_id)
        state = T(row["state"])
        if trade_id in self.waiting:
            raise self._refuse_pay(trade_id, T.PROCESSING)
        if state in TRADE_PAYABLE and self.clock.now() >= row["expires_at"]:
            self._close_expired(row)
            state = T.CLOSED
        if state not in TRADE_PAYABLE:
            raise self._refuse_pay(trade_id, state)
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self.waiting[trade_id] = answer
        sent = False
        try:
            await self.gateway_work()
            row = self._trade(trade_id)  # it may have been closed while queued
            state = T(row["state"])
            if state not in TRADE_PAYABLE:
                raise self._refuse_pay(trade_id, state)
            self.sent_at[trade_id] = self.clock.now()
            sent = True
            self._spawn(self._bank_debit(row))
            # The gateway waits at most gateway.timeout; the bank task goes on regardless (a timer that
            # completes a future is much cheaper than wait_for + shield on this hot path).
            timer = loop.call_later(self.wall_timeout(self.conditions.current().gateway.timeout),
                                    _resolve, answer, self._timed_out)
            try:
                await answer
            finally:
                timer.cancel()
        finally:
            self.waiting.pop(trade_id, None)
            if sent and (not answer.done() or answer.cancelled() or answer.result() is self._timed_out):
                self._mark_unknown(trade_id)  # timed out, or the request was cancelled: outcome unknown
                answer = None
            self.sent_at.pop(trade_id, None)
        if answer is not None and answer.result() == "ok":  # the common case: no need to read it back
            return json_response(_trade_view(row, T.SUCCEEDED.value))
        return json_response(_trade_view(self._trade(trade_id)))

    def _sent_to_bank(self, row: Any) -> Trade:
        """In a tx: the trade entity moved to ``processing``, with the event of when the debit left.

        ``processing`` is never stored on its own: while the bank works, the gateway knows it from
        ``waiting`` (queries and closes answer accordingly); the state that reaches the database is the
        outcome, in one commit with the ``trade.processing`` event. A debit in flight at a crash
        therefore leaves its trade payable, as it was, unless the money moved (see ``recover``)."""
        trade = self._entity(row)
        trade.to(T.PROCESSING)
        self.store.emit(self.sent_at.get(row["trade"], self.clock.now()), "trade.processing", "gateway",
                        row["ord"], trade=row["trade"])
        return trade

    def _mark_unknown(self, trade_id: str) -> None:
        row = self._trade(trade_id)
        if T(row["state"]) not in TRADE_PAYABLE:
            return
        now = self.clock.now()
        gaps = self.conditions.current().gateway.bank_query_schedule.gaps
        with self.store.tx():
            trade = self._sent_to_bank(row)
            trade.to(T.UNKNOWN)
            self._save_state(trade_id, T.UNKNOWN)
            self.store.emit(now, "trade.unknown", "gateway", row["ord"], trade=trade_id)
            if gaps:
                self.store.schedule("bank_query", trade_id, now + gaps[0], 1)

    async def _bank_debit(self, row: Any) -> None:
        """The simulated bank: a channel for ``bank.latency``, then approve, decline, block or hold."""
        trade_id = row["trade"]
        self.bank_inflight.add(trade_id)
        try:
            c = self.conditions
            async with self.bank_channels:
                await self.clock.sleep(c.sample("bank.latency"))
            bank = c.current().bank
            if row["amount"] > round(bank.single_payment_limit * 100):
                outcome, reason = "failed", "limit"
            elif c.chance("bank.risk_block", bank.risk_block_probability):
                outcome, reason = "failed", "risk_blocked"
            elif c.chance("bank.decline", bank.decline_probability):
                outcome, reason = "failed", "declined"
            elif c.chance("bank.risk_hold", bank.risk_hold_probability):
                release = self.clock.now() + c.sample("bank.risk_hold_duration")
                with self.store.tx():
                    self.store.schedule("bank_release", trade_id, release)
                self.bank_held.add(trade_id)
                return
            else:
                outcome, reason = "ok", None
            self._bank_answer(trade_id, outcome, reason, lost=c.chance("bank.response_loss", bank.response_loss))
        finally:
            self.bank_inflight.discard(trade_id)

    def _bank_answer(self, trade_id: str, outcome: str, reason: str | None, lost: bool) -> None:
        """The bank's result: applied to the trade if the gateway is still waiting for it, otherwise
        only the money moves (the gateway learns it from a later query)."""
        waiting = None if lost else self.waiting.get(trade_id)
        row = self._trade(trade_id)
        now = self.clock.now()
        # (a timed-out gateway has resolved its future with _timed_out already: not informed)
        informed = waiting is not None and not waiting.done() and T(row["state"]) in TRADE_PAYABLE
        with self.store.tx():
            trade = self._sent_to_bank(row) if informed else None
            if outcome == "ok":
                ledger = SqlLedger(self.store, now, row["ord"], "bank", trade=trade_id)
                if trade is not None:
                    trade.debit(ledger, f"{trade_id}-charge")
                    self._succeeded(row, now)
                else:
                    ledger.post(transfer(f"{trade_id}-charge", CHARGE, f"user:{row['usr']}", "clearing", row["amount"]))
            elif trade is not None:
                trade.to(T.FAILED)
                self._save_state(trade_id, T.FAILED, reason)
                self.store.emit(now, "trade.failed", "gateway", row["ord"], trade=trade_id, reason=reason)
            else:
                self.bank_declined[trade_id] = reason or "declined"
        if informed:
            waiting.set_result(outcome)

    def _succeeded(self, row: Any, now: float) -> None:
        """The gateway knows the trade is paid: state, event and the notification to send (in a tx)."""
        trade_id = row["trade"]
        self._save_state(trade_id, T.SUCCEEDED)
        self.store.emit(now, "trade.succeeded", "gateway", row["ord"], trade=trade_id, amount=row["amount"])
        if row["notify_url"]:
            notify_id = f"{trade_id}-n"
            self.store.conn.execute(
                "INSERT OR IGNORE INTO notifications (notify_id, trade, ord, url, amount, state, created_t)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (notify_id, trade_id, row["ord"], row["notify_url"], row["amount"], now),
            )
            self.store.schedule("notify", notify_id, now, 1)

    async def _bank_release(self, job: Job) -> None:
        """Risk control releases a held debit: it completes now."""
        self.bank_inflight.add(job.key)
        self.bank_held.discard(job.key)
        try:
            with self.store.tx():
                self.store.done(job)
            self._bank_answer(job.key, "ok", None, lost=False)
        finally:
            self.bank_inflight.discard(job.key)

    async def _bank_query(self, job: Job) -> None:
        """The gateway asks the bank about an ``unknown`` debit (``gateway.bank_query_schedule``)."""
        row = self._trade(job.key)
        if T(row["state"]) is not T.UNKNOWN:
            return
        await self.gateway_work()
        row = self._trade(job.key)
        if T(row["state"]) is not T.UNKNOWN:
            return
        now = self.clock.now()
        charged = self.store.one("SELECT 1 FROM txns WHERE txn = ?", (f"{job.key}-charge",)) is not None
        pending = job.key in self.bank_inflight or job.key in self.bank_held
        with self.store.tx():
            self.store.done(job)
            if charged:
                self._entity(row).to(T.SUCCEEDED)
                self._succeeded(row, now)
            elif pending:
                gap = policies.notify_delay(self.conditions.current().gateway.bank_query_schedule.gaps, job.attempt + 1)
                if gap is not None:  # a spent schedule leaves the trade unknown: stuck
                    self.store.schedule("bank_query", job.key, now + gap, job.attempt + 1)
            else:  # the bank has no debit in flight: declined, or never reached it
                reason = self.bank_declined.pop(job.key, "error")
                self._entity(row).to(T.FAILED)
                self._save_state(job.key, T.FAILED, reason)
                self.store.emit(now, "trade.failed", "gateway", row["ord"], trade=job.key, reason=reason)

    def _close_expired(self, row: Any) -> None:
        now = self.clock.now()
        with self.store.tx():
            self._entity(row).to(T.CLOSED)
            self._save_state(row["trade"], T.CLOSED, "expired")
            self.store.emit(now, "trade.closed", "gateway", row["ord"], trade=row["trade"], reason="expired")

    async def _trade_expire(self, job: Job) -> None:
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (job.key,))
        if row is not None and T(row["state"]) in TRADE_PAYABLE and job.key not in self.waiting:
            self._close_expired(row)

    async def query(self, trade_id: str) -> Response:
        self._trade(trade_id)
        await self.gateway_work()
        row = self._trade(trade_id)
        state = T.PROCESSING.value if trade_id in self.waiting and T(row["state"]) in TRADE_PAYABLE else None
        return json_response(_trade_view(row, state))

    async def close(self, trade_id: str) -> Response:
        """``alipay.trade.close``: closes an unpaid trade; refused once paid or while a debit is in flight."""
        self._trade(trade_id)
        await self.gateway_work()
        row = self._trade(trade_id)
        state = T.PROCESSING if trade_id in self.waiting else T(row["state"])
        result = policies.gateway_close_result(state)
        now = self.clock.now()
        if result == "closed":
            if state is not T.CLOSED:
                with self.store.tx():
                    self._entity(row).to(T.CLOSED)
                    self._save_state(trade_id, T.CLOSED, "closed")
                    self.store.emit(now, "trade.closed", "gateway", row["ord"], trade=trade_id)
            return json_response({"result": "closed", **_trade_view(self._trade(trade_id))})
        if result == "already_paid":
            with self.store.tx():
                self.store.emit(now, "trade.close_refused", "gateway", row["ord"], trade=trade_id)
            raise ApiError(409, "trade already paid: cannot close", "trade", "ACQ.TRADE_HAS_SUCCESS",
                           result=result, trade_state=state.value)
        raise ApiError(409, "a debit for this trade is in progress or unknown: cannot close yet", "trade",
                       "TRADE_IN_PROGRESS", result=result, trade_state=state.value)

    async def refund(self, trade_id: str, body: RefundBody | None) -> Response:
        row = self._trade(trade_id)
        if body is not None and body.amount is not None and body.amount != row["amount"]:
            raise ApiError(422, f"amount: only full refunds are supported (the trade is {row['amount']} fen)", "amount")
        await self.gateway_work()
        row = self._trade(trade_id)
        state = T(row["state"])
        if state is T.REFUNDED:
            return json_response(_trade_view(row))
        if state is not T.SUCCEEDED:
            raise ApiError(409, f"trade is {state.value}: only a paid trade can be refunded", "trade",
                           "TRADE_NOT_PAID", trade_state=state.value)
        now = self.clock.now()
        with self.store.tx() as conn:
            trade = self._entity(row)
            trade.refund(SqlLedger(self.store, now, row["ord"], "gateway", trade=trade_id), f"{trade_id}-refund")
            self._save_state(trade_id, T.REFUNDED, row["reason"])
            conn.execute("UPDATE trades SET refunded = ? WHERE trade = ?", (trade.refunded, trade_id))
            self.store.emit(now, "trade.refunded", "gateway", row["ord"], trade=trade_id, amount=trade.refunded)
        return json_response(_trade_view(self._trade(trade_id)))

    # -- notifications ------------------------------------------------------------------------------

    async def _post(self, url: str, body: bytes, timeout: float) -> bool:
        headers = {"Content-Type": "application/json", signing.HEADER: signing.sign(self.secret, body)}
        try:
            if url.startswith("http://"):
                resp = await self.http.request("POST", url, body, headers, timeout)
                status, text = resp.status, resp.body
            else:
                if self._httpx is None:
                    import httpx

                    self._httpx = httpx.AsyncClient()
                r = await self._httpx.post(url, content=body, headers=headers, timeout=timeout)
                status, text = r.status_code, r.content
        except Exception:  # refused, reset, timed out: not acknowledged
            return False
        return 200 <= status < 300 and text.strip() == b"success"

    async def _deliver(self, job: Job) -> None:
        """One delivery attempt of a notification (the outbox row ``job.key``)."""
        n = self.store.one("SELECT * FROM notifications WHERE notify_id = ?", (job.key,))
        if n is None or n["state"] != "pending":
            return
        c = self.conditions
        gw = c.current().gateway
        attempt = job.attempt
        sent_at = self.clock.now()
        lost = c.chance("gateway.notify_loss", gw.notify_loss)
        acked = False
        if not lost:
            await self.clock.sleep(c.sample("gateway.notify_latency"))
            body = json.dumps({"notify_id": job.key, "notify_type": "trade_status_sync", "trade": n["trade"],
                               "order": n["ord"], "amount": n["amount"], "trade_status": "TRADE_SUCCESS",
                               "attempt": attempt}, separators=(",", ":")).encode()
            timeout = self.wall_timeout(gw.notify_ack_timeout)
            if c.chance("gateway.notify_duplicate", gw.notify_duplicate):
                self._spawn(self._post(n["url"], body, timeout))
            acked = await self._post(n["url"], body, timeout)
        now = self.clock.now()
        gap = policies.notify_delay(gw.notify_schedule.gaps, attempt)
        with self.store.tx() as conn:
            self.store.done(job)
            ev = {"trade": n["trade"], "notify_id": job.key, "attempt": attempt}
            self.store.emit(sent_at, "notify.sent", "gateway", n["ord"], **ev)
            if lost:
                self.store.emit(sent_at, "notify.lost", "gateway", n["ord"], **ev)
            if acked:
                conn.execute("UPDATE notifications SET state = 'acked', attempts = ?, acked_t = ? WHERE notify_id = ?",
                             (attempt, now, job.key))
            elif gap is None:
                conn.execute("UPDATE notifications SET state = 'given_up', attempts = ? WHERE notify_id = ?",
                             (attempt, job.key))
            else:
                conn.execute("UPDATE notifications SET attempts = ? WHERE notify_id = ?", (attempt, job.key))
                self.store.schedule("notify", job.key, sent_at + gap, attempt + 1)

    # -- BNPL ---------------------------------------------------------------------------------------

    def _agreement_row(self, agreement: str) -> Any:
        row = self.store.one("SELECT * FROM agreements WHERE agreement = ?", (agreement,))
        if row is None:
            raise ApiError(404, f"no such agreement {agreement!r}", "agreement", "AGREEMENT_NOT_EXIST")
        return row

    def _agreement(self, row: Any) -> Agreement:
        a = Agreement(row["agreement"], row["ord"], row["usr"], row["merchant"], row["amount"], row["expires_at"])
        a.state = A(row["state"])
        a.paid_by_user, a.merchant_paid = bool(row["paid_by_user"]), bool(row["merchant_paid"])
        return a

    def _save_agreement(self, a: Agreement, **extra: Any) -> None:
        sets = "state = ?, paid_by_user = ?, merchant_paid = ?" + "".join(f", {k} = ?" for k in extra)
        self.store.conn.execute(f"UPDATE agreements SET {sets} WHERE agreement = ?",
                                (a.state.value, int(a.paid_by_user), int(a.merchant_paid), *extra.values(), a.id))

    def _emit_bnpl(self, t: float, type: str, row: Any, **fields: Any) -> None:
        self.store.emit(t, type, "bnpl", row["ord"], agreement=row["agreement"], **fields)

    async def authorize(self, body: AgreementCreate) -> Response:
        """Sign + credit order (pay after use): authorized within the buyer's credit limit, else declined."""
        await self.gateway_work()
        row = self.store.one("SELECT * FROM agreements WHERE agreement = ?", (body.agreement,))
        params = (body.order, body.user, body.merchant, body.amount)
        existing = (row["ord"], row["usr"], row["merchant"], row["amount"]) if row else None
        decision = policies.idempotent_create(existing, params)
        if decision == "conflict":
            raise ApiError(409, f"agreement {body.agreement!r} exists with other parameters", "agreement",
                           "AGREEMENT_PARAMS_CONFLICT")
        if decision == "replay":
            return json_response(_agreement_view(row))
        cond = self.conditions.current().bnpl
        outstanding = self.store.one(
            "SELECT COALESCE(SUM(amount), 0) FROM agreements WHERE usr = ? AND credit_paid = 0 AND state NOT IN (?, ?)",
            (body.user, A.CANCELLED.value, A.EXPIRED.value))[0]
        now = self.clock.now()
        if outstanding + body.amount > round(cond.credit_limit * 100):
            with self.store.tx():
                self.store.emit(now, "bnpl.declined", "bnpl", body.order, agreement=body.agreement, reason="credit_limit")
            return json_response({"agreement": body.agreement, "order": body.order, "state": "declined",
                                  "reason": "credit_limit"})
        expires_at = now + cond.authorization_ttl
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO agreements (agreement, ord, usr, merchant, amount, state, expires_at, created_t)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (body.agreement, body.order, body.user, body.merchant, body.amount, A.AUTHORIZED.value, expires_at, now))
            self.store.emit(now, "bnpl.authorized", "bnpl", body.order, agreement=body.agreement, amount=body.amount,
                            expires_at=round(expires_at, 6))
            if expires_at <= self.observation_end:  # otherwise expired lazily, at finish
                self.store.schedule("bnpl_expire", body.agreement, expires_at)
        return json_response(_agreement_view(self._agreement_row(body.agreement)), 201)

    async def finish(self, agreement: str) -> Response:
        """The merchant's *finish*: deduction starts now; the merchant is compensated if it keeps failing."""
        self._agreement_row(agreement)
        await self.gateway_work()
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.state is A.AUTHORIZED and self.clock.now() >= row["expires_at"]:
            self._expire_agreement(row)
            a.state = A.EXPIRED
        if a.state in (A.CANCELLED, A.EXPIRED):
            raise ApiError(409, f"agreement is {a.state.value}: cannot finish", "agreement", "AGREEMENT_CLOSED",
                           agreement_state=a.state.value)
        if a.state is not A.AUTHORIZED:
            return json_response(_agreement_view(row))  # already finished: idempotent
        now = self.clock.now()
        cond = self.conditions.current().bnpl
        with self.store.tx():
            a.finish()
            self._save_agreement(a, finish_t=now)
            self._emit_bnpl(now, "bnpl.finish_requested", row, amount=row["amount"])
            self.store.schedule("bnpl_deduct", agreement, now, 1)
            self.store.schedule("bnpl_compensate", agreement, now + cond.compensation_after)
        return json_response(_agreement_view(self._agreement_row(agreement)))

    async def cancel_agreement(self, agreement: str) -> Response:
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.state is A.CANCELLED:
            return json_response(_agreement_view(row))
        if a.state is not A.AUTHORIZED:
            raise ApiError(409, f"agreement is {a.state.value}: only an authorized agreement can be cancelled",
                           "agreement", "AGREEMENT_NOT_CANCELLABLE", agreement_state=a.state.value)
        now = self.clock.now()
        with self.store.tx():
            a.to(A.CANCELLED)
            self._save_agreement(a)
            self._emit_bnpl(now, "bnpl.cancelled", row)
        return json_response(_agreement_view(self._agreement_row(agreement)))

    def _user_paid(self, row: Any, by_hand: bool, attempt: int = 0) -> None:
        """The buyer's money reached the provider's payment side (in a tx); the credit side learns it
        after ``bnpl.sync_lag``."""
        now = self.clock.now()
        a = self._agreement(row)
        ledger = SqlLedger(self.store, now, row["ord"], "bnpl", agreement=row["agreement"])
        a.deducted(ledger, f"{row['agreement']}-{'repayment' if by_hand else 'deduction'}", by_hand=by_hand)
        self._save_agreement(a)
        if by_hand:
            self._emit_bnpl(now, "bnpl.repaid", row)
        else:
            self._emit_bnpl(now, "bnpl.deduction", row, ok=True, attempt=attempt)
        self.store.schedule("bnpl_sync", row["agreement"], now + self.conditions.sample("bnpl.sync_lag"))

    async def repay(self, agreement: str) -> Response:
        """The buyer repays by hand (also done automatically ``bnpl.user_repay_delay`` after a failed deduction)."""
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.paid_by_user:
            return json_response(_agreement_view(row))
        if a.state not in (A.DEDUCTING, A.COMPENSATED, A.OVERDUE):
            raise ApiError(409, f"agreement is {a.state.value}: nothing to repay yet", "agreement",
                           "AGREEMENT_NOT_DUE", agreement_state=a.state.value)
        with self.store.tx():
            self._user_paid(row, by_hand=True)
        return json_response(_agreement_view(self._agreement_row(agreement)))

    async def _bnpl_deduct(self, job: Job) -> None:
        row = self._agreement_row(job.key)
        if row["paid_by_user"] or A(row["state"]) not in (A.DEDUCTING, A.COMPENSATED, A.OVERDUE):
            return
        c = self.conditions
        cond = c.current().bnpl
        now = self.clock.now()
        with self.store.tx():
            self.store.done(job)
            if not c.chance("bnpl.deduction_failure", cond.deduction_failure):
                self._user_paid(row, by_hand=False, attempt=job.attempt)
                return
            self._emit_bnpl(now, "bnpl.deduction", row, ok=False, attempt=job.attempt)
            gap = policies.notify_delay(cond.deduction_retry_schedule.gaps, job.attempt)
            if gap is not None:
                self.store.schedule("bnpl_deduct", job.key, now + gap, job.attempt + 1)
            if job.attempt == 1:
                self.store.schedule("bnpl_repay", job.key, now + c.sample("bnpl.user_repay_delay"))

    async def _bnpl_repay(self, job: Job) -> None:
        row = self._agreement_row(job.key)
        if not row["paid_by_user"] and A(row["state"]) in (A.DEDUCTING, A.COMPENSATED, A.OVERDUE):
            with self.store.tx():
                self.store.done(job)
                self._user_paid(row, by_hand=True)

    async def _bnpl_sync(self, job: Job) -> None:
        """The credit side learns the buyer paid: settled (and any overdue mark cleared)."""
        row = self._agreement_row(job.key)
        a = self._agreement(row)
        now = self.clock.now()
        with self.store.tx():
            self.store.done(job)
            self._emit_bnpl(now, "bnpl.synced", row, paid=True)
            if a.state is A.OVERDUE:
                self._emit_bnpl(now, "bnpl.overdue_cleared", row)
            if a.state in (A.DEDUCTING, A.COMPENSATED, A.OVERDUE):
                a.to(A.SETTLED)
                self._emit_bnpl(now, "bnpl.settled", row)
            self._save_agreement(a, credit_paid=1)

    async def _bnpl_compensate(self, job: Job) -> None:
        """At the compensation deadline the provider reads its credit side (``bnpl_overdue_decision``)."""
        row = self._agreement_row(job.key)
        a = self._agreement(row)
        if a.state is not A.DEDUCTING:
            return
        if policies.bnpl_overdue_decision(bool(row["credit_paid"])) != "overdue":
            return
        now = self.clock.now()
        with self.store.tx():
            self.store.done(job)
            a.compensate(SqlLedger(self.store, now, row["ord"], "bnpl", agreement=job.key), f"{job.key}-compensation")
            self._emit_bnpl(now, "bnpl.compensated", row)
            a.to(A.OVERDUE)
            self._emit_bnpl(now, "bnpl.overdue", row)
            self._save_agreement(a)

    async def _bnpl_expire(self, job: Job) -> None:
        row = self.store.one("SELECT * FROM agreements WHERE agreement = ?", (job.key,))
        if row is not None and A(row["state"]) is A.AUTHORIZED:
            self._expire_agreement(row)

    def _expire_agreement(self, row: Any) -> None:
        a = self._agreement(row)
        with self.store.tx():
            a.to(A.EXPIRED)
            self._save_agreement(a)
            self._emit_bnpl(self.clock.now(), "bnpl.expired", row)

    # -- admin --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        count = lambda sql: {r[0]: r[1] for r in self.store.all(sql)}  # noqa: E731
        return {
            "trades": count("SELECT state, COUNT(*) FROM trades GROUP BY state"),
            "notifications": count("SELECT state, COUNT(*) FROM notifications GROUP BY state"),
            "agreements": count("SELECT state, COUNT(*) FROM agreements GROUP BY state"),
            "jobs": count("SELECT kind, COUNT(*) FROM jobs GROUP BY kind"),
            "in_flight_debits": len(self.bank_inflight),
            "now": self.clock.now(),
        }


def create_app(config: base.ServiceConfig) -> FastAPI:
    svc = Provider(config)
    app = FastAPI(title="checkout-chaos mock payment provider", version="1", lifespan=svc.lifespan,
                  description="Gateway, bank and BNPL provider with scenario-driven latency and failures. "
                              "Amounts are integer fen. Errors: {error, field, code?}.")
    app.state.service = svc
    install_error_handlers(app)
    max_in_flight = config.scenario.live.max_in_flight
    app.add_middleware(InFlightLimit, limit=max_in_flight, before_response=lambda: svc.store.durable())

    @app.get("/healthz", tags=["health"], summary="liveness (also the benchmark's trivial route)")
    async def healthz() -> Response:
        return json_response({"ok": True, "service": "provider"})

    @app.post("/trades", tags=["trades"], status_code=201, summary="create a trade (idempotent on the same parameters)")
    async def create_trade(body: TradeCreate) -> Response:
        return await svc.create_trade(body)

    @app.get("/trades/{trade}", tags=["trades"], response_model=TradeView, summary="query a trade")
    async def query_trade(trade: TradePath) -> Response:
        return await svc.query(trade)

    @app.post("/trades/{trade}/pay", tags=["trades"], response_model=TradeView,
              summary="the buyer confirms payment: bank debit; answers succeeded, failed or unknown")
    async def pay(trade: TradePath) -> Response:
        return await svc.pay(trade)

    @app.post("/trades/{trade}/close", tags=["trades"], summary="close an unpaid trade (409 ACQ.TRADE_HAS_SUCCESS once paid)")
    async def close(trade: TradePath) -> Response:
        return await svc.close(trade)

    @app.post("/trades/{trade}/refund", tags=["trades"], response_model=TradeView, summary="refund a paid trade in full")
    async def refund(trade: TradePath, body: RefundBody | None = None) -> Response:
        return await svc.refund(trade, body)

    @app.post("/bnpl/agreements", tags=["bnpl"], status_code=201, summary="authorize pay-after-use within the credit limit")
    async def authorize(body: AgreementCreate) -> Response:
        return await svc.authorize(body)

    @app.get("/bnpl/agreements/{agreement}", tags=["bnpl"], summary="query an agreement")
    async def get_agreement(agreement: AgreementPath) -> Response:
        return json_response(_agreement_view(svc._agreement_row(agreement)))

    @app.post("/bnpl/agreements/{agreement}/finish", tags=["bnpl"], summary="the merchant's finish call: deduction starts")
    async def finish(agreement: AgreementPath) -> Response:
        return await svc.finish(agreement)

    @app.post("/bnpl/agreements/{agreement}/cancel", tags=["bnpl"], summary="cancel an authorized agreement")
    async def cancel(agreement: AgreementPath) -> Response:
        return await svc.cancel_agreement(agreement)

    @app.post("/bnpl/agreements/{agreement}/repay", tags=["bnpl"], summary="the buyer repays by hand")
    async def repay(agreement: AgreementPath) -> Response:
        return await svc.repay(agreement)

    app.include_router(admin_router(svc))

    @app.get("/admin/ledger", tags=["admin"], dependencies=[Depends(require_admin(config.admin_token))],
             summary="balances per account and whether the ledger balances")
    async def ledger() -> Response:
        return json_response(ledger_summary(svc.store))

    @app.get("/admin/stats", tags=["admin"], dependencies=[Depends(require_admin(config.admin_token))],
             summary="counts by state, pending jobs")
    async def stats() -> Response:
        return json_response(svc.stats())

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.service.provider", description=__doc__.split("\n")[0])
    base.common_arguments(parser)
    args = parser.parse_args(argv)
    config = base.config_from_args(args)
    base.serve(create_app(config), args, config.scenario.live.max_in_flight)


if __name__ == "__main__":
    main()
