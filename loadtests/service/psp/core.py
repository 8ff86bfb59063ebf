"""The mock payment provider's core: gateway trades, the bank, the BNPL credit side, the ledger, the
notification outbox and its retries, the fault conditions and the history. No HTTP and no wire format:
the *faces* (``loadtests.service.psp.faces``) parse each PSP's protocol, check and make its signatures,
and map the core's views and :class:`CoreError` refusals onto that protocol's answers. Whatever face a
trade came through, the core writes the same history events and the same ledger.

Behaves like the real providers described in ``docs/domain.md``, at the scenario's latencies and
failure rates (scaled by the time scale):

* **Trades** (``trade`` = the merchant's ``out_trade_no``): create (idempotent on the same parameters, a
  conflict on others — ``policies.idempotent_create``), optionally *lazy* (a page-pay or QR trade exists
  for the merchant only once the buyer opens it), pay (the buyer's wallet or bank app confirming: a
  debit through the simulated bank), query, close (``policies.gateway_close_result``: refused once
  paid, or too young under a ``min_close_age``), refund (full or partial, idempotent per request
  number; *pending* for ``gateway.refund_latency`` and failing with ``gateway.refund_failure`` when a
  face asks with :meth:`ProviderCore.refund_terms`).
* **The bank**: ``bank.channels`` concurrent debits, ``bank.latency``, declines, risk-control blocks
  and holds, the single-payment limit, and ``bank.response_loss`` — the debit happens but the gateway
  never hears, times out after ``gateway.timeout`` and leaves the trade ``unknown`` until its
  ``gateway.bank_query_schedule`` asks the bank again (a spent schedule fails the trade). A debit made
  after the gateway stopped waiting is handled by ``policies.on_late_approval`` under
  ``gateway.late_approval`` (applied, reversed on a closed trade, or left for reconciliation); the
  statement of debits (:meth:`ProviderCore.statement`) is what a checkout reconciles against. With
  ``user.wallet_balance`` / ``card_limit`` / ``daily_limit`` / ``risk_flagged`` or
  ``bank.risk_freeze_after`` the bank keeps buyer accounts (``BuyerAccount``) per user.
* **Notifications**: a durable outbox, one row per notification that is also its job (``due``: when
  the next attempt is due; queued with ``Store.queue``, loaded again by ``_recover_outbox`` after a
  restart), written in the payment's transaction; each attempt is a real HTTP POST whose body, headers and
  acknowledgement rule come from the trade's face, with ``gateway.notify_latency``, ``notify_loss`` and
  ``notify_duplicate``, within ``notify_ack_timeout``, retried on ``gateway.notify_schedule``
  (``policies.notify_delay``); an attempt due while the checkout's endpoint is in one of its outages
  (``order_service.notify_outage_every``, ``sim.domain.outages``: the simulation's replication 0 windows)
  is not posted and fails (``notify.lost`` with ``cause = "endpoint_down"``).
* **BNPL** (pay after use): authorize within ``bnpl.credit_limit``, finish, deductions with
  ``deduction_failure`` (or, with ``deduction_source = "wallet"``, from the buyer's wallet balance: short
  of it, failing until a top-up lands; with ``"wallet_then_card"`` the card line when the wallet is short,
  as WeChat Pay polls a buyer's other methods; ``agreements.deducted_from`` keeps which paid) and
  ``deduction_retry_schedule``, the buyer repaying by hand after
  ``user_repay_delay``, ``sync_lag`` between the payment side and the credit side, compensation of the
  merchant after ``compensation_after`` and the overdue mark (``policies.bnpl_overdue_decision``).

Money moves only through the domain entities (``Trade.debit``/``refund``, ``Agreement.deducted``/
``compensate``) or the ledger's balanced ``transfer`` (a partial refund), posting to the SQLite ledger
in the same transaction as the state change.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable

from sim.domain import policies, population
from sim.domain.calendar import working_days_delay
from sim.domain.entities import Agreement, BuyerAccount, Trade
from sim.domain.after_sales import BnplRemedy, bnpl_remedy
from sim.domain.ledger import CHARGE, REFUND, transfer
from sim.domain.outages import Outages
from sim.domain.states import TRADE_PAYABLE, AgreementState, TradeState

from loadtests.service import base
from loadtests.service.httpclient import HttpError, client_for_notifications
from loadtests.service.runtime import Limiter, Overloaded
from loadtests.service.store import LEDGER_SCHEMA, Job, SqlLedger

log = logging.getLogger("checkout_chaos.provider")
T, A = TradeState, AgreementState

SCHEMA = LEDGER_SCHEMA + """
CREATE TABLE IF NOT EXISTS trades (
    trade TEXT PRIMARY KEY, ord TEXT NOT NULL, usr TEXT NOT NULL, merchant TEXT NOT NULL,
    amount INTEGER NOT NULL, notify_url TEXT, state TEXT NOT NULL, expires_at REAL NOT NULL,
    created_t REAL NOT NULL, reason TEXT, refunded INTEGER NOT NULL DEFAULT 0,
    face TEXT NOT NULL DEFAULT 'native', trade_no TEXT, meta TEXT NOT NULL DEFAULT '{}',
    opened INTEGER NOT NULL DEFAULT 1, paid_t REAL
);
CREATE TABLE IF NOT EXISTS refunds (
    trade TEXT NOT NULL, request_no TEXT NOT NULL, amount INTEGER NOT NULL, state TEXT NOT NULL,
    created_t REAL NOT NULL, PRIMARY KEY (trade, request_no)
);
CREATE TABLE IF NOT EXISTS notifications (
    notify_id TEXT PRIMARY KEY, trade TEXT NOT NULL, ord TEXT NOT NULL, url TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    created_t REAL NOT NULL, acked_t REAL, kind TEXT NOT NULL DEFAULT 'trade.succeeded', ref TEXT,
    due REAL
);
CREATE TABLE IF NOT EXISTS agreements (
    agreement TEXT PRIMARY KEY, ord TEXT NOT NULL, usr TEXT NOT NULL, merchant TEXT NOT NULL,
    amount INTEGER NOT NULL, state TEXT NOT NULL, expires_at REAL NOT NULL, created_t REAL NOT NULL,
    paid_by_user INTEGER NOT NULL DEFAULT 0, merchant_paid INTEGER NOT NULL DEFAULT 0,
    credit_paid INTEGER NOT NULL DEFAULT 0, finish_t REAL, refunded INTEGER NOT NULL DEFAULT 0,
    deducted_from TEXT
);
CREATE INDEX IF NOT EXISTS agreements_user ON agreements (usr);
CREATE TABLE IF NOT EXISTS bank_accounts (
    usr TEXT PRIMARY KEY, balance INTEGER, card_left INTEGER, daily_limit INTEGER, flagged INTEGER NOT NULL,
    day INTEGER NOT NULL, spent_today INTEGER NOT NULL, declines_today INTEGER NOT NULL,
    topping_up INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""

# The core's refusals. A face maps each onto its protocol's own code (the native face keeps the
# Alipay-like names the reference checkout knows; the Alipay face answers ACQ.* sub-codes).
TRADE_NOT_EXIST = "TRADE_NOT_EXIST"
TRADE_HAS_SUCCESS = "TRADE_HAS_SUCCESS"  # paid (or paid and refunded)
TRADE_HAS_CLOSE = "TRADE_HAS_CLOSE"
TRADE_IN_PROGRESS = "TRADE_IN_PROGRESS"  # a debit in flight, or its outcome unknown
TRADE_PARAMS_CONFLICT = "TRADE_PARAMS_CONFLICT"
TRADE_NOT_PAID = "TRADE_NOT_PAID"
TRADE_CLOSE_TOO_EARLY = "TRADE_CLOSE_TOO_EARLY"  # younger than the close's min_close_age (WeChat: 5 minutes)
TRADE_NOT_CLOSED = "TRADE_NOT_CLOSED"  # a reversal asked for a trade that is not closed
NO_DEBIT = "NO_DEBIT"  # a reversal asked for a trade the bank never debited
REFUND_AMOUNT_EXCEEDED = "REFUND_AMOUNT_EXCEEDED"
REFUND_PARAMS_CONFLICT = "REFUND_PARAMS_CONFLICT"
INVALID = "INVALID"
AGREEMENT_NOT_EXIST = "AGREEMENT_NOT_EXIST"
AGREEMENT_PARAMS_CONFLICT = "AGREEMENT_PARAMS_CONFLICT"
AGREEMENT_CLOSED = "AGREEMENT_CLOSED"
AGREEMENT_NOT_CANCELLABLE = "AGREEMENT_NOT_CANCELLABLE"
AGREEMENT_NOT_DUE = "AGREEMENT_NOT_DUE"
AGREEMENT_AWAITING_PAYMENT = "AGREEMENT_AWAITING_PAYMENT"  # a return of an agreement the buyer still owes
SYSTEM_BUSY = "SYSTEM_BUSY"  # overload: the gateway's queue is full or it sheds load (extra: overload=kind)
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # gateway.deadlines: the caller had given up before a worker took it

# The caller's own timeout as its request says (wall seconds, ``X-Request-Timeout``; like gRPC's
# ``grpc-timeout``), set by the app's front for the request's task; None when the request has none.
REQUEST_TIMEOUT_HEADER = "x-request-timeout"
caller_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("caller_timeout", default=None)

_NOT_PAYABLE = {
    T.SUCCEEDED: (TRADE_HAS_SUCCESS, "trade already paid"),
    T.REFUNDED: (TRADE_HAS_SUCCESS, "trade already paid (and refunded)"),
    T.CLOSED: (TRADE_HAS_CLOSE, "trade closed"),
    T.PROCESSING: (TRADE_IN_PROGRESS, "a debit for this trade is in progress"),
    T.UNKNOWN: (TRADE_IN_PROGRESS, "the outcome of this trade's debit is not known yet"),
}

# Columns added after the first release: a data directory of an earlier version gains them at start.
_MIGRATIONS = {
    "trades": (("face", "TEXT NOT NULL DEFAULT 'native'"), ("trade_no", "TEXT"), ("meta", "TEXT NOT NULL DEFAULT '{}'"),
               ("opened", "INTEGER NOT NULL DEFAULT 1"), ("paid_t", "REAL")),
    "notifications": (("kind", "TEXT NOT NULL DEFAULT 'trade.succeeded'"), ("ref", "TEXT"), ("due", "REAL")),
    "agreements": (("refunded", "INTEGER NOT NULL DEFAULT 0"), ("deducted_from", "TEXT")),
}


class CoreError(Exception):
    """A refusal of the core: ``code`` (one of the names above), a message, the field at fault, an
    HTTP status a JSON face may use, and extra facts (``trade_state``)."""

    def __init__(self, status: int, error: str, field: str | None = None, code: str | None = None, **extra: Any):
        super().__init__(error)
        self.status, self.error, self.field, self.code, self.extra = status, error, field, code, extra


@dataclass(frozen=True)
class Note:
    """One delivery attempt of a notification, as the core hands it to the trade's face."""

    notify_id: str  # stable across retries (Alipay's notify_id)
    kind: str  # trade.succeeded | refund.succeeded | ...
    attempt: int
    ref: str | None  # the refund's request number for refund notifications
    trade: dict[str, Any]  # the core's view of the trade now
    row: Any  # the stored row (face metadata in row["meta"])
    url: str = ""  # where this attempt goes


@dataclass(frozen=True, slots=True)
class _Outbox:
    """A pending notification as the process that queued it knows it (a ``notify`` job's memo)."""

    notify_id: str
    kind: str
    ref: str | None
    url: str
    order: str
    trade: str
    face: str


def trade_view(row: Any, state: str | None = None) -> dict[str, Any]:
    """The core's view of a trade (what every face builds its answer from)."""
    return {"trade": row["trade"], "order": row["ord"], "user": row["usr"], "merchant": row["merchant"],
            "amount": row["amount"], "state": state or row["state"], "reason": row["reason"],
            "expires_at": row["expires_at"], "refunded": row["refunded"], "face": row["face"],
            "trade_no": row["trade_no"], "created_t": row["created_t"], "paid_t": row["paid_t"],
            "opened": bool(row["opened"]), "meta": _meta(row["meta"])}


_META: dict[str, dict[str, Any]] = {}  # meta text -> its parse, for the few texts most trades share
_SCALARS = (str, int, float, bool, type(None))


def _meta(text: str | None) -> dict[str, Any]:
    """The trade's face metadata, parsed (a fresh dict each call). Most trades have none, or one of
    a few texts (the native face's ``{"method":"card"}``): those parses are kept, and copied."""
    if not text or text == "{}":
        return {}
    parsed = _META.get(text)
    if parsed is None:
        parsed = json.loads(text)
        if len(_META) < 256 and isinstance(parsed, dict) and all(isinstance(v, _SCALARS) for v in parsed.values()):
            _META[text] = parsed  # only flat ones: a copy then shares nothing mutable
        else:
            return parsed
    return dict(parsed)


def agreement_view(row: Any) -> dict[str, Any]:
    return {"agreement": row["agreement"], "order": row["ord"], "user": row["usr"], "merchant": row["merchant"],
            "amount": row["amount"], "state": row["state"], "expires_at": row["expires_at"],
            "paid_by_user": bool(row["paid_by_user"]), "merchant_paid": bool(row["merchant_paid"]),
            "credit_side_paid": bool(row["credit_paid"]), "refunded": bool(row["refunded"])}


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


class ProviderCore(base.ServiceBase):
    """Trades, the bank, the BNPL credit side, the ledger, the notification outbox and its retries.

    Methods take plain values and return plain dicts (the core's own *views*), or raise
    :class:`CoreError`; a face maps both onto its protocol. Nothing here knows a wire format: a
    notification's body, headers and what acknowledges it come from the face that created the trade.
    """

    name = "provider"
    schema = SCHEMA

    def __init__(self, config: base.ServiceConfig) -> None:
        super().__init__(config)
        self.secret = config.notify_secret.encode()
        self.faces: dict[str, Any] = {}  # name -> Face (faces.load_faces), set up before the app starts
        cur = self.conditions.current
        # The gateway's workers and the bank's channels, with the simulation's overload policies
        # (sim.model.station): a bounded queue, server-side deadlines, load shedding (the gateway's).
        self.gateway_workers = Limiter(
            lambda: cur().gateway.workers, name="gateway", now=self.clock.now,
            policy=lambda: (cur().gateway.queue_limit, cur().gateway.deadlines, cur().gateway.load_shedding,
                            cur().gateway.shed_limit))
        self.bank_channels = Limiter(lambda: cur().bank.channels, name="bank", now=self.clock.now,
                                     policy=lambda: (cur().bank.queue_limit, cur().bank.deadlines, False, 0,
                                                     cur().bank.deadline_margin))
        self.waiting: dict[str, asyncio.Future] = {}  # trade -> the gateway awaiting the bank's answer
        self.bank_inflight: set[str] = set()  # debits the bank is working on (lost on a crash)
        self.bank_declined: dict[str, str] = {}  # declines whose answer the gateway never got
        self.bank_held: set[str] = set()  # debits risk control holds (a durable bank_release job each)
        self.sent_at: dict[str, float] = {}  # trade -> when its debit left for the bank (scenario s)
        self.card_outcome: dict[str, str] = {}  # trade -> the decline its test card asks for (see pay)
        self._account_streams: dict[str, random.Random] = {}  # user.accounts: each account's stream, for top-ups
        # Notification POSTs are made by a child process (httpclient.WorkerClient): their HTTP work
        # stays off this event loop, which serves the requests.
        self.http = client_for_notifications()
        self._timed_out = object()  # what a gateway's wait resolves to when gateway.timeout fires
        self._tasks: set[asyncio.Task] = set()
        self._attempts: list[tuple] = []  # delivery attempts ended in this turn, recorded together
        # The checkout's notification endpoint's outages (order_service.notify_outage_every): the
        # simulation's replication 0 draws the same windows, in scenario seconds from the run's start.
        base_scenario = config.scenario
        self.notify_outages = Outages.of(base_scenario.order_service, base_scenario.run.seed, 0,
                                         base_scenario.run.horizon + base_scenario.run.drain)

    # -- plumbing -----------------------------------------------------------------------------------

    def job_handlers(self) -> dict:
        return {"notify": self._deliver, "bank_query": self._bank_query, "bank_release": self._bank_release,
                "trade_expire": self._trade_expire, "bnpl_deduct": self._bnpl_deduct,
                "bnpl_sync": self._bnpl_sync, "bnpl_compensate": self._bnpl_compensate,
                "bnpl_expire": self._bnpl_expire, "bnpl_repay": self._bnpl_repay,
                "refund_settle": self._refund_settle, "refund_land": self._refund_land, "top_up": self._top_up}

    def background(self) -> list:
        start = getattr(self.http, "start", None)  # the notification worker, ready before traffic comes
        return [start] if start is not None else []

    def recover(self) -> None:
        self.migrate()
        self._recover_debits()
        self._recover_outbox()

    def _recover_outbox(self) -> None:
        """After a restart: every pending notification whose row is its own job (``due`` set) is
        queued again for its next attempt (``attempts + 1``) at its due time. A row without ``due``
        (written by an earlier version), or one with a ``notify`` job in ``jobs`` (an attempt retried
        after an error), is served by that job instead, already loaded."""
        if self.scheduler is None:
            return
        keyed = {job.key for job in self.store.load_jobs() if job.kind == "notify"}
        for r in self.store.all("SELECT rowid, notify_id, due, attempts FROM notifications "
                                "WHERE state = 'pending' AND due IS NOT NULL"):
            if r["notify_id"] not in keyed:
                self.scheduler.push(Job(-r["rowid"], "notify", r["notify_id"], r["due"], r["attempts"] + 1))

    def _recover_debits(self) -> None:
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
        self._record_attempts()
        for task in list(self._tasks):  # bank debits in flight: lost, as in a crash (see recover)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def view(self, row: Any, state: str | None = None) -> dict[str, Any]:
        return trade_view(row, state)

    def migrate(self) -> None:
        """Add the columns of later versions to an older data directory's tables."""
        with self.store.tx() as conn:
            for table, columns in _MIGRATIONS.items():
                have = {r[1] for r in self.store.all(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
            conn.execute("CREATE INDEX IF NOT EXISTS trades_trade_no ON trades (trade_no)")

    def caller_deadline(self, arrived: float, fallback: str | None = None) -> float:
        """When the caller of the request being served gives up (scenario seconds): its
        ``X-Request-Timeout`` header (wall seconds, scaled), else the scenario's own knowledge of that
        caller's timeout (``fallback``, a dotted path: ``app.request_timeout`` for a buyer's pay,
        ``order_service.gateway_timeout`` for the checkout's prepay), else never."""
        timeout = caller_timeout.get()
        if timeout is not None:
            return policies.request_deadline(arrived, timeout * self.clock.scale)
        if fallback is None:
            return float("inf")
        section, name = fallback.split(".", 1)
        return policies.request_deadline(arrived, getattr(getattr(self.conditions.current(), section), name))

    async def take_worker(self, deadline: float = float("inf")) -> None:
        """A gateway worker (``gateway.queue_limit``, ``load_shedding``, ``deadlines`` apply): raises
        the face-neutral :class:`CoreError` ``SYSTEM_BUSY`` (refused) or ``DEADLINE_EXCEEDED`` (dropped)."""
        try:
            await self.gateway_workers.acquire(deadline)
        except Overloaded as exc:
            if exc.kind == "dropped":
                raise CoreError(504, "the caller had given up before a gateway worker took the request",
                                None, DEADLINE_EXCEEDED, overload="dropped") from None
            raise CoreError(503, "gateway overloaded: " + ("queue full" if exc.kind == "rejected" else "shedding load"),
                            None, SYSTEM_BUSY, overload=exc.kind) from None

    async def gateway_work(self, fallback: str | None = None) -> None:
        """One unit of gateway work: a worker for ``gateway.service_time`` (queueing when all are busy)."""
        await self.take_worker(self.caller_deadline(self.clock.now(), fallback))
        try:
            await self.clock.sleep(self.conditions.sample("gateway.service_time"))
        finally:
            self.gateway_workers.release()

    def _trade(self, trade: str, merchant_view: bool = True) -> Any:
        """The trade's row; a trade the buyer has not opened yet does not exist for the merchant
        (``merchant_view``), as at Alipay: its query and close answer "does not exist"."""
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (trade,))
        if row is None or (merchant_view and not row["opened"]):
            raise CoreError(404, f"no such trade {trade!r}", "trade", TRADE_NOT_EXIST)
        return row

    def trade_row(self, trade: str, merchant_view: bool = True) -> Any:
        """The stored row of a trade (for a face's own answer); raises :class:`CoreError` if none."""
        return self._trade(trade, merchant_view)

    def find_trade(self, **where: str) -> Any:
        """A trade by one column (``trade_no=...`` or ``trade=...``), or None."""
        (col, value), = where.items()
        if col not in ("trade", "trade_no"):
            raise ValueError(col)
        return self.store.one(f"SELECT * FROM trades WHERE {col} = ?", (value,))

    def _entity(self, row: Any) -> Trade:
        trade = Trade(row["trade"], row["ord"], row["usr"], row["amount"], row["expires_at"])
        trade.state = T(row["state"])
        trade.refunded = row["refunded"]
        return trade

    def _save_state(self, trade: str, state: TradeState, reason: str | None = None) -> None:
        self.store.conn.execute("UPDATE trades SET state = ?, reason = ? WHERE trade = ?", (state.value, reason, trade))

    # -- trades -------------------------------------------------------------------------------------

    async def create_trade(self, trade: str, order: str, user: str, amount: int, merchant: str = "m1",
                           notify_url: str | None = None, ttl: float | None = None, face: str = "native",
                           trade_no: str | None = None, meta: dict[str, Any] | None = None,
                           lazy: bool = False) -> tuple[dict[str, Any], bool]:
        """Create a trade (idempotent on the same parameters; other parameters: ``TRADE_PARAMS_CONFLICT``).

        ``lazy``: the trade exists for the merchant only once the buyer opens it (:meth:`open_trade`) —
        Alipay's page-pay and QR trades. ``trade_no`` is the provider's own id a face shows (Alipay's
        ``trade_no``, WeChat's ``transaction_id``); ``meta`` is what the face needs to answer and notify
        later (subject, app id, return URL), never money. Returns ``(view, created)``."""
        if ttl is None:
            ttl = self.conditions.current().gateway.trade_ttl
        if ttl <= 0:
            raise CoreError(422, "trade lifetime: expected a positive duration", "timeout_express", INVALID)
        params = (order, user, merchant, amount, notify_url, face)
        await self.gateway_work("order_service.gateway_timeout")
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (trade,))
        existing = (row["ord"], row["usr"], row["merchant"], row["amount"], row["notify_url"], row["face"]) if row else None
        decision = policies.idempotent_create(existing, params)
        if decision == "conflict":
            raise CoreError(409, f"trade {trade!r} exists with other parameters", "trade",
                            TRADE_PARAMS_CONFLICT, trade_state=row["state"])
        if decision == "replay":
            return self.view(row), False
        now = self.clock.now()
        expires_at = now + ttl
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO trades (trade, ord, usr, merchant, amount, notify_url, state, expires_at, created_t,"
                " face, trade_no, meta, opened) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (trade, order, user, merchant, amount, notify_url, T.CREATED.value, expires_at, now, face, trade_no,
                 json.dumps(meta or {}, separators=(",", ":")), 0 if lazy else 1),
            )
            if not lazy:
                self.store.emit(now, "trade.created", "gateway", order, trade=trade, amount=amount,
                                expires_at=round(expires_at, 6), user=user)
            if expires_at <= self.observation_end:  # otherwise expired lazily, when someone tries to pay
                self.store.schedule("trade_expire", trade, expires_at)
        return self.view(self._trade(trade, merchant_view=False)), True

    def open_trade(self, trade: str) -> dict[str, Any]:
        """The buyer opens the cashier page or scans the QR code of a lazy trade: from now on it exists
        for the merchant too (query, close). Opening an expired one closes it."""
        row = self._trade(trade, merchant_view=False)
        if not row["opened"]:
            now = self.clock.now()
            with self.store.tx() as conn:
                conn.execute("UPDATE trades SET opened = 1 WHERE trade = ?", (trade,))
                self.store.emit(now, "trade.created", "gateway", row["ord"], trade=trade, amount=row["amount"],
                                expires_at=round(row["expires_at"], 6), user=row["usr"])
            row = self._trade(trade)
        if T(row["state"]) in TRADE_PAYABLE and self.clock.now() >= row["expires_at"] and trade not in self.waiting:
            self._close_expired(row)
            row = self._trade(trade)
        return self.view(row)

    def _refuse_pay(self, trade: str, state: TradeState) -> CoreError:
        code, message = _NOT_PAYABLE.get(state, (TRADE_IN_PROGRESS, "a debit for this trade is in progress"))
        return CoreError(409, message, "trade", code, trade_state=state.value)

    async def pay(self, trade_id: str, decline: str | None = None) -> dict[str, Any]:
        """The buyer confirms payment in the wallet/bank app: debit through the bank, wait at most
        ``gateway.timeout`` for its answer, answer ``succeeded``, ``failed`` or ``unknown``.
        (A lazy trade is opened by paying it: the buyer had the cashier in front of them.)
        ``decline``: the card is one the bank declines with this reason (a PSP's test card); it still
        goes through the bank's queue, latency and response loss."""
        deadline = self.caller_deadline(self.clock.now(), "app.request_timeout")
        row = self._trade(trade_id, merchant_view=False)
        if not row["opened"]:
            self.open_trade(trade_id)
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
        sent = held = False
        try:
            # The worker is held for the whole bank call (up to gateway.timeout), as in the simulation.
            await self.take_worker(deadline)
            held = True
            await self.clock.sleep(self.conditions.sample("gateway.service_time"))
            # It may have been closed, or paid by a late answer to an earlier debit, while queued. Its
            # state alone tells (the full row is read again only if the state moved): a payable trade
            # with a gateway waiting changes no other column without changing its state.
            now_state = self.store.one("SELECT state FROM trades WHERE trade = ?", (trade_id,))[0]
            if now_state != row["state"]:
                row = self._trade(trade_id)
            state = T(row["state"])
            if state not in TRADE_PAYABLE:
                raise self._refuse_pay(trade_id, state)
            self.sent_at[trade_id] = self.clock.now()
            if decline is not None:
                self.card_outcome[trade_id] = decline
            sent = True
            self._spawn(self._bank_debit(row, answer))
            # The gateway waits at most gateway.timeout; the bank task goes on regardless (a timer that
            # completes a future is much cheaper than wait_for + shield on this hot path).
            timer = loop.call_later(self.wall_timeout(self.conditions.current().gateway.timeout),
                                    _resolve, answer, self._timed_out)
            try:
                await answer
            finally:
                timer.cancel()
        finally:
            if held:
                self.gateway_workers.release()
            self.waiting.pop(trade_id, None)
            if sent and (not answer.done() or answer.cancelled() or answer.result() is self._timed_out):
                self._mark_unknown(trade_id)  # timed out, or the request was cancelled: outcome unknown
                answer = None
            self.sent_at.pop(trade_id, None)
        if answer is not None and answer.result() == "ok":  # the common case: no need to read it back
            return self.view(row, T.SUCCEEDED.value)
        return self.view(self._trade(trade_id))

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

    async def _bank_debit(self, row: Any, waiter: asyncio.Future | None = None) -> None:
        """The simulated bank: a channel for ``bank.latency``, then approve, decline, block or hold.
        ``waiter``: the future of the :meth:`pay` that read ``row`` and sent this debit."""
        trade_id = row["trade"]
        self.bank_inflight.add(trade_id)
        try:
            c = self.conditions
            # bank.deadlines: the gateway stops waiting gateway.timeout after it sent the debit
            deadline = policies.request_deadline(self.sent_at.get(trade_id, self.clock.now()),
                                                 c.current().gateway.timeout)
            try:
                await self.bank_channels.acquire(deadline)
            except Overloaded as exc:
                if exc.kind == "dropped":
                    # Not executed: no money moves; a later query learns it expired (sim: B.EXPIRED).
                    self.bank_declined[trade_id] = "expired"
                    return
                # Queue full: answered at once, not executed (sim: B.BUSY, failed with reason "error").
                self.card_outcome.pop(trade_id, None)
                self._bank_answer(trade_id, "failed", "error", lost=False, row=row, waiter=waiter)
                return
            try:
                await self.clock.sleep(c.sample("bank.latency"))
            finally:
                self.bank_channels.release()
            bank = c.current().bank
            forced = self.card_outcome.pop(trade_id, None)
            fresh = True  # a new debit (not one the bank has already made or holds)
            if row["state"] == T.FAILED.value and self._debited_before(trade_id):
                # A trade paid again after the gateway gave up on it (failed): the trade number is the
                # bank's idempotency key, so a debit held for review is not made again (no answer until
                # risk control releases it), and one already made is answered approved, not repeated.
                if trade_id in self.bank_held:
                    return
                outcome, reason, fresh = "ok", None, False
            elif forced is not None:  # a test card that the bank declines (Stripe's pm_card_chargeDeclined...)
                outcome, reason = "failed", forced
            elif row["amount"] > round(bank.single_payment_limit * 100):
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
            if fresh and self._accounts_kept():
                outcome, reason = self._account_check(row, outcome, reason)
            self._bank_answer(trade_id, outcome, reason, lost=c.chance("bank.response_loss", bank.response_loss),
                              row=row, waiter=waiter)
        finally:
            self.bank_inflight.discard(trade_id)

    def _bank_answer(self, trade_id: str, outcome: str, reason: str | None, lost: bool, row: Any = None,
                     waiter: asyncio.Future | None = None) -> None:
        """The bank's result: applied to the trade if the gateway is still waiting for it, otherwise
        only the money moves (the gateway learns it from a later query).

        ``row``, ``waiter``: the row the paying gateway read before sending this debit, and the future
        it waits on. While that same future is still pending, nothing else can have changed the
        trade's state (queries, closes and expiries leave a trade with a gateway waiting alone, and any
        other bank answer for it would have resolved the future): the row is used as it is, without
        reading it again. In every other case the trade is read now."""
        waiting = None if lost else self.waiting.get(trade_id)
        if row is None or waiter is None or waiting is not waiter or waiter.done():
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
                    self._late_debit(row, now, ledger, lost)
            elif trade is not None:
                trade.to(T.FAILED)
                self._save_state(trade_id, T.FAILED, reason)
                self.store.emit(now, "trade.failed", "gateway", row["ord"], trade=trade_id, reason=reason)
                self.enqueue_notifications(row, "trade.failed", f"{trade_id}-f{now:.3f}", now, ref=reason)
            else:
                self.bank_declined[trade_id] = reason or "declined"
        if informed:
            waiting.set_result(outcome)

    # -- buyer accounts at the bank (user.wallet_balance, card_limit, daily_limit, risk_flagged) -------

    def _accounts_kept(self) -> bool:
        """Whether the bank keeps buyer accounts: a wallet balance, card line, daily limit or risk flag is
        set (``user.*``), or risk control freezes buyers (``bank.risk_freeze_after``) — as the simulation."""
        cur = self.conditions.current()
        u = cur.user
        return (u.wallet_balance is not None or u.card_limit is not None or u.daily_limit is not None
                or u.risk_flagged > 0 or cur.bank.risk_freeze_after is not None)

    def _account_rng(self, user: str) -> random.Random:
        """The account's own stream (seeded from the run's seed and the user id): its limits, risk flag
        and top-ups do not shift any other draw. With ``user.accounts`` it is the simulation's stream of
        that account (``sim.domain.population.account_stream``, replication 0, the user id without the
        run's prefix), kept for its top-ups as the simulation keeps it: account ``a17`` has the same
        balance, card line, daily limit and risk flag, and tops up by the same amounts, live and simulated."""
        seed = self.conditions.base.run.seed
        if self.conditions.current().user.accounts is None:
            return random.Random(f"{seed}:provider:account:{user}")
        r = population.account_stream(seed, 0, population.account_name(user))
        self._account_streams[user] = r
        return r

    def _account(self, user: str) -> BuyerAccount:
        """The buyer's account as the bank keeps it (SQLite ``bank_accounts``); drawn at the first debit."""
        r = self.store.one("SELECT * FROM bank_accounts WHERE usr = ?", (user,))
        if r is not None:
            acct = BuyerAccount(r["balance"], r["card_left"], r["daily_limit"], bool(r["flagged"]))
            acct.day, acct.spent_today, acct.declines_today = r["day"], r["spent_today"], r["declines_today"]
            acct.topping_up = bool(r["topping_up"])
            return acct
        return population.draw_account(self.conditions.current().user, self._account_rng(user))

    def _save_account(self, user: str, a: BuyerAccount) -> None:
        self.store.conn.execute(
            "INSERT OR REPLACE INTO bank_accounts (usr, balance, card_left, daily_limit, flagged, day, spent_today,"
            " declines_today, topping_up) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (user, a.balance, a.card_left, a.daily_limit, int(a.flagged), a.day, a.spent_today, a.declines_today,
             int(a.topping_up)))

    def _account_check(self, row: Any, outcome: str, reason: str | None) -> tuple[str, str | None]:
        """The buyer's account on a debit whose own draws gave ``outcome``: risk status first (flagged, or
        frozen after ``bank.risk_freeze_after`` refusals today: ``risk_blocked``), then the wallet
        balance or card line (``declined``) and the daily limit (``limit``) — ``BuyerAccount`` decides,
        as in the simulation's bank. What it finds persists: an empty wallet is declined on every retry
        and every order until topped up (``user.top_up_delay``). The trade's method (``wallet`` /
        ``card``, as the checkout created it; ``card`` when not said) picks the balance or the line."""
        user = row["usr"]
        now = self.clock.now()
        day = int(now // 86400.0)
        acct = self._account(user)
        instrument = json.loads(row["meta"] or "{}").get("method") or "card"
        if acct.frozen(day, self.conditions.current().bank.risk_freeze_after):
            outcome, reason = "failed", "risk_blocked"
        elif outcome == "ok":
            result = acct.debit(instrument, row["amount"], day)
            if result != "approved":
                outcome, reason = "failed", result
                if result == "declined" and instrument == "wallet":
                    self._top_up_later(user, acct, now)
        if outcome == "failed" and reason in ("declined", "risk_blocked", "limit"):
            acct.declined(day)
        with self.store.tx():
            self._save_account(user, acct)
        return outcome, reason

    def _top_up_later(self, user: str, acct: BuyerAccount, now: float) -> None:
        """A wallet buyer short of balance tops up ``user.top_up_delay`` later (a fresh ``wallet_balance``)."""
        planned = self._plan_top_up(user, acct, now)
        if planned is not None:
            with self.store.tx():
                self.store.schedule("top_up", user, planned[0], data={"amount": planned[1]})

    def _plan_top_up(self, user: str, acct: BuyerAccount, now: float) -> tuple[float, int] | None:
        """When (scenario seconds) and how much (fen) ``user`` tops up, drawn as the simulation draws it;
        None when they do not (already topping up, ``user.top_up_delay`` off). Marks the account."""
        u = self.conditions.current().user
        if acct.topping_up or u.top_up_delay is None or u.wallet_balance is None:
            return None
        acct.topping_up = True
        if u.accounts is not None:  # the account's own stream, continued
            rng = self._account_streams.get(user)
            if rng is None:  # drawn before this process started: the same stream, past the account's draws
                population.draw_account(u, rng := self._account_rng(user))
        else:
            rng = random.Random(f"{self.conditions.base.run.seed}:provider:top_up:{user}:{now!r}")
        amount = int(round(u.wallet_balance.draw(rng) * 100))
        return now + u.top_up_delay.draw(rng), amount

    async def _top_up(self, job: Job) -> None:
        with self.store.tx():
            self.store.done(job)
            acct = self._account(job.key)
            acct.balance = (acct.balance or 0) + int((job.data or {}).get("amount", 0))
            acct.topping_up = False
            self._save_account(job.key, acct)

    def _give_back(self, user: str, instrument: str, amount: int) -> None:
        """In a tx: ``user.refund_restores`` — ``amount`` returned to the buyer goes back to the wallet
        balance or card line it was taken from (``instrument``), as the simulation's gateway gives it
        back (``BuyerAccount.give_back``); nothing when the setting is off or the account keeps no such limit."""
        if not self.conditions.current().user.refund_restores:
            return
        acct = self._account(user)
        if acct.give_back(instrument, amount):
            self._save_account(user, acct)

    def _trade_instrument(self, row: Any) -> str:
        return json.loads(row["meta"] or "{}").get("method") or "card"

    def _debited_before(self, trade_id: str) -> bool:
        """Whether the bank holds a debit of this trade for review, or has made one already."""
        return trade_id in self.bank_held or \
            self.store.one("SELECT 1 FROM txns WHERE txn = ?", (f"{trade_id}-charge",)) is not None

    def _late_debit(self, row: Any, now: float, ledger: SqlLedger, lost: bool) -> None:
        """In a tx: the bank debited after the gateway stopped waiting (its timeout fired, the answer was
        lost, risk control released a held debit). The money moves. Unless the answer was lost, the
        gateway hears it now and does what ``policies.on_late_approval`` says under
        ``gateway.late_approval``: ``apply`` (the trade was unknown or failed: it succeeds and is
        notified), ``reverse`` (the trade was closed meanwhile: the debit goes back to the buyer at once,
        ``trade.reversed``), ``ignore`` (closed: the money stays in clearing, for a reconciliation that
        reads the bank statement to find)."""
        ledger.post(transfer(f"{row['trade']}-charge", CHARGE, f"user:{row['usr']}", "clearing", row["amount"]))
        if lost:
            return
        state = T(row["state"])
        action = policies.on_late_approval(state, self.conditions.current().gateway.late_approval)
        if action == "apply":
            self._entity(row).to(T.SUCCEEDED)
            self._succeeded(row, now)
        elif action == "reverse":
            self._reverse(row, now, "gateway")

    def _reverse(self, row: Any, now: float, actor: str) -> bool:
        """In a tx: return the debit made on the closed trade ``row`` to the buyer (``trade.reversed``,
        then its ``refund`` txn); the trade stays closed, its ``refunded`` says the money went back.
        False when it was returned already (a reversal is posted once: its txn id is the trade's)."""
        trade_id = row["trade"]
        if row["refunded"] or self.store.one("SELECT 1 FROM txns WHERE txn = ?", (f"{trade_id}-reversal",)):
            return False
        self.store.emit(now, "trade.reversed", actor, row["ord"], trade=trade_id, amount=row["amount"])
        SqlLedger(self.store, now, row["ord"], actor, trade=trade_id).post(
            transfer(f"{trade_id}-reversal", REFUND, "clearing", f"user:{row['usr']}", row["amount"]))
        self.store.conn.execute("UPDATE trades SET refunded = ? WHERE trade = ?", (row["amount"], trade_id))
        self._give_back(row["usr"], self._trade_instrument(row), row["amount"])
        return True

    async def reverse_debit(self, trade_id: str, actor: str = "reconciler") -> dict[str, Any]:
        """Return a debit the bank made on a closed trade (a late approval the gateway ignored, found
        on the bank statement): ``{"result": "reversed" | "already_reversed", ...trade}``. Refused
        (``TRADE_NOT_CLOSED``) for a trade that is not closed — a paid one is refunded — and
        (``NO_DEBIT``) when the bank never debited it."""
        self._trade(trade_id)
        await self.gateway_work()
        row = self._trade(trade_id)
        state = T(row["state"])
        if state is not T.CLOSED:
            raise CoreError(409, f"trade is {state.value}: only a debit on a closed trade is reversed "
                            "(a paid trade is refunded)", "trade", TRADE_NOT_CLOSED, trade_state=state.value)
        if self.store.one("SELECT 1 FROM txns WHERE txn = ?", (f"{trade_id}-charge",)) is None:
            raise CoreError(409, "the bank never debited this trade: nothing to return", "trade", NO_DEBIT,
                            trade_state=state.value)
        with self.store.tx():
            done = self._reverse(row, self.clock.now(), actor)
        return {"result": "reversed" if done else "already_reversed", **self.view(self._trade(trade_id))}

    def statement(self, since: float, until: float, offset: int = 0, limit: int = 1000) -> dict[str, Any]:
        """The bank's statement of debits (``charge`` txns) made in ``(since, until]`` scenario seconds,
        oldest first, at most ``limit`` from ``offset``: per debit its ``trade``, ``order``, ``user``,
        ``merchant``, ``amount`` (fen) and ``t`` (when the money moved). ``next_offset``: where the next
        page starts, None on the last one. What a checkout reconciles against (``reconciliation``)."""
        rows = self.store.all(
            "SELECT txns.txn, txns.t, txns.ord, txns.trade, trades.usr, trades.merchant, trades.amount"
            " FROM txns JOIN trades ON trades.trade = txns.trade WHERE txns.kind = ? AND txns.t > ? AND txns.t <= ?"
            " ORDER BY txns.t, txns.txn LIMIT ? OFFSET ?", (CHARGE, since, until, limit + 1, offset))
        debits = [{"trade": r["trade"], "order": r["ord"], "user": r["usr"], "merchant": r["merchant"],
                   "amount": r["amount"], "t": r["t"], "txn": r["txn"]} for r in rows[:limit]]
        return {"since": since, "until": until, "offset": offset, "debits": debits,
                "next_offset": offset + limit if len(rows) > limit else None}

    def _succeeded(self, row: Any, now: float) -> None:
        """The gateway knows the trade is paid: state, event and the notification to send (in a tx)."""
        trade_id = row["trade"]
        # _save_state(SUCCEEDED) and paid_t in one statement: one fewer per payment on the hot path
        self.store.conn.execute("UPDATE trades SET state = ?, reason = NULL, paid_t = ? WHERE trade = ?",
                                (T.SUCCEEDED.value, now, trade_id))
        self.store.emit(now, "trade.succeeded", "gateway", row["ord"], trade=trade_id, amount=row["amount"])
        self.enqueue_notifications(row, "trade.succeeded", f"{trade_id}-n", now)

    def enqueue_notifications(self, row: Any, kind: str, notify_id: str, now: float, ref: str | None = None,
                              urls: list[str] | None = None) -> None:
        """In a tx: queue the notification(s) of ``kind`` about trade ``row`` to where its face says
        (``Face.notify_urls``: by default the trade's ``notify_url``, for ``trade.succeeded`` only), or
        to ``urls`` when given (a refund's own notify URL).
        Kinds: ``trade.succeeded``, ``trade.failed``, ``trade.closed`` (``ref``: why), ``refund.succeeded``
        (``ref``: the refund's request number). ``notify_id`` is stable across retries."""
        face = self.faces.get(row["face"])
        if urls is None:
            urls = face.notify_urls(row, kind) if face is not None else ([row["notify_url"]] if row["notify_url"] else [])
        for i, target in enumerate(urls):
            # a face may name a target as (url, ref): its own reference per delivery (Stripe's event id)
            url, own_ref = target if isinstance(target, tuple) else (target, ref)
            nid = notify_id if i == 0 else f"{notify_id}{i}"
            # The outbox row is the notification's job too (``due``: when its next attempt is due):
            # one row per notification, written with the payment, no jobs row to add and remove.
            cur = self.store.conn.execute(
                "INSERT OR IGNORE INTO notifications (notify_id, trade, ord, url, amount, state, created_t, kind, ref,"
                " due) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (nid, row["trade"], row["ord"], url, row["amount"], now, kind, own_ref, now),
            )
            if cur.rowcount:
                self.store.queue(Job(-cur.lastrowid, "notify", nid, now, 1,
                                     memo=_Outbox(nid, kind, own_ref, url, row["ord"], row["trade"], row["face"])))

    async def _bank_release(self, job: Job) -> None:
        """Risk control releases a held debit: it completes now."""
        self.bank_inflight.add(job.key)
        self.bank_held.discard(job.key)
        try:
            with self.store.tx():
                self.store.done(job)
            outcome, reason = "ok", None
            if self._accounts_kept():  # the buyer's account as it is when the hold ends
                outcome, reason = self._account_check(self._trade(job.key, merchant_view=False), outcome, reason)
            self._bank_answer(job.key, outcome, reason, lost=False)
        finally:
            self.bank_inflight.discard(job.key)

    async def _bank_query(self, job: Job) -> None:
        """The gateway asks the bank about an ``unknown`` debit (``gateway.bank_query_schedule``)."""
        row = self._trade(job.key)
        if T(row["state"]) is not T.UNKNOWN:
            return
        async with self.scheduler.unslotted():  # a gateway worker's queue and service time: modelled
            await self.gateway_work()
        row = self._trade(job.key)
        if T(row["state"]) is not T.UNKNOWN:
            return
        now = self.clock.now()
        charged = self.store.one("SELECT 1 FROM txns WHERE txn = ?", (f"{job.key}-charge",)) is not None
        pending = job.key in self.bank_inflight or job.key in self.bank_held
        gap = policies.notify_delay(self.conditions.current().gateway.bank_query_schedule.gaps, job.attempt + 1)
        with self.store.tx():
            self.store.done(job)
            if charged:
                self._entity(row).to(T.SUCCEEDED)
                self._succeeded(row, now)
            elif pending and gap is not None:
                self.store.schedule("bank_query", job.key, now + gap, job.attempt + 1)
            else:
                # No debit in flight (declined, or it never reached the bank) — or the schedule is spent
                # while the bank still holds it: the gateway gives up (failed, as in the simulation); a
                # later approval is then a late one (_late_debit).
                reason = self.bank_declined.pop(job.key, "error")
                self._entity(row).to(T.FAILED)
                self._save_state(job.key, T.FAILED, reason)
                self.store.emit(now, "trade.failed", "gateway", row["ord"], trade=job.key, reason=reason)
                self.enqueue_notifications(row, "trade.failed", f"{job.key}-f{now:.3f}", now, ref=reason)

    def _close_expired(self, row: Any) -> None:
        now = self.clock.now()
        with self.store.tx():
            self._entity(row).to(T.CLOSED)
            self._save_state(row["trade"], T.CLOSED, "expired")
            self.store.emit(now, "trade.closed", "gateway", row["ord"], trade=row["trade"], reason="expired")
            self.enqueue_notifications(row, "trade.closed", f"{row['trade']}-c", now, ref="expired")

    async def _trade_expire(self, job: Job) -> None:
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (job.key,))
        if row is not None and T(row["state"]) in TRADE_PAYABLE and job.key not in self.waiting:
            self._close_expired(row)

    async def query(self, trade_id: str) -> dict[str, Any]:
        self._trade(trade_id)
        await self.gateway_work()
        row = self._trade(trade_id)
        if T(row["state"]) in TRADE_PAYABLE and trade_id not in self.waiting and self.clock.now() >= row["expires_at"]:
            self._close_expired(row)  # a lifetime applied lazily (no timer beyond the observation window)
            row = self._trade(trade_id)
        state = T.PROCESSING.value if trade_id in self.waiting and T(row["state"]) in TRADE_PAYABLE else None
        return self.view(row, state)

    async def close(self, trade_id: str, min_close_age: float = 0.0) -> dict[str, Any]:
        """``alipay.trade.close``: closes an unpaid trade; refused once paid or while a debit is in flight,
        and (``min_close_age``, WeChat Pay's 5 minutes) while the trade is younger than that."""
        self._trade(trade_id)
        await self.gateway_work()
        row = self._trade(trade_id)
        state = T.PROCESSING if trade_id in self.waiting else T(row["state"])
        result = policies.gateway_close_result(state, self.clock.now() - row["created_t"], min_close_age)
        if result == "too_early":
            raise CoreError(409, f"a trade cannot be closed in its first {min_close_age:g} s: try again later",
                            "trade", TRADE_CLOSE_TOO_EARLY, result=result, trade_state=state.value)
        now = self.clock.now()
        if result == "closed":
            if state is not T.CLOSED:
                with self.store.tx():
                    self._entity(row).to(T.CLOSED)
                    self._save_state(trade_id, T.CLOSED, "closed")
                    self.store.emit(now, "trade.closed", "gateway", row["ord"], trade=trade_id)
                    self.enqueue_notifications(row, "trade.closed", f"{trade_id}-c", now, ref="closed")
            return {"result": "closed", **self.view(self._trade(trade_id))}
        if result == "already_paid":
            with self.store.tx():
                self.store.emit(now, "trade.close_refused", "gateway", row["ord"], trade=trade_id)
            raise CoreError(409, "trade already paid: cannot close", "trade", TRADE_HAS_SUCCESS,
                            result=result, trade_state=state.value)
        raise CoreError(409, "a debit for this trade is in progress or unknown: cannot close yet", "trade",
                        TRADE_IN_PROGRESS, result=result, trade_state=state.value)

    def _credit_limit(self, user: str) -> float:
        """CNY of pay-after-use credit ``user`` has: ``bnpl.credit_limit``, or with
        ``bnpl.buyer_credit_limit`` the buyer's own — the first draw of the simulation's stream of that
        buyer account (``bnpl-limit:<seed>:<replication 0>:<account>``, the id after the run's prefix), so
        it is the same on every authorization and the same as the simulated buyer's."""
        cond = self.conditions.current().bnpl
        if cond.buyer_credit_limit is None:
            return cond.credit_limit
        return cond.buyer_credit_limit.draw(
            population.credit_limit_stream(self.conditions.base.run.seed, 0, population.account_name(user)))

    def refund_terms(self) -> dict[str, Any]:
        """The scenario's refund, drawn now: ``{"pending_for": s, "fail": bool}`` from
        ``gateway.refund_latency`` and ``gateway.refund_failure`` — or ``{}`` when the scenario has
        instant, infallible refunds (the default), so ``refund(trade, **core.refund_terms())`` keeps a
        face's synchronous refunds unless the scenario says otherwise."""
        g = self.conditions.current().gateway
        if g.refund_working_days is None and g.refund_failure <= 0 and g.refund_latency.kind == "constant" \
                and g.refund_latency.mean == 0:
            return {}
        if g.refund_working_days is not None:
            pending_for = self._working_days(self.conditions.sample("gateway.refund_working_days"))
        else:
            pending_for = max(0.0, self.conditions.sample("gateway.refund_latency"))
        return {"pending_for": pending_for, "fail": self.conditions.chance("gateway.refund_failure", g.refund_failure)}

    def _working_days(self, days: float) -> float:
        """Scenario seconds from now until ``days`` working days have passed (``gateway.refund_working_days``)
        on the calendar from ``run.start`` — weekends and ``run.holidays`` skipped, ``run.workdays`` counted
        (``sim.domain.calendar.working_days_delay``, as the simulation's gateway), ``run.start`` being the
        date-time of the scenario's t = 0 (:meth:`calendar_origin`). A scenario given no ``run.start``
        (working days set by ``PUT /admin/faults``) counts from the Beijing date-time the services
        started at."""
        run = self.conditions.current().run
        return working_days_delay(self.calendar_origin(), self.clock.now(), max(0.0, days),
                                  frozenset(run.holidays), frozenset(run.workdays))

    async def refund(self, trade_id: str, amount: int | None = None, request_no: str | None = None,
                     notify: bool = False, settle_after: float | None = None,
                     notify_url: str | None = None, pending_for: float | None = None,
                     fail: bool = False) -> dict[str, Any]:
        """Refund ``amount`` fen (default: what is left) of a paid trade; ``request_no`` makes a partial
        refund idempotent (Alipay's ``out_request_no``, WeChat's ``out_refund_no``): the same number
        answers the first refund again, with other parameters it is refused. Money moves clearing ->
        buyer at once; ``notify`` queues a ``refund.succeeded`` notification (WeChat, Stripe).

        ``settle_after`` (scenario s): an asynchronous refund (WeChat): accepted now (the money leaves
        the merchant's side at once, as above), the refund ``processing`` until it settles that much
        later, and only then its ``refund.succeeded`` notification (to ``notify_url`` if given, else
        where the face says). No history event marks the settling: histories stay face-independent.

        ``pending_for`` (scenario s; see :meth:`refund_terms`): a *pending* refund (Stripe's
        pending -> succeeded | failed, WeChat's PROCESSING -> SUCCESS | ABNORMAL): accepted now, nothing
        moves; ``pending_for`` later it lands (:meth:`_refund_land`) — the money moves and
        ``trade.refunded`` is written then — or, with ``fail``, it fails (``trade.refund_failed``,
        nothing moved). With ``notify`` the outcome is notified (``refund.succeeded`` /
        ``refund.failed``). Asking again with the request number of a failed refund tries it again."""
        row = self._trade(trade_id)
        key = request_no or "full"
        prior = self.store.one("SELECT * FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, key))
        if prior is not None and prior["state"] == "failed":  # only pending refunds fail: try it again
            if amount is not None and amount != prior["amount"]:
                raise CoreError(409, f"refund {key!r} of trade {trade_id!r} exists with another amount", "request_no",
                                REFUND_PARAMS_CONFLICT)
            return await self._refund_pending(row, key, prior["amount"], pending_for or 0.0, fail, notify,
                                              notify_url, again=True)
        if prior is not None:
            if amount is not None and amount != prior["amount"]:
                raise CoreError(409, f"refund {key!r} of trade {trade_id!r} exists with another amount", "request_no",
                                REFUND_PARAMS_CONFLICT)
            return {**self.view(row), "refund": self._refund_view(prior), "replayed": True}
        await self.gateway_work()
        row = self._trade(trade_id)
        state = T(row["state"])
        if state is T.REFUNDED and request_no is None:
            return {**self.view(row), "refund": None, "replayed": True}
        if state not in (T.SUCCEEDED, T.REFUNDED):
            raise CoreError(409, f"trade is {state.value}: only a paid trade can be refunded", "trade",
                            TRADE_NOT_PAID, trade_state=state.value)
        left = row["amount"] - row["refunded"] - self._pending_refunds(trade_id)
        amount = left if amount is None else amount
        if amount <= 0 or amount > left:
            raise CoreError(409, f"refund of {amount} fen exceeds what is left to refund ({left} fen)", "amount",
                            REFUND_AMOUNT_EXCEEDED, refundable=left)
        if pending_for is not None:
            return await self._refund_pending(row, key, amount, pending_for, fail, notify, notify_url)
        now = self.clock.now()
        txn_id = f"{trade_id}-refund" if key == "full" else f"{trade_id}-refund-{key}"
        with self.store.tx() as conn:
            trade = self._entity(row)
            ledger = SqlLedger(self.store, now, row["ord"], "gateway", trade=trade_id)
            if amount == row["amount"]:
                trade.refund(ledger, txn_id)  # the whole trade at once: the domain's full refund
            else:
                ledger.post(transfer(txn_id, REFUND, "clearing", f"user:{row['usr']}", amount))
                trade.refunded += amount
                if trade.refunded == trade.amount:
                    trade.to(T.REFUNDED)
            conn.execute("UPDATE trades SET state = ?, refunded = ? WHERE trade = ?",
                         (trade.state.value, trade.refunded, trade_id))
            conn.execute("INSERT INTO refunds (trade, request_no, amount, state, created_t) VALUES (?, ?, ?, ?, ?)",
                         (trade_id, key, amount, "succeeded" if settle_after is None else "processing", now))
            self._give_back(row["usr"], self._trade_instrument(row), amount)
            self.store.emit(now, "trade.refunded", "gateway", row["ord"], trade=trade_id, amount=amount,
                            refunded_total=trade.refunded)
            if settle_after is not None:
                self.store.schedule("refund_settle", f"{trade_id}\n{key}", now + max(0.0, settle_after),
                                    data={"trade": trade_id, "request_no": key, "notify": notify,
                                          "notify_url": notify_url})
            elif notify:
                self.enqueue_notifications(row, "refund.succeeded", f"{trade_id}-r-{key}", now, ref=key,
                                           urls=[notify_url] if notify_url else None)
        refund = self.store.one("SELECT * FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, key))
        return {**self.view(self._trade(trade_id)), "refund": self._refund_view(refund), "replayed": False}

    async def _refund_settle(self, job: Job) -> None:
        """An asynchronous refund settles: ``processing`` -> ``succeeded``, then its notification."""
        data = job.data or {}
        trade_id, key = data.get("trade"), data.get("request_no")
        ref = self.store.one("SELECT * FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, key))
        now = self.clock.now()
        with self.store.tx() as conn:
            self.store.done(job)
            if ref is None or ref["state"] != "processing":
                return
            conn.execute("UPDATE refunds SET state = 'succeeded' WHERE trade = ? AND request_no = ?", (trade_id, key))
            if data.get("notify"):
                row = self.store.one("SELECT * FROM trades WHERE trade = ?", (trade_id,))
                url = data.get("notify_url")
                self.enqueue_notifications(row, "refund.succeeded", f"{trade_id}-r-{key}", now, ref=key,
                                           urls=[url] if url else None)

    # -- refunds that land later (Stripe: pending -> succeeded | failed) ------------------------------

    async def refund_pending(self, trade_id: str, amount: int | None, request_no: str) -> dict[str, Any]:
        """A refund as Stripe has it: accepted ``pending`` now and landing later (:meth:`refund` with the
        scenario's :meth:`refund_terms`): ``succeeded`` (the ledger moves, ``trade.refunded``) or
        ``failed`` (``trade.refund_failed``, no money moved). A zero latency lands at once, in this call.

        ``amount`` (default: what is left, counting refunds still pending) in fen; ``request_no`` names the
        refund (unique per trade: a second refund with the same number is refused). Notifications (kinds
        ``refund.created``, then ``refund.succeeded`` or ``refund.failed``) go where the face's
        ``refund_notify_urls(row, kind, request_no)`` says. Returns the trade view with ``refund``."""
        self._trade(trade_id)
        if self.store.one("SELECT 1 FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, request_no)):
            raise CoreError(409, f"refund {request_no!r} of trade {trade_id!r} exists", "request_no",
                            REFUND_PARAMS_CONFLICT)
        terms = self.refund_terms() or {"pending_for": 0.0, "fail": False}
        view = await self.refund(trade_id, amount, request_no, pending_for=terms["pending_for"], fail=terms["fail"])
        if terms["pending_for"] <= 0:  # lands now; the job scheduled for it finds it landed and does nothing
            with self.store.tx():
                self._land(trade_id, request_no, self.clock.now(), {"fail": terms["fail"]})
            refund = self.store.one("SELECT * FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, request_no))
            view = {**self.view(self._trade(trade_id)), "refund": self._refund_view(refund), "replayed": False}
        return view

    def _refund_hook(self, row: Any) -> Any:
        return getattr(self.faces.get(row["face"]), "refund_notify_urls", None)

    def _refund_notify(self, row: Any, kind: str, request_no: str, now: float) -> None:
        """A refund notification where the face's ``refund_notify_urls`` hook says (Stripe's events)."""
        hook = self._refund_hook(row)
        urls = hook(row, kind, request_no) if hook is not None else None
        tag = {"refund.created": "rc", "refund.succeeded": "r", "refund.failed": "rf"}[kind]
        self.enqueue_notifications(row, kind, f"{row['trade']}-{tag}-{request_no}", now, ref=request_no, urls=urls)

    def _pending_refunds(self, trade_id: str) -> int:
        """Fen of the trade's pending refunds (accepted, not landed: no money moved yet)."""
        return self.store.one("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE trade = ? AND state = 'pending'",
                              (trade_id,))[0]

    async def _refund_pending(self, row: Any, key: str, amount: int, pending_for: float, fail: bool, notify: bool,
                              notify_url: str | None, again: bool = False) -> dict[str, Any]:
        """Accept a pending refund (see :meth:`refund`): its row, and the job that lands it."""
        trade_id = row["trade"]
        if again:
            await self.gateway_work()
            row = self._trade(trade_id)
            if amount > row["amount"] - row["refunded"] - self._pending_refunds(trade_id):
                raise CoreError(409, f"refund of {amount} fen exceeds what is left to refund", "amount",
                                REFUND_AMOUNT_EXCEEDED)
        now = self.clock.now()
        with self.store.tx() as conn:
            if again:
                conn.execute("UPDATE refunds SET state = 'pending', created_t = ? WHERE trade = ? AND request_no = ?",
                             (now, trade_id, key))
            else:
                conn.execute("INSERT INTO refunds (trade, request_no, amount, state, created_t) VALUES (?, ?, ?, ?, ?)",
                             (trade_id, key, amount, "pending", now))
            if self._refund_hook(row) is not None:
                self._refund_notify(row, "refund.created", key, now)
            self.store.schedule("refund_land", f"{trade_id}\n{key}", now + max(0.0, pending_for),
                                data={"trade": trade_id, "request_no": key, "fail": bool(fail), "notify": notify,
                                      "notify_url": notify_url})
        refund = self.store.one("SELECT * FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, key))
        return {**self.view(self._trade(trade_id)), "refund": self._refund_view(refund), "replayed": False}

    async def _refund_land(self, job: Job) -> None:
        """A pending refund lands (the job :meth:`_refund_pending` scheduled)."""
        data = job.data or {}
        with self.store.tx():
            self.store.done(job)
            self._land(data.get("trade"), data.get("request_no"), self.clock.now(), data)

    def _land(self, trade_id: str | None, key: str | None, now: float, data: dict[str, Any]) -> None:
        """In a tx: a pending refund lands — the money goes back to the buyer (``trade.refunded``), or the
        attempt fails (``trade.refund_failed``; nothing moved, the same request number may try again)."""
        ref = self.store.one("SELECT * FROM refunds WHERE trade = ? AND request_no = ?", (trade_id, key))
        row = self.store.one("SELECT * FROM trades WHERE trade = ?", (trade_id,))
        if ref is None or row is None or ref["state"] != "pending":
            return
        conn = self.store.conn
        amount = ref["amount"]
        ok = not data.get("fail") and T(row["state"]) is T.SUCCEEDED and amount <= row["amount"] - row["refunded"]
        if not ok:
            conn.execute("UPDATE refunds SET state = 'failed' WHERE trade = ? AND request_no = ?", (trade_id, key))
            self.store.emit(now, "trade.refund_failed", "gateway", row["ord"], trade=trade_id, amount=amount)
            kind = "refund.failed"
        else:
            trade = self._entity(row)
            txn_id = f"{trade_id}-refund" if key == "full" else f"{trade_id}-refund-{key}"
            ledger = SqlLedger(self.store, now, row["ord"], "gateway", trade=trade_id)
            if amount == row["amount"]:
                trade.refund(ledger, txn_id)
            else:
                ledger.post(transfer(txn_id, REFUND, "clearing", f"user:{row['usr']}", amount))
                trade.refunded += amount
                if trade.refunded == trade.amount:
                    trade.to(T.REFUNDED)
            conn.execute("UPDATE trades SET state = ?, refunded = ? WHERE trade = ?",
                         (trade.state.value, trade.refunded, trade_id))
            conn.execute("UPDATE refunds SET state = 'succeeded' WHERE trade = ? AND request_no = ?",
                         (trade_id, key))
            self._give_back(row["usr"], self._trade_instrument(row), amount)
            self.store.emit(now, "trade.refunded", "gateway", row["ord"], trade=trade_id, amount=amount,
                            refunded_total=trade.refunded)
            kind = "refund.succeeded"
        if self._refund_hook(row) is not None:
            self._refund_notify(row, kind, key, now)
        elif data.get("notify"):
            url = data.get("notify_url")
            # one notification per outcome and attempt: a retried refund is told again
            self.enqueue_notifications(row, kind, f"{trade_id}-r-{key}-{now:.6f}", now, ref=key,
                                       urls=[url] if url else None)

    def find_refund(self, request_no: str, face: str | None = None) -> dict[str, Any] | None:
        """A refund by its request number alone (WeChat's refund query by ``out_refund_no``), or None."""
        sql = "SELECT refunds.* FROM refunds JOIN trades USING (trade) WHERE refunds.request_no = ?"
        args: tuple = (request_no,)
        if face is not None:
            sql, args = sql + " AND trades.face = ?", (request_no, face)
        r = self.store.one(sql + " ORDER BY refunds.created_t LIMIT 1", args)
        return None if r is None else self._refund_view(r)

    def refunds_of(self, trade_id: str) -> list[dict[str, Any]]:
        return [self._refund_view(r) for r in
                self.store.all("SELECT * FROM refunds WHERE trade = ? ORDER BY created_t, request_no", (trade_id,))]

    @staticmethod
    def _refund_view(r: Any) -> dict[str, Any]:
        return {"trade": r["trade"], "request_no": r["request_no"], "amount": r["amount"], "state": r["state"],
                "created_t": r["created_t"]}

    # -- notifications ------------------------------------------------------------------------------

    async def _post(self, url: str, body: bytes, headers: dict[str, str], timeout: float,
                    acknowledged: Callable[[int, bytes], bool]) -> bool:
        try:
            resp = await self.http.request("POST", url, body, headers, timeout)
        except HttpError:  # refused, reset, timed out: not acknowledged
            return False
        return acknowledged(resp.status, resp.body)

    def _face_of(self, trade_id: str) -> str:
        row = self.store.one("SELECT face FROM trades WHERE trade = ?", (trade_id,))
        return row["face"] if row is not None else "native"

    async def _deliver(self, job: Job) -> None:
        """One delivery attempt of a notification (the outbox row ``job.key``): the face of the trade
        writes its body and headers and says what acknowledges it. The attempt's outcome is recorded
        with the others that end in the same turn of the event loop (:meth:`_record_attempts`)."""
        memo: _Outbox | None = job.memo
        if memo is None:  # a job loaded after a restart (or retried after an error): read its row
            n = self.store.one("SELECT * FROM notifications WHERE notify_id = ?", (job.key,))
            if n is None or n["state"] != "pending":
                return
            memo = _Outbox(n["notify_id"], n["kind"] or "trade.succeeded", n["ref"], n["url"], n["ord"], n["trade"],
                           self._face_of(n["trade"]))
        # else: scheduled by this process with its row (pending: only this job's attempts change it)
        c = self.conditions
        gw = c.current().gateway
        attempt = job.attempt
        sent_at = self.clock.now()
        lost = c.chance("gateway.notify_loss", gw.notify_loss)
        outages = self.notify_outages
        if outages is not None and outages.down_at(sent_at):
            lost = "endpoint_down"  # the checkout's endpoint is down: nothing is posted, the attempt fails
        acked = False
        face = self.faces[memo.face]
        if not lost:
            # The network's latency is modelled: the job gives its scheduler slot back meanwhile (a
            # slot held through it capped notifications at 128 per latency) and takes one for the POST.
            latency = c.sample("gateway.notify_latency")
            async with self.scheduler.unslotted():
                await self.clock.sleep(latency)
            row = self.store.one("SELECT * FROM trades WHERE trade = ?", (memo.trade,))
            note = Note(memo.notify_id, memo.kind, attempt, memo.ref, self.view(row), row, memo.url)
            body, headers = face.notification(note)
            timeout = self.wall_timeout(gw.notify_ack_timeout)
            if c.chance("gateway.notify_duplicate", gw.notify_duplicate):
                self._spawn(self._post(memo.url, body, headers, timeout, face.acknowledged))
            acked = await self._post(memo.url, body, headers, timeout, face.acknowledged)
        gap = policies.notify_delay(face.notify_gaps(gw.notify_schedule), attempt)
        if not self._attempts:
            asyncio.get_running_loop().call_soon(self._record_attempts)
        self._attempts.append((job, memo, sent_at, self.clock.now(), lost, acked, gap))
        job.done = True  # removed by _record_attempts, in the transaction that records the attempt

    def _record_attempts(self) -> None:
        """The delivery attempts that ended in this turn of the event loop, in one transaction: each
        one's ``notify.sent`` (and ``notify.lost``) event, and its outbox row acked, given up, or
        counted with the next attempt's due time (the row is the job: the next attempt is queued
        when this commits). An attempt made by a ``jobs`` row (one written by an earlier version, or
        retried after an error) has that row removed and its next attempt scheduled as a ``jobs`` row.
        (If this commit fails the service stops, and the rows still pending in the database make the
        attempts again after the restart: at least once.)"""
        batch, self._attempts = self._attempts, []
        if not batch:
            return
        emit, acked, given_up, counted, store = self.store.emit, [], [], [], self.store
        with store.tx() as conn:
            rows = [(a[0].id,) for a in batch if a[0].id >= 0]
            if rows:
                conn.executemany("DELETE FROM jobs WHERE id = ?", rows)
            for job, memo, sent_at, now, lost, ok, gap in batch:
                emit(sent_at, "notify.sent", "gateway", memo.order, trade=memo.trade, notify_id=job.key,
                     attempt=job.attempt)
                if lost == "endpoint_down":
                    emit(sent_at, "notify.lost", "gateway", memo.order, trade=memo.trade, notify_id=job.key,
                         attempt=job.attempt, cause="endpoint_down")
                elif lost:
                    emit(sent_at, "notify.lost", "gateway", memo.order, trade=memo.trade, notify_id=job.key,
                         attempt=job.attempt)
                if ok:
                    acked.append((job.attempt, now, job.key))
                elif gap is None:
                    given_up.append((job.attempt, job.key))
                elif job.id < 0:
                    counted.append((job.attempt, sent_at + gap, job.key))
                    store.queue(Job(job.id, "notify", job.key, sent_at + gap, job.attempt + 1, memo=memo))
                else:
                    counted.append((job.attempt, None, job.key))
                    store.schedule("notify", job.key, sent_at + gap, job.attempt + 1, memo=memo)
            if acked:
                conn.executemany("UPDATE notifications SET state = 'acked', attempts = ?, acked_t = ? "
                                 "WHERE notify_id = ?", acked)
            if given_up:
                conn.executemany("UPDATE notifications SET state = 'given_up', attempts = ? WHERE notify_id = ?",
                                 given_up)
            if counted:
                conn.executemany("UPDATE notifications SET attempts = ?, due = ? WHERE notify_id = ?", counted)

    # -- BNPL ---------------------------------------------------------------------------------------

    def _agreement_row(self, agreement: str) -> Any:
        row = self.store.one("SELECT * FROM agreements WHERE agreement = ?", (agreement,))
        if row is None:
            raise CoreError(404, f"no such agreement {agreement!r}", "agreement", AGREEMENT_NOT_EXIST)
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

    def agreement_row(self, agreement: str) -> Any:
        return self._agreement_row(agreement)

    async def authorize(self, body: Any) -> dict[str, Any]:
        """Sign + credit order (pay after use): authorized within the buyer's credit limit, else declined.
        ``body`` has ``agreement, order, user, merchant, amount`` (any object with those attributes)."""
        await self.gateway_work()
        row = self.store.one("SELECT * FROM agreements WHERE agreement = ?", (body.agreement,))
        params = (body.order, body.user, body.merchant, body.amount)
        existing = (row["ord"], row["usr"], row["merchant"], row["amount"]) if row else None
        decision = policies.idempotent_create(existing, params)
        if decision == "conflict":
            raise CoreError(409, f"agreement {body.agreement!r} exists with other parameters", "agreement",
                            AGREEMENT_PARAMS_CONFLICT)
        if decision == "replay":
            return {**agreement_view(row), "created": False}
        cond = self.conditions.current().bnpl
        outstanding = self.store.one(
            "SELECT COALESCE(SUM(amount), 0) FROM agreements WHERE usr = ? AND credit_paid = 0 AND state NOT IN (?, ?)",
            (body.user, A.CANCELLED.value, A.EXPIRED.value))[0]
        now = self.clock.now()
        if outstanding + body.amount > round(self._credit_limit(body.user) * 100):
            with self.store.tx():
                self.store.emit(now, "bnpl.declined", "bnpl", body.order, agreement=body.agreement, reason="credit_limit")
            return {"agreement": body.agreement, "order": body.order, "state": "declined", "reason": "credit_limit"}
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
        return {**agreement_view(self._agreement_row(body.agreement)), "created": True}

    async def finish(self, agreement: str) -> dict[str, Any]:
        """The merchant's *finish*: deduction starts now; the merchant is compensated if it keeps failing."""
        self._agreement_row(agreement)
        await self.gateway_work()
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.state is A.AUTHORIZED and self.clock.now() >= row["expires_at"]:
            self._expire_agreement(row)
            a.state = A.EXPIRED
        if a.state in (A.CANCELLED, A.EXPIRED):
            raise CoreError(409, f"agreement is {a.state.value}: cannot finish", "agreement", AGREEMENT_CLOSED,
                            agreement_state=a.state.value)
        if a.state is not A.AUTHORIZED:
            return agreement_view(row)  # already finished: idempotent
        now = self.clock.now()
        cond = self.conditions.current().bnpl
        with self.store.tx():
            a.finish()
            self._save_agreement(a, finish_t=now)
            self._emit_bnpl(now, "bnpl.finish_requested", row, amount=row["amount"])
            self.store.schedule("bnpl_deduct", agreement, now, 1)
            self.store.schedule("bnpl_compensate", agreement, now + cond.compensation_after)
        return agreement_view(self._agreement_row(agreement))

    async def cancel_agreement(self, agreement: str) -> dict[str, Any]:
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.state is A.CANCELLED:
            return agreement_view(row)
        if a.state is not A.AUTHORIZED:
            raise CoreError(409, f"agreement is {a.state.value}: only an authorized agreement can be cancelled",
                            "agreement", AGREEMENT_NOT_CANCELLABLE, agreement_state=a.state.value)
        now = self.clock.now()
        with self.store.tx():
            a.to(A.CANCELLED)
            self._save_agreement(a)
            self._emit_bnpl(now, "bnpl.cancelled", row)
        return agreement_view(self._agreement_row(agreement))

    async def return_agreement(self, agreement: str) -> dict[str, Any]:
        """The merchant gives the buyer back what a pay-after-use order cost (an accepted after-sales
        request; ``sim.domain.after_sales.bnpl_remedy``, as the simulation's provider): the agreement is
        cancelled while nothing was collected (authorized, or finished with its deduction still pending:
        WeChat Pay Score's ``DOING``), the collected amount refunded to the buyer once they paid. 200 with
        ``remedy`` (idempotent: asked again, the same answer and no second refund) · 409
        ``AGREEMENT_AWAITING_PAYMENT`` while the provider, having compensated the merchant, still collects
        from the buyer (ask again once they paid) · 409 ``AGREEMENT_CLOSED`` for an expired agreement."""
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.state is A.CANCELLED:
            return {**agreement_view(row), "remedy": BnplRemedy.CANCEL.value}
        if row["refunded"]:
            return {**agreement_view(row), "remedy": BnplRemedy.REFUND.value}
        remedy = bnpl_remedy(a.state, a.paid_by_user)
        if remedy is BnplRemedy.NOTHING:
            raise CoreError(409, f"agreement is {a.state.value}: nothing to return", "agreement", AGREEMENT_CLOSED,
                            agreement_state=a.state.value)
        if remedy is BnplRemedy.REFUND_WHEN_PAID:
            raise CoreError(409, f"agreement is {a.state.value} and the buyer has not paid it yet: the provider "
                            "compensated the merchant and still collects; ask again once the buyer has paid",
                            "agreement", AGREEMENT_AWAITING_PAYMENT, agreement_state=a.state.value)
        now = self.clock.now()
        with self.store.tx() as conn:
            if remedy is BnplRemedy.CANCEL:
                a.to(A.CANCELLED)
                self._save_agreement(a)
                self._emit_bnpl(now, "bnpl.cancelled", row, reason="after_sales")
            else:
                SqlLedger(self.store, now, row["ord"], "bnpl", agreement=agreement).post(
                    transfer(f"{agreement}-refund", REFUND, f"merchant:{row['merchant']}", f"user:{row['usr']}",
                             row["amount"]))
                conn.execute("UPDATE agreements SET refunded = 1 WHERE agreement = ?", (agreement,))
                if row["deducted_from"]:  # a deduction took it from the buyer's wallet or card line
                    self._give_back(row["usr"], row["deducted_from"], row["amount"])
        return {**agreement_view(self._agreement_row(agreement)), "remedy": remedy.value}

    def _user_paid(self, row: Any, by_hand: bool, attempt: int = 0, source: str | None = None) -> None:
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
            extra = {} if source is None else {"source": source}  # from the buyer's account: which method paid
            self._emit_bnpl(now, "bnpl.deduction", row, ok=True, attempt=attempt, **extra)
        self.store.schedule("bnpl_sync", row["agreement"], now + self.conditions.sample("bnpl.sync_lag"))

    async def repay(self, agreement: str) -> dict[str, Any]:
        """The buyer repays by hand (also done automatically ``bnpl.user_repay_delay`` after a failed deduction)."""
        row = self._agreement_row(agreement)
        a = self._agreement(row)
        if a.paid_by_user:
            return agreement_view(row)
        if a.state not in (A.DEDUCTING, A.COMPENSATED, A.OVERDUE):
            raise CoreError(409, f"agreement is {a.state.value}: nothing to repay yet", "agreement",
                            AGREEMENT_NOT_DUE, agreement_state=a.state.value)
        with self.store.tx():
            self._user_paid(row, by_hand=True)
        return agreement_view(self._agreement_row(agreement))

    async def _bnpl_deduct(self, job: Job) -> None:
        row = self._agreement_row(job.key)
        if row["paid_by_user"] or A(row["state"]) not in (A.DEDUCTING, A.COMPENSATED, A.OVERDUE):
            return
        c = self.conditions
        cond = c.current().bnpl
        now = self.clock.now()
        acct = top_up = instrument = None
        if cond.deduction_source != "draw":
            # From the buyer's wallet balance as the bank keeps it, then (wallet_then_card) the card line
            # (BuyerAccount.deduct, as the simulation's BnplProvider._from_account): a short wallet is
            # topped up later; the deduction fails while every source is short.
            acct = self._account(row["usr"])
            sources = policies.DEDUCTION_SOURCES[cond.deduction_source]
            instrument, wallet_short = acct.deduct(sources, row["amount"], int(now // 86400.0))
            ok = instrument is not None
            if wallet_short:
                top_up = self._plan_top_up(row["usr"], acct, now)
        with self.store.tx():
            self.store.done(job)
            if acct is not None:
                self._save_account(row["usr"], acct)
                if top_up is not None:
                    self.store.schedule("top_up", row["usr"], top_up[0], data={"amount": top_up[1]})
            else:
                ok = not c.chance("bnpl.deduction_failure", cond.deduction_failure)
            if ok:
                if instrument is not None:
                    self.store.conn.execute("UPDATE agreements SET deducted_from = ? WHERE agreement = ?",
                                            (instrument, job.key))
                self._user_paid(row, by_hand=False, attempt=job.attempt, source=instrument)
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
        jobs = count("SELECT kind, COUNT(*) FROM jobs GROUP BY kind")
        queued = self.store.one("SELECT COUNT(*) FROM notifications WHERE state = 'pending' AND due IS NOT NULL")[0]
        if queued:  # the outbox rows that are their own notify jobs
            jobs["notify"] = jobs.get("notify", 0) + queued
        return {
            "trades": count("SELECT state, COUNT(*) FROM trades GROUP BY state"),
            "notifications": count("SELECT state, COUNT(*) FROM notifications GROUP BY state"),
            "agreements": count("SELECT state, COUNT(*) FROM agreements GROUP BY state"),
            "jobs": jobs,
            "in_flight_debits": len(self.bank_inflight),
            "pools": {"gateway": self.gateway_workers.counts(), "bank": self.bank_channels.counts()},
            "scheduler": self.scheduler.counts() if self.scheduler is not None else {},
            "now": self.clock.now(),
        }


