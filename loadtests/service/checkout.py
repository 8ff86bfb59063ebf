"""The reference checkout: the platform's order service and the merchant, as one HTTP service.

* **Orders**: create (``order.created`` with ``expires_at`` = now + ``order_service.order_ttl``), start
  payment (creates the provider trade with a ``notify_url`` pointing back here; the trade number is the
  client's, or ``policies.retry_trade_no`` under ``app.retry_trade_no``), the status page the buyer's
  order screen shows, cancel.
* **The notification handler** ``POST /notify``: verifies the signature (``signing``), checks the
  amount, then does what ``policies.on_payment_notification`` says under ``order_service.late_payment``
  (mark paid, ignore a late one, refund it, reopen the order), answering ``success`` to acknowledge.
  ``order_service.workers`` handlers run at once for ``order_service.service_time`` each, so an
  overloaded order service acknowledges late and the provider retries. A refund's outcome
  (``refund_status_sync``) turns a ``refund_pending`` order ``refunded`` or asks again.
* **The close job**: a durable per-order timer, or a sweep every ``order_service.sweep_interval``
  (``close_mode``), applying ``policies.on_order_expiry`` and, against the provider's real HTTP API,
  ``after_trade_query`` / ``after_trade_close`` (``close_policy``).
* **Read-then-write**: the handler decides from the order it read when it started, the close job from
  the order it read before its provider calls (or its ``close_write_delay``); with
  ``order_service.order_lock`` a changed order (its ``version``) is read again first
  (``policies.must_reread``), without it the stale decision is written: the lost update and the double
  fulfilment, live.
* **The order page** is served by a read replica ``order_service.read_lag`` behind the primary.
* **Reconciliation** (``reconciliation.interval``, off by default): a durable job reads the provider's
  statement of debits and repairs what ``policies.reconcile`` finds, as the simulation's reconciler.
* **The merchant** (as in the simulation): every paid order is shipped ``merchant.ship_time`` after
  payment, delivered ``merchant.delivery_time`` after that and completed (wallet, card: at delivery;
  BNPL: when its *finish* is accepted). The order's merchant of ``merchant.population`` sends the finish
  its way: ``sync`` (a job ``bnpl_finish_delay`` after delivery), ``batch`` (a job every
  ``batch_interval``, sequential, skipped while the previous run still runs) or ``queue`` (held in the
  worker's memory, lost when the worker restarts every ``restart_every`` unless
  ``merchant.finish_outbox``). A finish call fails with ``bnpl_finish_failure`` and is retried
  ``bnpl_finish_retries`` times; no per-order coin forgets one (``bnpl_finish_forget`` is not read).

No decision here is re-implemented: every branch that matters comes from ``sim/domain/policies.py`` and
every state change goes through the domain's ``Order`` entity, so an illegal step raises.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import math
import re
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httptools

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from sim.domain import after_sales, policies
from sim.domain.after_sales import Answer, Route
from sim.domain.entities import Order
from sim.domain.policies import NotifyAction, Step
from sim.domain.states import OrderState, TradeState, can_advance

from loadtests.service import base, signing
from loadtests.service.base import ProviderUnavailable
from loadtests.service.httpclient import KEEPALIVE, HttpClient, HttpError
from loadtests.service.httpclient import Response as HttpResponse
from loadtests.service.psp_clients import CLIENTS, make_client
from loadtests.service.runtime import Limiter, Overloaded
from loadtests.service.store import Job, StorageError
from loadtests.service.web import (ID_PATTERN, _dumps, replay_body, MAX_AMOUNT, ApiError, InFlightLimit, admin_router,
                                   install_error_handlers, json_response, require_admin)

log = logging.getLogger("checkout_chaos.checkout")
O = OrderState

ORDER_TRADES = """
CREATE TABLE IF NOT EXISTS order_trades (
    ord TEXT NOT NULL, trade TEXT NOT NULL, attempt INTEGER NOT NULL, kind TEXT NOT NULL, created_t REAL NOT NULL,
    accepted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ord, trade)
) WITHOUT ROWID;
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    ord TEXT PRIMARY KEY, usr TEXT NOT NULL, merchant TEXT NOT NULL, amount INTEGER NOT NULL,
    method TEXT NOT NULL, state TEXT NOT NULL, created_t REAL NOT NULL, expires_at REAL NOT NULL,
    paid_trade TEXT, stock_released INTEGER NOT NULL DEFAULT 0, close_reason TEXT,
    refund_failed INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0,
    refund_failures INTEGER NOT NULL DEFAULT 0, fulfilments INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS orders_state_expiry ON orders (state, expires_at);
CREATE TABLE IF NOT EXISTS merchant_batch (
    ord TEXT PRIMARY KEY, merchant TEXT NOT NULL, agreement TEXT, t REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS merchant_outbox (
    ord TEXT PRIMARY KEY, merchant TEXT NOT NULL, agreement TEXT, t REAL NOT NULL
);
""" + ORDER_TRADES

PROVIDER_CLIENT_ENV = "CHECKOUT_CHAOS_PROVIDER_CLIENT"  # "link": the provider calls through ProviderLink (opt-in)
CLOSE_RETRY = 60.0  # scenario seconds before the close job looks again at an order it could not decide
REPLICA_HORIZON = 3600.0  # scenario s: orders not written for this long are served from the primary

Id = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits and _.:- ; at most 64")]
Amount = Annotated[int, Field(gt=0, le=MAX_AMOUNT, description="fen (1/100 CNY), at most 10 million CNY")]
OrderPath = Annotated[str, Path(pattern=ID_PATTERN)]

# Never "refunded" while the money is still charged: a pending refund says so, and one whose retries
# are spent says "refund_failed" (``REFUND_FAILED``) until a person (or the buyer cancelling again) acts.
SCREENS = {O.AWAITING_PAYMENT: "awaiting_payment", O.PAID: "order_paid", O.SHIPPED: "order_paid",
           O.DELIVERED: "order_paid", O.COMPLETED: "order_completed", O.CLOSED: "order_closed",
           O.REFUND_PENDING: "refund_pending", O.REFUNDED: "refunded"}
REFUND_FAILED = "refund_failed"


@dataclass(frozen=True)
class TradeFacts:
    """What the provider (or its signed notification) says a trade or agreement was made for: the
    ``order`` and ``amount`` that ``policies.trade_pays_order`` compares with the order's."""

    trade: str
    order: str | None
    amount: int | None
    state: str | None = None

    @classmethod
    def of(cls, trade: str, view: dict[str, Any]) -> "TradeFacts":
        amount = view.get("amount")
        return cls(trade, view.get("order") if isinstance(view.get("order"), str) else None,
                   amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
                   view.get("state") if isinstance(view.get("state"), str) else None)


class OrderCreate(BaseModel):
    model_config = ConfigDict(strict=True)
    order: Id | None = Field(None, description="the order id; generated when absent (same id + same fields = replay)")
    user: Id
    merchant: Id | None = Field(None, description="one of merchant.population's names; default its first")
    amount: Amount
    method: Literal["wallet", "card", "bnpl"] = "wallet"


class PayBody(BaseModel):
    model_config = ConfigDict(strict=True)
    trade: Id | None = Field(None, description="the trade number to use; default from app.retry_trade_no")


class OrderView(BaseModel):
    order: str
    user: str
    merchant: str
    amount: int
    method: str
    state: str
    screen: str
    expires_at: float
    paid_trade: str | None
    trades: list[str]
    close_reason: str | None
    stock_released: bool
    refund_failed: bool


class Checkout(base.ServiceBase):
    name = "checkout"
    schema = SCHEMA

    def __init__(self, config: base.ServiceConfig, psp: str = "native") -> None:
        super().__init__(config)
        self.psp = make_client(psp, self)  # None: the native API (another PSP's protocol: psp_clients)
        self.secret = config.notify_secret.encode()
        self.provider_url = config.provider_url.rstrip("/")
        self.notify_url = config.public_url.rstrip("/") + "/notify"
        # The order service's workers, with the simulation's overload policies (sim.model.station): a
        # bounded queue, server-side deadlines (a notification's caller, the provider, gives up after
        # gateway.notify_ack_timeout) and load shedding, all off by default as in the scenario.
        osc = lambda: self.conditions.current().order_service  # noqa: E731
        self.workers = Limiter(lambda: osc().workers, name="order_service", now=self.clock.now,
                               policy=lambda: (osc().queue_limit, osc().deadlines, osc().load_shedding, osc().shed_limit))
        self.http = HttpClient(max_per_origin=64)
        # the native API of a plain http:// provider (the mock): aiohttp (HttpClient) unless told "link"
        self.link = ProviderLink(self.provider_url, max_conns=64) if self.provider_url.startswith("http://") \
            and os.environ.get(PROVIDER_CLIENT_ENV) == "link" else None
        self.client: Any = None  # httpx, only for an https:// provider
        self._locks: dict[str, list] = {}  # order id -> [asyncio.Lock, users]: see _order_lock
        # order id -> [(t, (state, paid_trade, close_reason, stock_released)), ...]: every write while
        # order_service.read_lag is on, for the lagging read replica the order page is served from.
        self._replica: dict[str, list[tuple[float, tuple]]] = {}
        self._replica_writes = 0
        # The merchant (see "the merchant"): what each queue merchant's worker holds in memory (merchant ->
        # order -> [alive]), the batch merchants whose run is running, and counts for /admin/stats.
        self._held: dict[str, dict[str, list]] = {}
        self._merchant_tasks: set[asyncio.Task] = set()
        self._batch_running: set[str] = set()
        self._merchant_samplers: dict[tuple[str, str], Any] = {}
        self._merchant_stats: dict[str, collections.Counter] = {}
        self._merchants: dict[str, Any] | None = None

    # -- plumbing -----------------------------------------------------------------------------------

    def recover(self) -> None:
        """Bring a data directory of an older checkout to this schema: trade numbers keyed by order (the
        old rows unverified: the close job asks the provider whose they are before using them) and the
        ``refund_failed`` mark."""
        self._plan_reconciliation()
        self._plan_merchants()
        order_cols = {r[1] for r in self.store.all("PRAGMA table_info(orders)")}
        trade_cols = {r[1] for r in self.store.all("PRAGMA table_info(order_trades)")}
        added = [c for c in ("refund_failed", "version", "refund_failures", "fulfilments") if c not in order_cols]
        if not added and "accepted" in trade_cols:
            return
        with self.store.tx() as conn:
            for col in added:
                conn.execute(f"ALTER TABLE orders ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")
            if "accepted" not in trade_cols:
                conn.execute("ALTER TABLE order_trades RENAME TO order_trades_v1")
                conn.execute(ORDER_TRADES)
                conn.execute("INSERT OR IGNORE INTO order_trades (ord, trade, attempt, kind, created_t, accepted)"
                             " SELECT ord, trade, attempt, kind, created_t, 0 FROM order_trades_v1")
                conn.execute("DROP TABLE order_trades_v1")
        log.warning("checkout: data directory migrated to the current schema")

    def job_handlers(self) -> dict:
        return {"expire": self._expire, "ship": self._ship, "deliver": self._deliver,
                "bnpl_finish": self._bnpl_finish, "merchant_batch": self._merchant_batch,
                "merchant_restart": self._merchant_restart, "after_sales": self._after_sales_answer,
                "refund": self._refund, "reconcile": self._reconcile}

    def background(self) -> list:
        return [self._sweep_loop, self._merchant_start]

    async def aclose(self) -> None:
        for task in list(self._merchant_tasks):  # the queue workers' memory goes with the process
            task.cancel()
        await asyncio.gather(*self._merchant_tasks, return_exceptions=True)
        await self.http.aclose()
        if self.link is not None:
            self.link.close()
        if self.client is not None:
            await self.client.aclose()
        if self.psp is not None:
            await self.psp.aclose()

    async def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        """A native request to the provider, through the PSP client when the checkout pays by another
        protocol (it answers as the native API would). ``timeout``: how long to wait, in scenario seconds
        (default ``app.request_timeout``); past it ``ProviderUnavailable``."""
        if self.psp is not None:
            if timeout is None:
                return await self.psp.call(method, path, body)
            try:
                return await asyncio.wait_for(self.psp.call(method, path, body), self.wall_timeout(timeout))
            except asyncio.TimeoutError:
                raise ProviderUnavailable(f"no answer within {timeout:g}s") from None
        return await self.native_call(method, path, body, timeout)

    async def native_call(self, method: str, path: str, body: dict | None = None,
                          timeout_s: float | None = None) -> Any:
        """One call to the provider's native API; ``ProviderUnavailable`` on a transport error, a timeout or a 5xx.

        Plain ``http://`` providers (the mock) go through the lean keep-alive client; ``https://`` ones
        through httpx. Both answers have ``status_code``, ``json()`` and ``text``.
        """
        timeout = self.wall_timeout(self.conditions.current().app.request_timeout if timeout_s is None else timeout_s)
        url = self.provider_url + path
        payload = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            if self.link is not None:
                resp = await self.link.request(method, path, payload, headers, timeout)
            elif url.startswith("http://"):
                resp = await self.http.request(method, url, payload, headers, timeout)
            else:
                import httpx

                if self.client is None:
                    self.client = httpx.AsyncClient()
                resp = await self.client.request(method, url, content=payload, headers=headers, timeout=timeout)
        except Exception as exc:  # HttpError, httpx.HTTPError: the provider did not answer
            raise ProviderUnavailable(f"{exc.__class__.__name__}: {exc}") from None
        if resp.status_code >= 500:
            raise ProviderUnavailable(f"provider answered {resp.status_code}")
        return resp

    def _order_row(self, order: str) -> Any:
        row = self.store.one("SELECT * FROM orders WHERE ord = ?", (order,))
        if row is None:
            raise ApiError(404, f"no such order {order!r}", "order", "ORDER_NOT_EXIST")
        return row

    def _entity(self, row: Any) -> Order:
        o = Order(row["ord"], row["usr"], row["merchant"], row["amount"], row["method"], row["created_t"],
                  row["expires_at"])
        o.state = O(row["state"])
        o.paid_trade, o.stock_released, o.close_reason = row["paid_trade"], bool(row["stock_released"]), row["close_reason"]
        o.version = row["version"]
        return o

    def _save(self, o: Order) -> None:
        """Write the order (in a tx); every write bumps its ``version``, which ``order_service.order_lock``
        compares (``policies.must_reread``)."""
        self.store.conn.execute(
            "UPDATE orders SET state = ?, paid_trade = ?, stock_released = ?, close_reason = ?, version = version + 1"
            " WHERE ord = ?", (o.state.value, o.paid_trade, int(o.stock_released), o.close_reason, o.id))
        self._replicate(o.id, (o.state.value, o.paid_trade, o.close_reason, o.stock_released))

    def _replicate(self, order: str, fields: tuple) -> None:
        """Note a write for the read replica (only while ``order_service.read_lag`` is on)."""
        lag = self.conditions.current().order_service.read_lag
        if lag.kind == "constant" and lag.mean == 0:
            return
        now = self.clock.now()
        self._replica.setdefault(order, []).append((now, fields))
        self._replica_writes += 1
        if self._replica_writes % 4096 == 0:  # bounded: forget orders nobody wrote for an hour
            cut = now - REPLICA_HORIZON
            for key in [k for k, log in self._replica.items() if log[-1][0] < cut]:
                del self._replica[key]

    def _replica_fields(self, order: str) -> tuple | None:
        """(state, paid_trade, close_reason, stock_released) as a replica ``order_service.read_lag``
        behind the primary has them (an order it has not received yet: as created); None: no lag."""
        log = self._replica.get(order)
        if not log:
            return None
        lag = self.conditions.sample("order_service.read_lag")
        if lag <= 0:
            return None
        cut = self.clock.now() - lag
        seen = log[0][1]
        for t, fields in log:
            if t > cut:
                break
            seen = fields
        return seen

    def _as_seen(self, read: Any, current: Any) -> Order:
        """What a read-then-write decides from at its write: with ``order_service.order_lock`` the order
        as it is now if it changed since ``read`` (a version check, then a re-read), without it the
        stale ``read`` — the window in which a lost update or a double fulfilment happens."""
        lock = self.conditions.current().order_service.order_lock
        if read is None or policies.must_reread(lock, read["version"], current["version"]):
            return self._entity(current)
        return self._entity(read)

    def _trades(self, order: str, kind: str | None = None, accepted_only: bool = True) -> list[str]:
        """The order's trade numbers, oldest first: those the provider accepted, or (``accepted_only=False``)
        also those sent to it whose answer never came (a crash or a timeout in between)."""
        sql = ("SELECT trade FROM order_trades WHERE ord = ?" + (" AND kind = ?" if kind else "")
               + (" AND accepted = 1" if accepted_only else "") + " ORDER BY attempt")
        return [r[0] for r in self.store.all(sql, (order, kind) if kind else (order,))]

    def _trade_of(self, order: str, trade: str) -> Any:
        """The order's record of ``trade`` (None: this order never sent it to the provider)."""
        return self.store.one("SELECT * FROM order_trades WHERE ord = ? AND trade = ?", (order, trade))

    def _accept_trade(self, order: str, trade: str) -> None:
        with self.store.tx() as conn:
            conn.execute("UPDATE order_trades SET accepted = 1 WHERE ord = ? AND trade = ? AND accepted = 0",
                         (order, trade))

    def _forget_trade(self, order: str, trade: str) -> None:
        """The provider refused ``trade`` for this order, or holds it for another: it is not this order's."""
        with self.store.tx() as conn:
            conn.execute("DELETE FROM order_trades WHERE ord = ? AND trade = ?", (order, trade))

    def _view(self, order: str, replica: bool = False) -> dict[str, Any]:
        """The order page; ``replica``: as the lagging read replica serves it (``order_service.read_lag``)."""
        row = self._order_row(order)
        state, paid_trade, close_reason, released = O(row["state"]), row["paid_trade"], row["close_reason"], \
            bool(row["stock_released"])
        lagged = self._replica_fields(order) if replica else None
        if lagged is not None:
            state, paid_trade, close_reason, released = O(lagged[0]), lagged[1], lagged[2], lagged[3]
        failed = bool(row["refund_failed"])
        shown = REFUND_FAILED if failed and state is O.REFUND_PENDING else state.value
        return {"order": row["ord"], "user": row["usr"], "merchant": row["merchant"], "amount": row["amount"],
                "method": row["method"], "state": shown, "screen": REFUND_FAILED if failed else SCREENS[state],
                "expires_at": row["expires_at"], "paid_trade": paid_trade, "trades": self._trades(order),
                "close_reason": close_reason, "stock_released": released, "refund_failed": failed}

    def _ref(self, row: Any, trade: str) -> dict[str, str]:
        """The event field naming what paid an order: ``agreement`` for BNPL, ``trade`` otherwise."""
        return {"agreement": trade} if row["method"] == "bnpl" else {"trade": trade}

    # -- orders -------------------------------------------------------------------------------------

    async def create_order(self, body: OrderCreate) -> Response:
        order_id = body.order or f"o{uuid.uuid4().hex[:20]}"
        merchant = self._merchant_of(body.merchant)
        row = self.store.one("SELECT * FROM orders WHERE ord = ?", (order_id,))
        if row is not None:
            same = (row["usr"], row["merchant"], row["amount"], row["method"]) == (body.user, merchant,
                                                                                  body.amount, body.method)
            if not same:
                raise ApiError(409, f"order {order_id!r} exists with other parameters", "order", "ORDER_PARAMS_CONFLICT")
            return json_response(self._view(order_id), 200)
        cond = self.conditions.current()
        now = self.clock.now()
        expires_at = now + cond.order_service.order_ttl
        with self.store.tx() as conn:
            conn.execute("INSERT INTO orders (ord, usr, merchant, amount, method, state, created_t, expires_at)"
                         " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (order_id, body.user, merchant, body.amount, body.method, O.AWAITING_PAYMENT.value,
                          now, expires_at))
            self.store.emit(now, "order.created", "order_service", order_id, user=body.user, amount=body.amount,
                            method=body.method, expires_at=round(expires_at, 6), merchant=merchant)
            if cond.order_service.close_mode == "timer":
                self.store.schedule("expire", order_id, expires_at)
        self._replicate(order_id, (O.AWAITING_PAYMENT.value, None, None, False))
        # the page of the order just written (what _view reads back: no trade yet, nothing refunded)
        return json_response({"order": order_id, "user": body.user, "merchant": merchant, "amount": body.amount,
                              "method": body.method, "state": O.AWAITING_PAYMENT.value,
                              "screen": SCREENS[O.AWAITING_PAYMENT], "expires_at": expires_at, "paid_trade": None,
                              "trades": [], "close_reason": None, "stock_released": False, "refund_failed": False},
                             201)

    @contextlib.asynccontextmanager
    async def _order_lock(self, order_id: str):
        """Serialise starting a payment and closing the order, per order.

        Without it the close job could ask the provider to close a trade that start-payment has
        recorded but not yet created there (404, read as 'no trade'), close the order, and let the
        trade be created and paid a moment later: a paid-but-closed order of the harness's own
        making, which the simulation (whose trade creation is atomic) cannot produce.

        This is not ``order_service.order_lock``: notifications never take it, and the close job's
        read-then-write is locked (or not) on the order's row version (:meth:`_as_seen`).
        """
        entry = self._locks.get(order_id)
        if entry is None:
            entry = self._locks[order_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[order_id]

    async def start_payment(self, order_id: str, body: PayBody | None) -> Response:
        cond = self.conditions.current()
        if cond.order_service.create_time is None:  # "off": the handler takes no order-service worker
            async with self._order_lock(order_id):
                return await self._start_payment(order_id, body)
        # order_service.create_time on (as sim/model/order_service.py): the request takes one of
        # order_service.workers for create_time and holds it through the prepay call to the provider
        # (which this checkout makes here, at start payment), so a slow gateway fills this pool; the
        # buyer's app waits app.request_timeout (the deadline, with order_service.deadlines on), the
        # worker waits for the provider's prepay order_service.gateway_timeout at most (then 502
        # PROVIDER_UNAVAILABLE, the trade kept for the close job to ask about; the simulation answers
        # the order without a trade then and creates it when the buyer pays).
        deadline = policies.request_deadline(self.clock.now(), cond.app.request_timeout)
        async with self._order_worker(deadline):
            await self.clock.sleep(self.conditions.sample("order_service.create_time"))
            async with self._order_lock(order_id):
                return await self._start_payment(order_id, body, cond.order_service.gateway_timeout)

    async def _start_payment(self, order_id: str, body: PayBody | None,
                             prepay_timeout: float | None = None) -> Response:
        row = self._order_row(order_id)
        state = O(row["state"])
        if state is not O.AWAITING_PAYMENT:
            raise ApiError(409, f"order is {state.value}: not awaiting payment", "order", "ORDER_NOT_PAYABLE",
                           order_state=state.value)
        tried = self._trades(order_id, accepted_only=False)
        chosen = body.trade if body is not None else None
        if chosen is not None:
            trade = chosen
        else:
            policy = self.conditions.current().app.retry_trade_no
            trade = policies.retry_trade_no(policy, order_id, len(tried), tried[-1] if tried else None)
        kind = "agreement" if row["method"] == "bnpl" else "trade"
        order = self._entity(row)
        for again in range(2):
            # first pass: the order's trades just read (under its lock) say whether this one is noted already
            unnoted = self._trade_of(order_id, trade) is None if again else trade not in tried
            if unnoted:
                with self.store.tx() as conn:  # noted before the provider hears of it: a crash leaves no orphan
                    conn.execute("INSERT INTO order_trades (ord, trade, attempt, kind, created_t) VALUES (?, ?, ?, ?, ?)",
                                 (order_id, trade, len(tried), kind, self.clock.now()))
                await self.store.durable()
            if kind == "agreement":
                payload = {"agreement": trade, "order": order_id, "user": row["usr"], "merchant": row["merchant"],
                           "amount": row["amount"]}
                path, what = "/bnpl/agreements", "BNPL provider"
            else:
                payload = {"trade": trade, "order": order_id, "user": row["usr"], "merchant": row["merchant"],
                           "amount": row["amount"], "notify_url": self.notify_url, "method": row["method"]}
                if self.conditions.current().order_service.pass_time_expire:
                    # time_expire = the order's expiry: a pay link opened later cannot outlive the order
                    left = max(row["expires_at"] - self.clock.now(), 0.001)
                    payload["timeout_express"] = f"{left:.3f}s"
                path, what = "/trades", "payment provider"
            try:
                resp = await self._call("POST", path, payload, prepay_timeout)
            except ProviderUnavailable as exc:  # it may or may not have the trade: kept, the close job asks
                raise ApiError(502, f"{what} unavailable: {exc}", None, "PROVIDER_UNAVAILABLE") from None
            detail = _json(resp)
            if resp.status_code in (200, 201) and (
                    detail.get("state") == "declined" or policies.trade_pays_order(TradeFacts.of(trade, detail), order)):
                if detail.get("state") == "declined":
                    self._forget_trade(order_id, trade)
                    return json_response({"order": order_id, "agreement": trade, "state": "declined",
                                          "reason": detail.get("reason"), "order_state": row["state"]})
                self._accept_trade(order_id, trade)
                if kind == "agreement":
                    self._mark_paid(order_id, TradeFacts.of(trade, detail))
                    return json_response({"order": order_id, "agreement": trade, "state": detail.get("state"),
                                          "order_state": self._order_row(order_id)["state"]})
                return json_response({"order": order_id, "trade": trade, "trade_state": detail["state"],
                                      "pay_url": detail.get("pay_url") or f"{self.provider_url}/trades/{trade}/pay"})
            self._forget_trade(order_id, trade)  # refused (or held for another order): never this order's
            if resp.status_code == 409 and chosen is None:
                # Someone holds this number at the provider (another order named it, or it was created
                # there directly): the order moves on to a number nobody can guess.
                trade = _fresh_trade_no(order_id)
                continue
            if resp.status_code == 409:
                raise ApiError(409, detail.get("error", "trade conflict"), "trade", detail.get("code"))
            raise ApiError(502, f"{what} refused the trade: {detail.get('error')}", None, "PROVIDER_REFUSED")
        raise ApiError(502, "payment provider refused every trade number tried", None, "PROVIDER_REFUSED")

    def _mark_paid(self, order_id: str, facts: TradeFacts) -> bool:
        """Awaiting payment -> paid by a trade (or BNPL agreement) of this order and its amount, as the
        provider reports it (``policies.trade_pays_order``); the merchant ships next."""
        row = self._order_row(order_id)
        o = self._entity(row)
        trade = facts.trade
        if not policies.trade_pays_order(facts, o):
            log.error("trade %s (order %s, %s fen) does not pay order %s (%s fen): not marked paid",
                      trade, facts.order, facts.amount, order_id, o.amount)
            return False
        if o.state is not O.AWAITING_PAYMENT:
            return False
        now = self.clock.now()
        with self.store.tx():
            o.mark_paid(trade)
            self._save(o)
            self.store.emit(now, "order.paid", "order_service", order_id, **self._ref(row, trade))
            self._fulfil(row, now)
        return True

    async def cancel(self, order_id: str) -> Response:
        row = self._order_row(order_id)
        state = O(row["state"])
        if state is O.AWAITING_PAYMENT:
            result = await self.close_unpaid(order_id, "user_cancel")
            if result == "retry":
                raise ApiError(409, "a payment for this order is in progress: try again later", "order",
                               "ORDER_PAYMENT_IN_PROGRESS")
            return json_response(self._view(order_id))
        if state in (O.CLOSED, O.REFUNDED):
            return json_response(self._view(order_id))
        if state is O.REFUND_PENDING:  # asked again: a refund whose retries were spent starts over
            if row["refund_failed"]:
                self._request_refund(row, row["paid_trade"], again=True)
            return json_response(self._view(order_id))
        if state is O.PAID:  # paid, not shipped yet: refund (or cancel the BNPL agreement)
            self._request_refund(row, row["paid_trade"])
            return json_response(self._view(order_id))
        raise ApiError(409, f"order is {state.value}: it can no longer be cancelled", "order",
                       "ORDER_NOT_CANCELLABLE", order_state=state.value)

    # -- after-sales (seed 003, sim.domain.after_sales) ----------------------------------------------

    async def after_sales(self, order_id: str) -> Response:
        """The buyer's after-sales request, routed by the order's state now (``after_sales.route``):
        unpaid -> the cancel of ``POST /orders/{id}/cancel``; paid, not shipped -> the merchant answers
        ``answer_time`` later (``cancel_agree``, on the state its ``cancel_check`` reads); shipped or
        delivered -> refunded only for a defect (``defect_rate``), answered ``answer_time`` later;
        completed -> a complaint, no money moves; closed or refunded -> nothing to ask. 202 with the
        route; the answer is a durable job, its outcome in the history (``after_sales.accepted`` /
        ``after_sales.refused``) and, when accepted, the order's refund."""
        row = self._order_row(order_id)
        state = O(row["state"])
        rt = after_sales.route(state)
        if rt is Route.CANCEL:
            return await self.cancel(order_id)
        now = self.clock.now()
        with self.store.tx():
            self.store.emit(now, "after_sales.requested", "user", order_id, state=state.value, route=rt.value)
            if rt is Route.COMPLAINT:
                self.store.emit(now, "user.complaint", "user", order_id, state=state.value)
            elif rt in (Route.ASK_MERCHANT, Route.DEFECT_ONLY):
                merchant = row["merchant"] if row["merchant"] in self._population() else None
                wait = self._merchant_draw(merchant, "answer_time") if merchant is not None else 0.0
                self.store.schedule("after_sales", order_id, now + wait,
                                    data={"route": rt.value, "state": state.value})
        return json_response({"order": order_id, "route": rt.value, "state": state.value,
                              "answer": "pending" if rt in (Route.ASK_MERCHANT, Route.DEFECT_ONLY) else "nothing"},
                             status=202)

    async def _after_sales_answer(self, job: Job) -> None:
        """The merchant's (or customer service's) answer to an after-sales request (see :meth:`after_sales`)."""
        row = self._order_row(job.key)
        data = job.data or {}
        rt, at_request = Route(data["route"]), O(data["state"])
        actual = O(row["state"])
        prof = self._population().get(row["merchant"])
        name = prof.name if prof is not None else "?"
        c = self.conditions
        if rt is Route.ASK_MERCHANT:
            checked = after_sales.checked_state(prof.cancel_check if prof is not None else "at_answer",
                                                at_request, actual)
            ans = after_sales.merchant_answer(
                checked, prof is not None and c.chance(f"merchant.{name}.cancel_agree", prof.cancel_agree))
        else:
            checked = actual
            ans = after_sales.defect_answer(prof is not None and c.chance(f"merchant.{name}.defect_rate",
                                                                          prof.defect_rate))
        ans = after_sales.acted_on(ans, actual)  # refunded or closed meanwhile by another path
        now = self.clock.now()
        with self.store.tx():
            self.store.done(job)
            if ans is Answer.ACCEPTED:
                self.store.emit(now, "after_sales.accepted", "merchant", job.key, route=rt.value,
                                checked=checked.value, state=actual.value, shipped=actual is not O.PAID)
            else:
                self.store.emit(now, "after_sales.refused", "merchant", job.key, route=rt.value,
                                checked=checked.value, state=actual.value, reason=ans.value)
        if ans is Answer.ACCEPTED:
            self._request_refund(row, row["paid_trade"])

    def _request_refund(self, row: Any, trade: str, extra: bool = False, again: bool = False) -> None:
        """Ask the provider for a refund (a durable job, retried on ``order_service.refund_retry_schedule``).
        ``extra``: a second trade of a paid order; ``again``: a failed refund asked for once more."""
        now = self.clock.now()
        row = self._order_row(row["ord"])
        o = self._entity(row)
        # Unlocked, two handlers of one late payment can both get here: the second finds the refund
        # already pending and only asks the provider again (the same refund request: idempotent there).
        if not extra and not again and not can_advance(o.state, O.REFUND_PENDING):
            extra = o.state is not O.REFUND_PENDING
            if not extra:
                with self.store.tx():
                    self.store.schedule("refund", row["ord"], now, data={"trade": trade, "extra": False})
                return
        with self.store.tx() as conn:
            if again:
                conn.execute("UPDATE orders SET refund_failed = 0, refund_failures = 0 WHERE ord = ?", (row["ord"],))
            if not extra:
                if not again:
                    o.to(O.REFUND_PENDING)
                self._save(o)
                self.store.emit(now, "order.refund_pending", "order_service", row["ord"], amount=row["amount"],
                                **self._ref(row, trade))
            self.store.schedule("refund", row["ord"], now, data={"trade": trade, "extra": extra})

    # -- notifications ------------------------------------------------------------------------------

    async def notify(self, request: Request) -> Response:
        raw = await request.body()
        problem = signing.verify(self.secret, raw, request.headers.get(signing.HEADER))
        if problem:
            raise ApiError(401, problem, signing.HEADER)
        return await self.on_notification(raw)

    @contextlib.asynccontextmanager
    async def _order_worker(self, deadline: float) -> Any:
        """One of ``order_service.workers`` for a request whose caller waits until ``deadline``; refused
        (queue full, shed) or dropped (deadline passed) as 503 ``ORDER_SERVICE_BUSY``: the caller (the
        provider's notifier) counts the attempt failed and sends it again on its schedule."""
        try:
            await self.workers.acquire(deadline)
        except Overloaded as exc:
            raise ApiError(503, f"the order service is overloaded ({exc.kind}): try again later", None,
                           "ORDER_SERVICE_BUSY", overload=exc.kind) from None
        try:
            yield
        finally:
            self.workers.release()

    async def on_notification(self, raw: bytes) -> Response:
        """A verified notification (the native JSON body; a PSP client's webhook route makes one)."""
        arrived = self.clock.now()
        try:
            msg = json.loads(raw)
        except ValueError:
            raise ApiError(400, "malformed JSON body", "body") from None
        except RecursionError:
            raise ApiError(400, "JSON body nested too deeply", "body") from None
        if not isinstance(msg, dict):
            raise ApiError(400, "expected a JSON object", "body")
        for name, typ in (("notify_id", str), ("trade", str), ("order", str), ("amount", int), ("attempt", int),
                          ("trade_status", str)):
            if not isinstance(msg.get(name), typ) or isinstance(msg.get(name), bool):
                raise ApiError(400, f"{name}: expected {typ.__name__}", name)
        order_id, trade = msg["order"], msg["trade"]
        async with self._order_worker(policies.request_deadline(arrived, self.conditions.current().gateway.notify_ack_timeout)):
            # The handler's read, when a worker takes the notification; it writes service_time later.
            read = self.store.one("SELECT * FROM orders WHERE ord = ?", (order_id,))
            await self.clock.sleep(self.conditions.sample("order_service.service_time"))
        ev = {"trade": trade, "notify_id": msg["notify_id"], "attempt": msg["attempt"]}
        row = self.store.one("SELECT * FROM orders WHERE ord = ?", (order_id,))
        now = self.clock.now()
        if row is None or row["amount"] != msg["amount"]:
            with self.store.tx():
                self.store.emit(now, "notify.received", "order_service", order_id, acked=False, **ev,
                                problem="unknown order" if row is None else "amount mismatch")
            if row is None:
                raise ApiError(404, f"no such order {order_id!r}", "order", "ORDER_NOT_EXIST")
            raise ApiError(400, f"amount {msg['amount']} does not match the order's {row['amount']}", "amount",
                           "AMOUNT_MISMATCH")
        if msg.get("notify_type") == "refund_status_sync":
            return self._refund_notified(row, msg, ev, now)
        if msg["trade_status"] != "TRADE_SUCCESS":
            with self.store.tx():
                self.store.emit(now, "notify.received", "order_service", order_id, acked=True, **ev)
            return PlainTextResponse("success")
        o = self._entity(row)
        facts = TradeFacts(trade, order_id, msg["amount"])
        record = self._trade_of(order_id, trade)
        if record is None or not policies.trade_pays_order(facts, o):
            # Signed, but about a trade this order never sent to the provider: it pays nothing here.
            with self.store.tx():
                self.store.emit(now, "notify.received", "order_service", order_id, acked=False, **ev,
                                problem="not a trade of this order")
            raise ApiError(409, f"trade {trade!r} is not a trade of order {order_id!r}", "trade", "TRADE_NOT_OF_ORDER")
        if not record["accepted"]:
            self._accept_trade(order_id, trade)
        cond = self.conditions.current().order_service
        seen = self._as_seen(read, row)  # decided from this; written onto the row as it is now (o)
        paid_by_other = seen.paid_trade is not None and seen.paid_trade != trade
        action = policies.on_payment_notification(seen.state, cond.late_payment, paid_by_other)
        refund = None
        with self.store.tx():
            self.store.emit(now, "notify.received", "order_service", order_id, acked=True, **ev)
            if action is NotifyAction.MARK_PAID or action is NotifyAction.REOPEN:
                o.mark_paid(trade, blind=not cond.order_lock)  # unlocked: a blind write over a changed row
                self._save(o)
                if action is NotifyAction.REOPEN:
                    self.store.emit(now, "order.reopened", "order_service", order_id, trade=trade,
                                    stock_released=o.stock_released)
                else:
                    self.store.emit(now, "order.paid", "order_service", order_id, trade=trade)
                self._fulfil(row, now)
            elif action is NotifyAction.REFUND_LATE:
                refund = (trade, False)
            elif action is NotifyAction.REFUND_EXTRA:
                refund = (trade, True)
            # DUPLICATE / IGNORE_LATE: acknowledge, change nothing
        if refund is not None:
            self._request_refund(row, *refund)
        return PlainTextResponse("success")

    def _refund_notified(self, row: Any, msg: dict[str, Any], ev: dict[str, Any], now: float) -> Response:
        """The provider's word on a pending refund (``refund_status_sync``): landed -> the order is
        ``refunded``; failed -> asked again on ``order_service.refund_retry_schedule``
        (``policies.refund_delay``), ``refund_failed`` once it is spent."""
        order_id, trade = row["ord"], msg["trade"]
        if self._trade_of(order_id, trade) is None:
            with self.store.tx():
                self.store.emit(now, "notify.received", "order_service", order_id, acked=False, **ev,
                                problem="not a trade of this order")
            raise ApiError(409, f"trade {trade!r} is not a trade of order {order_id!r}", "trade", "TRADE_NOT_OF_ORDER")
        status = msg.get("refund_status")
        if status not in ("REFUND_SUCCESS", "REFUND_FAILED"):
            raise ApiError(400, f"refund_status: expected REFUND_SUCCESS or REFUND_FAILED, found {status!r}",
                           "refund_status")
        o = self._entity(row)
        extra = o.paid_trade is not None and o.paid_trade != trade  # a second trade of a paid order
        failures, gap = 0, None
        with self.store.tx() as conn:
            self.store.emit(now, "notify.received", "order_service", order_id, acked=True, **ev)
            if status == "REFUND_SUCCESS":
                if not extra and o.state is O.REFUND_PENDING:
                    o.to(O.REFUNDED)
                    self._save(o)
                    conn.execute("UPDATE orders SET refund_failed = 0, refund_failures = 0 WHERE ord = ?", (order_id,))
                    self.store.emit(now, "order.refunded", "order_service", order_id, amount=row["amount"],
                                    **self._ref(row, trade))
            elif (o.state is not O.REFUNDED or extra) and not self.store.one(
                    "SELECT 1 FROM jobs WHERE kind = 'refund' AND key = ?", (order_id,)):
                # (a refund job already waiting: this failure is being retried — a duplicate delivery)
                failures = row["refund_failures"] + 1
                gap = policies.refund_delay(self.conditions.current().order_service.refund_retry_schedule.gaps,
                                            failures)
                conn.execute("UPDATE orders SET refund_failures = ? WHERE ord = ?", (failures, order_id))
                if gap is not None:
                    self.store.schedule("refund", order_id, now + gap, 1,
                                        {"trade": trade, "extra": extra, "failures": failures})
                else:
                    conn.execute("UPDATE orders SET refund_failed = 1 WHERE ord = ?", (order_id,))
                    self.store.emit(now, "order.refund_failed", "order_service", order_id, amount=row["amount"],
                                    attempts=failures, error="the provider reported the refund failed",
                                    **self._ref(row, trade))
        if status == "REFUND_FAILED" and failures:
            if gap is None:
                log.error("refund of %s for order %s failed %d times, giving up until a person acts", trade,
                          order_id, failures)
            else:
                log.warning("refund of %s for order %s failed at the provider (%d), again in %gs", trade, order_id,
                            failures, gap)
        return PlainTextResponse("success")

    # -- the close job ------------------------------------------------------------------------------

    async def _job_call(self, method: str, path: str, body: dict | None = None) -> Any:
        """A close job's or refund's call to the provider. With ``order_service.job_calls_take_worker``
        (as the simulation's ``_via_gateway``) it holds one of ``order_service.workers`` for the round
        trip, competing with notifications and start payments; a pool that refuses it (queue full, shed)
        is ``ProviderUnavailable`` to the job, which tries again on its own schedule."""
        if not self.conditions.current().order_service.job_calls_take_worker:
            return await self._call(method, path, body)
        try:
            await self.workers.acquire(math.inf)
        except Overloaded as exc:
            raise ProviderUnavailable(f"the order service's workers are busy ({exc.kind})") from None
        try:
            return await self._call(method, path, body)
        finally:
            self.workers.release()

    async def _query_trade(self, trade: str) -> TradeFacts | None:
        """The provider's record of ``trade`` (None: it has none)."""
        resp = await self._job_call("GET", f"/trades/{trade}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise ProviderUnavailable(f"query answered {resp.status_code}")
        return TradeFacts.of(trade, _json(resp))

    async def _own_trade(self, o: Order, trade: str) -> TradeFacts | None:
        """``trade`` as the provider has it, if it is this order's (``policies.trade_pays_order``); a
        number the provider holds for another order, or for another amount, is forgotten."""
        facts = await self._query_trade(trade)
        if facts is None:
            return None
        if not policies.trade_pays_order(facts, o):
            self._forget_trade(o.id, trade)
            return None
        return facts

    async def _close_trade(self, trade: str) -> str:
        """The provider's answer to close, as ``policies.after_trade_close`` reads it."""
        resp = await self._job_call("POST", f"/trades/{trade}/close")
        if resp.status_code == 200:
            return "closed"
        if resp.status_code == 404:
            return "no_trade"
        code = _json(resp).get("code")
        if resp.status_code == 409 and code == "ACQ.TRADE_HAS_SUCCESS":
            return "already_paid"
        if resp.status_code == 409 and code == "TRADE_CLOSE_TOO_EARLY":
            return "too_early"  # gateway.min_close_age: come back later
        if resp.status_code == 409:
            return "in_progress"
        raise ProviderUnavailable(f"close answered {resp.status_code}")

    async def close_unpaid(self, order_id: str, reason: str) -> str:
        """Close an unpaid order the way ``order_service.close_policy`` says: ``closed``, ``paid`` (the
        gateway had it paid), ``retry`` (undecidable now) or ``nothing`` (no longer awaiting payment)."""
        async with self._order_lock(order_id):
            return await self._close_unpaid(order_id, reason)

    async def _close_unpaid(self, order_id: str, reason: str) -> str:
        row = self._order_row(order_id)
        cond = self.conditions.current().order_service
        o = self._entity(row)
        step = policies.on_order_expiry(cond.close_policy, o.state)
        if step is Step.NOTHING:
            return "nothing"
        accepted = set(self._trades(order_id, "trade"))
        trades = self._trades(order_id, "trade", accepted_only=False)
        paid_by: dict[str | None, TradeFacts] = {}
        try:
            decisions: list[tuple[str | None, Step]] = []
            if step is Step.QUERY_TRADE:
                for t in trades:
                    facts = await self._own_trade(o, t)
                    decision = policies.after_trade_query(TradeState(facts.state) if facts and facts.state else None)
                    if decision is Step.MARK_PAID:
                        paid_by[t] = facts
                    decisions.append((t, decision))
                decisions = decisions or [(None, policies.after_trade_query(None))]
            elif step is Step.CLOSE_TRADE:
                for t in trades:
                    if t not in accepted and await self._own_trade(o, t) is None:
                        decisions.append((t, policies.after_trade_close("no_trade")))  # never closes another's
                        continue
                    decision = policies.after_trade_close(await self._close_trade(t))
                    if decision is Step.MARK_PAID:  # paid: by this order's trade for its amount?
                        facts = await self._own_trade(o, t)
                        if facts is None or facts.state not in (TradeState.SUCCEEDED.value, TradeState.REFUNDED.value):
                            decision = Step.RETRY_LATER if facts is not None else policies.after_trade_close("no_trade")
                        else:
                            paid_by[t] = facts
                    decisions.append((t, decision))
                decisions = decisions or [(None, policies.after_trade_close("no_trade"))]
            else:
                decisions = [(None, step)]
                if reason == "ttl":  # the rest of the close job's transaction (stock, coupons): its window
                    window = self.conditions.sample("order_service.close_write_delay")
                    if window > 0:  # modelled: a close job gives its scheduler slot back meanwhile
                        async with self.scheduler.unslotted():
                            await self.clock.sleep(window)
        except ProviderUnavailable:
            return "retry"
        step, trade = _combine(decisions)
        if step is Step.RETRY_LATER:
            return "retry"
        if step is Step.MARK_PAID:
            return "paid" if self._mark_paid(order_id, paid_by[trade]) else "retry"
        current = self._order_row(order_id)  # a notification may have marked it paid meanwhile:
        if self._as_seen(row, current).state is not O.AWAITING_PAYMENT:  # seen only under order_lock
            return "nothing"
        o = self._entity(current)
        now = self.clock.now()
        with self.store.tx():
            o.close(reason, cond.release_stock_on_close, blind=not cond.order_lock)  # unlocked: a lost update
            self._save(o)
            self.store.emit(now, "order.closed", "order_service", order_id, reason=reason,
                            stock_released=o.stock_released)
        if step is Step.CLOSE_ORDER_THEN_TRADE:
            for t in self._trades(order_id, "trade"):
                try:
                    await self._close_trade(t)
                except ProviderUnavailable:
                    pass  # the trade stays payable: a late payment is what the policy risks
        return "closed"

    async def _expire(self, job: Job) -> None:
        """The per-order close timer (``close_mode = "timer"``)."""
        if await self.close_unpaid(job.key, "ttl") == "retry":
            with self.store.tx():
                self.store.done(job)
                self.store.schedule("expire", job.key, self.clock.now() + CLOSE_RETRY)

    async def _sweep_loop(self) -> None:
        """``close_mode = "sweep"``: every ``sweep_interval`` (at multiples of it in scenario time), close
        every expired order still awaiting payment."""
        looked, previous = self.clock.now(), None
        while True:
            interval = max(self.conditions.current().order_service.sweep_interval, 1e-3)
            now = self.clock.now()
            if interval != previous:  # a new interval (faults) counts its multiples from now on
                looked, previous = now, interval
            if now // interval == looked // interval:  # no multiple of the interval passed since the last look
                looked = now
                # At most half a second asleep, to notice a changed interval or close mode (faults).
                await asyncio.sleep(min(self.clock.wall((now // interval + 1) * interval - now), 0.5))
                continue
            looked = now
            cond = self.conditions.current().order_service
            if cond.close_mode != "sweep":
                continue
            try:
                rows = self.store.all("SELECT ord FROM orders WHERE state = ? AND expires_at <= ?",
                                      (O.AWAITING_PAYMENT.value, self.clock.now()))
                limit = asyncio.Semaphore(cond.workers)

                async def one(order_id: str) -> None:
                    async with limit:
                        await self.close_unpaid(order_id, "ttl")

                await asyncio.gather(*(one(r[0]) for r in rows), return_exceptions=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")

    # -- the merchant -------------------------------------------------------------------------------
    #
    # As the simulation's merchant (``sim/model/merchant.py``): every paid order is fulfilled — shipped
    # ``merchant.ship_time`` after it is paid, delivered ``merchant.delivery_time`` after that, completed
    # at delivery (wallet, card) or when its BNPL *finish* is accepted. How the finish is sent is the
    # integration of the order's merchant in ``merchant.population`` (read from the scenario the
    # checkout started with): ``sync`` (a durable job ``bnpl_finish_delay`` after delivery), ``batch``
    # (a durable job every ``batch_interval`` sends everything delivered since, one call per
    # ``batch_item_time``; a run that finds the previous one still running is skipped) or ``queue`` (the
    # worker holds each message in this process's memory, ``_held``, ``bnpl_finish_delay``; a durable
    # restart job every ``restart_every`` clears that memory — what it held is lost, unless
    # ``merchant.finish_outbox`` kept a row of it, which the restarted worker sends again).

    def _population(self) -> dict[str, Any]:
        """``merchant.population`` of the scenario the checkout started with, by name."""
        pop = self._merchants
        if pop is None:
            pop = self._merchants = {m.name: m for m in self.conditions.base.merchant.population}
        return pop

    def _merchant_of(self, name: str | None) -> str:
        """The order's merchant: a name of ``merchant.population`` (its first when the order names none)."""
        pop = self.conditions.base.merchant.population
        if name is None:
            return pop[0].name
        if name not in self._population():
            shown = ", ".join(m.name for m in pop[:10]) + (", …" if len(pop) > 10 else "")
            raise ApiError(422, f"merchant: {name!r} is not a merchant of merchant.population ({shown})",
                           "merchant", "MERCHANT_UNKNOWN")
        return name

    def _merchant_draw(self, name: str, what: str) -> float:
        """A draw of merchant ``name``'s ``batch_item_time`` or ``restart_every``, from its own stream."""
        key = (name, what)
        sampler = self._merchant_samplers.get(key)
        if sampler is None:
            dist = getattr(self._population()[name], what)
            sampler = self._merchant_samplers[key] = dist.sampler(self.conditions.rng(f"merchant.{name}.{what}"))
        return sampler()

    def _plan_merchants(self) -> None:
        """At start: each batch merchant's job at the next multiple of its ``batch_interval`` and each
        restarting queue merchant's first worker restart, unless pending already (a restart keeps them)."""
        now = self.clock.now()
        pending = {(r[0], r[1]) for r in self.store.all(
            "SELECT kind, key FROM jobs WHERE kind IN ('merchant_batch', 'merchant_restart')")}
        with self.store.tx():
            for m in self.conditions.base.merchant.population:
                if m.finish == "batch" and ("merchant_batch", m.name) not in pending:
                    self.store.schedule("merchant_batch", m.name,
                                        (math.floor(now / m.batch_interval) + 1) * m.batch_interval)
                elif m.finish == "queue" and m.restart_every is not None \
                        and ("merchant_restart", m.name) not in pending:
                    self.store.schedule("merchant_restart", m.name, now + self._merchant_draw(m.name, "restart_every"))

    async def _merchant_start(self) -> None:
        """At start the queue workers' memory is empty (this process just started): what was held is
        lost, but the outbox rows (``merchant.finish_outbox``) are sent again."""
        rows = self.store.all("SELECT ord, merchant, agreement FROM merchant_outbox")
        for r in rows:
            self._hold(r["merchant"], r["ord"], r["agreement"], 0.0)

    def _fulfil(self, row: Any, now: float) -> None:
        """In a tx: a newly paid order goes to the merchant, who ships it ``merchant.ship_time`` later.
        Each time is a numbered fulfilment request, ``merchant.fulfilment`` with ``shipment`` n, as the
        simulation's merchant emits it: an order marked paid twice (a lost update) is fulfilled twice."""
        conn = self.store.conn
        conn.execute("UPDATE orders SET fulfilments = fulfilments + 1 WHERE ord = ?", (row["ord"],))
        n = conn.execute("SELECT fulfilments FROM orders WHERE ord = ?", (row["ord"],)).fetchone()[0]
        self.store.emit(now, "merchant.fulfilment", "merchant", row["ord"], merchant=row["merchant"], shipment=n)
        self.store.schedule("ship", row["ord"], now + self.conditions.sample("merchant.ship_time"))

    async def _ship(self, job: Job) -> None:
        """Paid -> shipped; delivered ``merchant.delivery_time`` later."""
        o = self._entity(self._order_row(job.key))
        if o.state is not O.PAID:
            return  # refunded before it shipped, or shipped already (a second fulfilment of the order)
        now = self.clock.now()
        with self.store.tx():
            self.store.done(job)
            o.to(O.SHIPPED)
            self._save(o)
            self.store.emit(now, "order.shipped", "merchant", job.key)
            self.store.schedule("deliver", job.key, now + self.conditions.sample("merchant.delivery_time"))

    async def _deliver(self, job: Job) -> None:
        """Shipped -> delivered; a wallet or card order is then completed, a BNPL one waits for its finish
        (sent as the order's merchant's integration sends it)."""
        row = self._order_row(job.key)
        o = self._entity(row)
        old = o.state is O.PAID  # a job of an older checkout, which shipped and delivered at once
        if o.state is not O.SHIPPED and not old:
            return
        c = self.conditions
        now = self.clock.now()
        prof = self._population().get(row["merchant"])
        mode = prof.finish if prof is not None else "sync"  # an order of a merchant no longer in the population
        hold: float | None = None
        with self.store.tx() as conn:
            self.store.done(job)
            if old:
                o.to(O.SHIPPED)
                self.store.emit(now, "order.shipped", "merchant", job.key)
            o.to(O.DELIVERED)
            self._save(o)
            self.store.emit(now, "order.delivered", "merchant", job.key)
            if row["method"] != "bnpl":
                o.to(O.COMPLETED)
                self._save(o)
                self.store.emit(now, "order.completed", "merchant", job.key)
            elif mode == "sync":
                self.store.schedule("bnpl_finish", job.key, now + c.sample("merchant.bnpl_finish_delay"), 1,
                                    {"agreement": o.paid_trade})
            elif mode == "batch":
                conn.execute("INSERT OR REPLACE INTO merchant_batch (ord, merchant, agreement, t) VALUES (?, ?, ?, ?)",
                             (job.key, row["merchant"], o.paid_trade, now))
            else:
                hold = c.sample("merchant.bnpl_finish_delay")
                if c.current().merchant.finish_outbox:
                    conn.execute("INSERT OR REPLACE INTO merchant_outbox (ord, merchant, agreement, t)"
                                 " VALUES (?, ?, ?, ?)", (job.key, row["merchant"], o.paid_trade, now))
        if hold is not None:
            self._hold(row["merchant"], job.key, o.paid_trade, hold)

    # queue: the worker's memory

    def _hold(self, merchant: str, order_id: str, agreement: str, delay: float) -> None:
        """The queue worker of ``merchant`` takes the finish message of ``order_id``: held in memory
        (``_held``) for ``delay`` scenario seconds, then sent (and retried) while the worker still has it."""
        token = [True]
        self._held.setdefault(merchant, {})[order_id] = token
        task = asyncio.get_running_loop().create_task(self._queued_finish(merchant, order_id, agreement, delay, token))
        self._merchant_tasks.add(task)
        task.add_done_callback(self._merchant_tasks.discard)

    async def _queued_finish(self, merchant: str, order_id: str, agreement: str, delay: float, token: list) -> None:
        c = self.conditions
        try:
            await self.clock.sleep(delay)
            attempt = 1
            while token[0]:  # a restart took the message from the worker's memory: nothing more is sent
                ok = await self._send_finish(order_id, agreement, attempt, durable_retry=False)
                if ok is None or ok or attempt > c.current().merchant.bnpl_finish_retries:
                    break
                attempt += 1
                await self.clock.sleep(c.sample("merchant.bnpl_finish_retry_delay"))
            if token[0]:  # answered, or given up: the message is done with, its outbox row too
                with self.store.tx() as conn:
                    conn.execute("DELETE FROM merchant_outbox WHERE ord = ?", (order_id,))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the queue worker of merchant %s failed on the finish of %s", merchant, order_id)
        finally:
            held = self._held.get(merchant, {})
            if held.get(order_id) is token:
                del held[order_id]

    async def _merchant_restart(self, job: Job) -> None:
        """A queue merchant's worker restarts: every finish message it holds in memory is lost — with
        ``merchant.finish_outbox`` the restarted worker reads the outbox and sends them again."""
        name = job.key
        held = self._held.pop(name, {})
        for token in held.values():
            token[0] = False
        now = self.clock.now()
        outbox = {r["ord"]: r["agreement"] for r in self.store.all(
            "SELECT ord, agreement FROM merchant_outbox WHERE merchant = ?", (name,))}
        prof = self._population().get(name)
        with self.store.tx():
            self.store.done(job)
            for order_id in held:
                self.store.emit(now, "merchant.worker_restarted", "merchant", order_id, merchant=name,
                                lost=order_id not in outbox)
            if prof is not None and prof.finish == "queue" and prof.restart_every is not None:
                self.store.schedule("merchant_restart", name, now + self._merchant_draw(name, "restart_every"))
        st = self._merchant_stats.setdefault(name, collections.Counter())
        st["restarts"] += 1
        st["lost"] += sum(1 for o in held if o not in outbox)
        for order_id, agreement in outbox.items():  # the new worker re-reads the outbox
            token = self._held.get(name, {}).get(order_id)
            if token is None:
                self._hold(name, order_id, agreement, 0.0)
        log.info("merchant %s: queue worker restarted, %d held finish message(s), %d lost", name, len(held),
                 sum(1 for o in held if o not in outbox))

    # batch

    async def _merchant_batch(self, job: Job) -> None:
        """A batch merchant's finish job: every ``batch_interval``; sends finish for what was delivered
        since, one call per ``batch_item_time``, unless the previous run still runs or ``merchant.batch_paused``
        is on (then it is skipped: :func:`sim.domain.policies.batch_run`)."""
        name = job.key
        prof = self._population().get(name)
        now = self.clock.now()
        with self.store.tx():
            self.store.done(job)
            if prof is not None and prof.finish == "batch":
                nxt = job.due + prof.batch_interval
                if nxt <= now:  # the checkout was down across runs: the next multiple from now
                    nxt = (math.floor(now / prof.batch_interval) + 1) * prof.batch_interval
                self.store.schedule("merchant_batch", name, nxt)
        st = self._merchant_stats.setdefault(name, collections.Counter())
        rows = self.store.all("SELECT ord, agreement FROM merchant_batch WHERE merchant = ? AND t <= ? ORDER BY t",
                              (name, now))
        if not rows:
            return
        skip = policies.batch_run(name in self._batch_running, self.conditions.current().merchant.batch_paused)
        if skip is not None:  # the previous run still runs, or merchant.batch_paused is on
            st["batch_skipped" if skip == "running" else "batch_paused"] += 1
            log.info("merchant %s: batch run at %.1f skipped (%s)", name, now, skip)
            return
        self._batch_running.add(name)
        st["batch_runs"] += 1
        try:
            for r in rows:
                await self.clock.sleep(self._merchant_draw(name, "batch_item_time"))
                await self._send_finish(r["ord"], r["agreement"], 1)
                with self.store.tx() as conn:
                    conn.execute("DELETE FROM merchant_batch WHERE ord = ?", (r["ord"],))
        except asyncio.CancelledError:
            raise
        except Exception:  # the rows not sent stay for the next run
            log.exception("merchant %s: batch run failed", name)
        finally:
            self._batch_running.discard(name)

    # the finish call

    async def _bnpl_finish(self, job: Job) -> None:
        """A sync merchant's finish (or a retry of a sync or batch one)."""
        agreement = (job.data or {}).get("agreement") or self._order_row(job.key)["paid_trade"]
        await self._send_finish(job.key, agreement, job.attempt, job=job)

    async def _send_finish(self, order_id: str, agreement: str, attempt: int, job: Job | None = None,
                           durable_retry: bool = True) -> bool | None:
        """The merchant calls the BNPL provider's *finish* (it may fail: ``merchant.bnpl_finish_failure``).
        True: accepted (the order is completed); False: failed — with ``durable_retry`` tried again as a
        durable job after ``bnpl_finish_retry_delay``, at most ``bnpl_finish_retries`` times; None: the
        order is no longer delivered (nothing sent)."""
        o = self._entity(self._order_row(order_id))
        if o.state is not O.DELIVERED:
            return None
        c = self.conditions
        merchant = c.current().merchant
        sent_at = self.clock.now()
        ok = False
        if not c.chance("merchant.bnpl_finish_failure", merchant.bnpl_finish_failure):
            try:
                resp = await self._call("POST", f"/bnpl/agreements/{agreement}/finish")
                ok = resp.status_code == 200
            except ProviderUnavailable:
                ok = False
        now = self.clock.now()
        with self.store.tx():
            if job is not None:
                self.store.done(job)
            ev = {"agreement": agreement, "attempt": attempt}
            self.store.emit(sent_at, "bnpl.finish_sent", "merchant", order_id, **ev)
            o = self._entity(self._order_row(order_id))
            if ok:
                if o.state is O.DELIVERED:
                    o.to(O.COMPLETED)
                    self._save(o)
                    self.store.emit(now, "order.completed", "merchant", order_id)
            else:
                self.store.emit(now, "bnpl.finish_failed", "merchant", order_id, **ev)
                if durable_retry and attempt <= merchant.bnpl_finish_retries:
                    self.store.schedule("bnpl_finish", order_id, now + c.sample("merchant.bnpl_finish_retry_delay"),
                                        attempt + 1, {"agreement": agreement})
        return ok

    async def _refund(self, job: Job) -> None:
        """One refund attempt. A refusal or no answer is tried again on ``order_service.refund_retry_schedule``;
        once it is spent the order is ``refund_failed`` (durable, in the history, on the buyer's screen, and
        logged as an error) — never dropped while the buyer's money is still charged."""
        data = job.data or {}
        trade, extra = data["trade"], data.get("extra", False)
        row = self._order_row(job.key)
        try:
            if row["method"] == "bnpl":  # cancel while nothing is collected, else refund (bnpl_remedy)
                resp = await self._job_call("POST", f"/bnpl/agreements/{trade}/return")
            else:
                resp = await self._job_call("POST", f"/trades/{trade}/refund", {"refund_id": f"{trade}-refund"})
            problem = None if resp.status_code == 200 else f"provider answered {resp.status_code}: {resp.text[:200]}"
        except ProviderUnavailable as exc:
            problem = str(exc)
        now = self.clock.now()
        if problem is None and _json(resp).get("refund_state") == "pending":
            # Accepted, not landed (gateway.refund_latency): the order stays refund_pending until the
            # provider's refund notification says it landed or failed (_refund_notified).
            with self.store.tx():
                self.store.done(job)
            return
        if problem is not None:
            failures = int(data.get("failures", 0)) + 1
            gap = policies.refund_delay(self.conditions.current().order_service.refund_retry_schedule.gaps, failures)
            with self.store.tx() as conn:
                self.store.done(job)
                conn.execute("UPDATE orders SET refund_failures = ? WHERE ord = ?", (failures, job.key))
                if gap is not None:
                    self.store.schedule("refund", job.key, now + gap, job.attempt, {**data, "failures": failures})
                else:
                    conn.execute("UPDATE orders SET refund_failed = 1 WHERE ord = ?", (job.key,))
                    self.store.emit(now, "order.refund_failed", "order_service", job.key, amount=row["amount"],
                                    attempts=failures, error=problem[:200], **self._ref(row, trade))
            if gap is None:
                log.error("refund of %s for order %s failed %d times, giving up until a person acts: %s",
                          trade, job.key, failures, problem)
            else:
                log.warning("refund of %s for order %s failed (%d), again in %gs: %s", trade, job.key, failures,
                            gap, problem)
            return
        if extra:
            return
        row = self._order_row(job.key)
        o = self._entity(row)
        if o.state is not O.REFUND_PENDING:
            return
        with self.store.tx() as conn:
            self.store.done(job)
            o.to(O.REFUNDED)
            self._save(o)
            conn.execute("UPDATE orders SET refund_failed = 0 WHERE ord = ?", (job.key,))
            self.store.emit(now, "order.refunded", "order_service", job.key, amount=row["amount"], **self._ref(row, trade))

    # -- reconciliation -----------------------------------------------------------------------------

    def _next_reconciliation(self, now: float) -> float | None:
        """The next multiple of ``reconciliation.interval`` after ``now`` (None: reconciliation is off)."""
        interval = self.config.scenario.reconciliation.interval
        if interval is None or interval <= 0:
            return None
        return (math.floor(now / interval) + 1) * interval

    def _plan_reconciliation(self) -> None:
        """At start: the reconciliation job, at the next multiple of ``reconciliation.interval`` (as the
        simulation's reconciler runs), unless one is pending already (a restart keeps it)."""
        due = self._next_reconciliation(self.clock.now())
        if due is None or self.store.one("SELECT 1 FROM jobs WHERE kind = 'reconcile'"):
            return
        with self.store.tx():
            self.store.schedule("reconcile", "statement", due)

    async def _reconcile(self, job: Job) -> None:
        """Reconciliation (对账): read the bank statement's debits older than
        ``reconciliation.statement_delay`` not reconciled yet, classify each against its order and trade
        (``policies.reconcile``) and repair it per ``reconciliation.repair`` — as the simulation's
        reconciler (``sim/model/reconciliation.py``), emitting the same ``recon.*`` events. Where it
        got to is kept (meta ``recon_until``); a provider that does not answer leaves it there, and the
        next run reads the same debits again (the repairs are idempotent)."""
        rc = self.config.scenario.reconciliation
        now = self.clock.now()
        since = float(self.store.meta("recon_until") or "-1")
        until = now - rc.statement_delay
        reached = None
        if until > since:
            try:
                offset: int | None = 0
                while offset is not None:
                    resp = await self._call("GET", f"/statement?since={since!r}&until={until!r}&offset={offset}")
                    if resp.status_code != 200:
                        raise ProviderUnavailable(f"statement answered {resp.status_code}: {resp.text[:200]}")
                    page = _json(resp)
                    for debit in page.get("debits") or []:
                        if isinstance(debit, dict):
                            await self._reconcile_debit(debit, rc.repair)
                    offset = page.get("next_offset") if isinstance(page.get("next_offset"), int) else None
                    got = page.get("until")  # a statement read in whole days (Alipay's bills) may stop short
                    if isinstance(got, (int, float)) and not isinstance(got, bool) and since <= got < until:
                        until = float(got)
                reached = until
            except ProviderUnavailable as exc:
                log.warning("reconciliation of the statement after %.3f stopped, again next time: %s", since, exc)
        nxt = self._next_reconciliation(self.clock.now())
        with self.store.tx():
            self.store.done(job)
            if reached is not None:
                self.store.set_meta("recon_until", repr(reached))
            if nxt is not None:
                self.store.schedule("reconcile", "statement", nxt)

    async def _reconcile_debit(self, debit: dict[str, Any], repair: str) -> None:
        """One debit of the statement against the order and the trade the provider reports now."""
        order_id, trade = debit.get("order"), debit.get("trade")
        if not isinstance(order_id, str) or not isinstance(trade, str) or self._trade_of(order_id, trade) is None:
            return  # not a trade this checkout sent: another merchant's, or made at the provider directly
        async with self._order_lock(order_id):
            resp = await self._call("GET", f"/trades/{trade}")
            if resp.status_code == 404:
                return
            if resp.status_code != 200:
                raise ProviderUnavailable(f"query answered {resp.status_code}")
            view = _json(resp)
            try:
                state = TradeState(view.get("state"))
            except ValueError:
                raise ProviderUnavailable(f"query answered an unknown trade state {view.get('state')!r}") from None
            if state in (TradeState.UNKNOWN, TradeState.FAILED):
                state = TradeState.SUCCEEDED  # the bank debited it: the statement is the truth
            row = self._order_row(order_id)
            o = self._entity(row)
            refunded = view.get("refunded")
            returned = isinstance(refunded, int) and not isinstance(refunded, bool) and refunded > 0
            kind, action = policies.reconcile(o.state, state, repair, debit_returned=returned)
            if kind is None:
                return
            with self.store.tx():
                self.store.emit(self.clock.now(), "recon.found", "reconciler", order_id, kind=kind.value, trade=trade)
            if action == "refund" and state is TradeState.CLOSED:
                # A debit on a closed trade (a late approval the gateway ignored): no trade accounts for
                # the money; the provider returns it to the buyer.
                resp = await self._call("POST", f"/trades/{trade}/reverse")
                if resp.status_code == 200:
                    with self.store.tx():
                        self.store.emit(self.clock.now(), "recon.repaired", "reconciler", order_id, action="refund",
                                        trade=trade)
                elif resp.status_code == 409:
                    log.warning("reconciliation: the provider would not reverse the debit of %s (order %s): %s",
                                trade, order_id, resp.text[:200])
                else:
                    raise ProviderUnavailable(f"reverse answered {resp.status_code}")
            elif action == "refund":
                with self.store.tx():
                    self.store.emit(self.clock.now(), "recon.repaired", "reconciler", order_id, action="refund",
                                    trade=trade)
                self._request_refund(row, trade)
            elif action == "fill_order" and policies.trade_pays_order(TradeFacts.of(trade, view), o):
                if o.state is O.AWAITING_PAYMENT:
                    with self.store.tx():
                        self.store.emit(self.clock.now(), "recon.repaired", "reconciler", order_id,
                                        action="fill_order", trade=trade)
                    self._mark_paid(order_id, TradeFacts.of(trade, view))
                elif o.state is O.CLOSED:  # fill in a closed order: it is reopened, paid
                    now = self.clock.now()
                    with self.store.tx():
                        o.mark_paid(trade)
                        self._save(o)
                        self.store.emit(now, "order.reopened", "reconciler", order_id, trade=trade,
                                        stock_released=o.stock_released)
                        self.store.emit(now, "recon.repaired", "reconciler", order_id, action="fill_order",
                                        trade=trade)
                        self._fulfil(row, now)

    # -- admin --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        count = lambda sql: {r[0]: r[1] for r in self.store.all(sql)}  # noqa: E731
        return {"orders": count(f"SELECT CASE WHEN refund_failed AND state = '{O.REFUND_PENDING.value}' "
                                f"THEN '{REFUND_FAILED}' ELSE state END AS s, COUNT(*) FROM orders GROUP BY s"),
                "jobs": count("SELECT kind, COUNT(*) FROM jobs GROUP BY kind"),
                "pools": {"order_service": self.workers.counts()},
                "merchants": {name: {"held": len(self._held.get(name, {})), **self._merchant_stats.get(name, {})}
                              for name in self._population()},
                "now": self.clock.now()}


class ProviderLink:
    """The checkout's keep-alive HTTP/1.1 connections to a plain ``http://`` provider (the mock), for
    :meth:`Checkout.native_call`: requests written as bytes, answers parsed by ``httptools`` (the
    maintained parser under uvicorn, which serves these very requests), at most ``max_conns``
    connections. It does what :class:`HttpClient` (aiohttp) does for these calls, and no more:

    * ``timeout`` wall seconds for the whole exchange (connect, send, answer); waiting for a free
      connection is not part of it; a connection whose exchange timed out or failed is closed, never
      reused;
    * one retry on a fresh connection when a pooled one turns out to have been closed by the server
      before any byte of the answer came (the provider's writes are idempotent on the merchant's keys,
      as for aiohttp's retry); a refusal (nothing listening) is not retried;
    * an idle connection is dropped after :data:`KEEPALIVE` seconds (the services close theirs at 30 s),
      and one the server answered ``Connection: close`` on (or closed) is not reused;
    * every failure below HTTP raises :class:`HttpError`; an answer larger than ``max_body`` is refused.

    **Opt-in** (``CHECKOUT_CHAOS_PROVIDER_CLIENT=link`` in the checkout's environment); by default the
    calls go through :class:`HttpClient` (aiohttp), a maintained client. Why it exists: under
    ``benchmarks/load_capacity.py`` the aiohttp call was about a fifth of the checkout's CPU (cProfile,
    loaded machine). No benchmark in ``benchmarks/`` yet shows that aiohttp keeps the end-to-end target
    out of reach (alternated probes moved the CPU per flow by less than their noise), so it is not the
    default; a hand-written client becomes the default only with that figure printed by a benchmark."""

    def __init__(self, url: str, max_conns: int = 64, max_body: int = 1 << 20) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"ProviderLink: expected an http:// URL, found {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.head = f"Host: {parts.netloc}\r\n".encode("latin-1")
        self.max_body = max_body
        self._idle: list[_Link] = []
        self._slots = asyncio.Semaphore(max_conns)
        self._open: set[_Link] = set()

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> HttpResponse:
        head = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1"), self.head,
                b"Content-Length: %d\r\n" % len(body)]
        if headers:
            head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items())
        head.append(b"\r\n")
        if body:
            head.append(body)
        data = b"".join(head)
        async with self._slots:
            link = None
            try:
                async with asyncio.timeout(timeout):
                    link, reused = self._take()
                    if link is None:
                        link = await self._connect()
                    try:
                        answer = await link.exchange(data)
                    except _Stale:
                        if not reused:
                            raise HttpError("the provider closed the connection before answering") from None
                        link = await self._connect()
                        answer = await link.exchange(data)
            except TimeoutError:
                if link is not None:
                    link.close()
                raise HttpError(f"timed out after {timeout:.3g}s") from None
            except (OSError, HttpError) as exc:
                if link is not None:
                    link.close()
                if isinstance(exc, HttpError):
                    raise
                raise HttpError(f"{exc.__class__.__name__}: {exc}") from None
            except BaseException:  # cancelled mid-exchange: the connection's state is unknown
                if link is not None:
                    link.close()
                raise
            if link.reusable:
                link.idle_since = time.monotonic()
                self._idle.append(link)
            else:
                link.close()
            return answer

    def _take(self) -> tuple["_Link | None", bool]:
        now = time.monotonic()
        while self._idle:
            link = self._idle.pop()
            if link.reusable and now - link.idle_since < KEEPALIVE:
                return link, True
            link.close()
        return None, False

    async def _connect(self) -> "_Link":
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_connection(lambda: _Link(self), self.host, self.port)
        except OSError as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self._open.add(link)
        return link

    def close(self) -> None:
        for link in list(self._open):
            link.close()
        self._idle.clear()


class _Stale(Exception):
    """A pooled connection was found closed before any byte of the answer arrived."""


class _Link(asyncio.Protocol):
    """One keep-alive connection of :class:`ProviderLink`: one exchange at a time."""

    def __init__(self, owner: ProviderLink) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.reusable = True
        self.idle_since = 0.0
        self._received = False
        self._error: HttpError | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    # -- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # (also a callback's error: on_body's "too large")
            self._fail(self._error or HttpError(f"unparsable answer from the provider: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self.owner._open.discard(self)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(_Stale() if not self._received else
                                      HttpError("the provider closed the connection mid-answer"))

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.owner.max_body:
            self._error = HttpError(f"answer exceeds the limit of {self.owner.max_body} bytes")
            raise self._error  # stops the parser (which raises its own error: data_received)
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(HttpResponse(self.parser.get_status_code(), self._headers, b"".join(self._body)))

    # --
    async def exchange(self, data: bytes) -> HttpResponse:
        if self.transport is None or self.transport.is_closing():
            raise _Stale()
        self._received, self._headers, self._body, self._size = False, {}, [], 0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.owner._open.discard(self)


def _fresh_trade_no(order_id: str) -> str:
    """A trade number for ``order_id`` that nobody can have taken in advance (at most 64 characters)."""
    return f"{order_id[:40]}-r{secrets.token_hex(8)}"


def _json(resp: Any) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


_PRIORITY = {Step.MARK_PAID: 0, Step.RETRY_LATER: 1, Step.CLOSE_ORDER_THEN_TRADE: 2, Step.CLOSE_ORDER: 3}


def _combine(decisions: list[tuple[str | None, Step]]) -> tuple[Step, str | None]:
    """An order may have several trades: one paid keeps the order; one undecided postpones the close."""
    trade, step = min(decisions, key=lambda d: _PRIORITY.get(d[1], 9))
    return step, trade


_PAY_PATH = re.compile(r"^/orders/(" + ID_PATTERN.strip("^$") + r")/pay$")


class FastRoutes:
    """The checkout's outermost ASGI app: its busiest routes under load answered ahead of FastAPI (as
    ``psp.app.FastPay`` on the provider, but outside FastAPI's own middleware stack as well as its
    routing): the provider's signed notification (``POST /notify``), and a well-formed ``POST /orders``
    or ``POST /orders/{order}/pay`` (a JSON body that its model accepts). Everything else goes to
    ``limit``, the :class:`InFlightLimit` in front of the FastAPI app.

    A fast route keeps what ``limit`` guarantees, with its own counter and limits: at most
    ``limit.limit`` requests in flight (shared with the other routes; beyond it, and for a declared body
    larger than ``limit.max_body``, ``limit`` answers the 503 or 413 itself), the body within
    ``limit.body_timeout`` (else 408), and no answer before the store's commit (a failed commit
    answers 503). Same answers as the routes: the view or ``success``, a refusal ``{error, field,
    code?}``, 503 on a storage failure, 500 (logged) on a bug. A body that is not complete in the first
    message, or a create or pay request whose body does not parse or validate, goes on to ``limit``
    and FastAPI unchanged, so its limits and its 422 stay theirs.

    What this saves per request, against the same handlers behind FastAPI's stack (Starlette's
    error and telemetry middlewares, FastAPI's body limit, ``InFlightLimit``'s wrapped send, the
    response object's own send): about a tenth of the checkout's CPU under load
    (``docs/performance.md``, ``load_capacity.py``)."""

    _SIGNATURE = signing.HEADER.lower().encode()

    def __init__(self, app: Any, svc: "Checkout", limit: InFlightLimit) -> None:
        self.app, self.svc, self.limit = app, svc, limit
        self.state = getattr(app, "state", None)  # the FastAPI app's (base.serve names a profile from it)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.limit(scope, receive, send)
            return
        path = scope["path"]
        if path == "/notify":
            pay = None
        elif path == "/orders":
            pay = False
        elif path.endswith("/pay") and _PAY_PATH.match(path):
            pay = True
        else:
            await self.limit(scope, receive, send)
            return
        lim = self.limit
        length = ctype = signature = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                length = v
            elif k == b"content-type":
                ctype = v
            elif k == self._SIGNATURE:
                signature = v
        if lim.in_flight >= lim.limit or (length is not None and _declared_too_big(length, lim.max_body)):
            await lim(scope, receive, send)  # it answers 503 or 413, as for any route
            return
        lim.in_flight += 1
        counted = True
        try:
            try:
                async with asyncio.timeout(lim.body_timeout):
                    message = await receive()
            except TimeoutError:
                await _refuse(send, 408, {"error": f"request body not received within {lim.body_timeout:g}s",
                                          "field": "body"})
                return
            raw = message.get("body", b"")
            handled = None
            if message["type"] == "http.request" and not message.get("more_body") and len(raw) <= lim.max_body:
                try:
                    if pay is None:
                        handled = self._notify(signature, raw)
                    else:
                        handled = self._order(scope["path"], pay, ctype, raw)
                except Exception as exc:  # answered below as the handler's own error would be (never
                    handled = _raising(exc)  # uvicorn's bare 500: this app is outside FastAPI's handlers)
            if handled is None:  # not the happy shape: InFlightLimit and FastAPI answer it (their limits, 422)
                lim.in_flight -= 1
                counted = False
                await lim(scope, replay_body(message, receive), send)
                return
            try:
                response = await handled
            except ApiError as exc:
                response = json_response(exc.body(), exc.status)
            except StorageError as exc:
                response = json_response({"error": f"storage unavailable: {exc}", "field": None}, 503,
                                         {"Retry-After": "5"})
            except Exception as exc:  # the app's own handler would answer the same
                log.exception("unhandled error on POST %s", path)
                response = json_response({"error": f"internal error: {exc.__class__.__name__}", "field": None}, 500)
            try:
                await self.svc.store.durable()  # nothing is acknowledged before it is on disk
            except StorageError as exc:
                await _refuse(send, 503, {"error": f"storage unavailable: {exc}", "field": None}, lim.retry_after)
                return
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": response.raw_headers})
            await send({"type": "http.response.body", "body": response.body})
        finally:
            if counted:
                lim.in_flight -= 1

    def _notify(self, header: bytes | None, raw: bytes) -> Any:
        problem = signing.verify(self.svc.secret, raw, header.decode("latin-1") if header is not None else None)
        if problem:
            return _raising(ApiError(401, problem, signing.HEADER))
        return self.svc.on_notification(raw)

    def _order(self, path: str, pay: bool, ctype: bytes | None, raw: bytes) -> Any:
        """The handler's coroutine for a body its model accepts, else None."""
        if pay and not raw:
            return self.svc.start_payment(path[8:-4], None)
        if ctype is None or ctype.split(b";")[0].strip().lower() != b"application/json":
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                return None
            if pay:
                return self.svc.start_payment(path[8:-4], PayBody.model_validate(data))
            return self.svc.create_order(OrderCreate.model_validate(data))
        except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
            return None


def _declared_too_big(length: bytes, limit: int) -> bool:
    try:
        return int(length) > limit
    except ValueError:
        return False


async def _raising(exc: Exception) -> Any:
    raise exc


async def _refuse(send: Any, status: int, body: dict, retry_after: bytes | None = None) -> None:
    """A refusal as :class:`InFlightLimit` answers one (the connection closed after it)."""
    payload = _dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def create_app(config: base.ServiceConfig, psp: str = "native") -> "FastRoutes":
    """The checkout's ASGI app: :class:`FastRoutes` in front of the FastAPI app (``.app``; its
    ``.state.service`` is the :class:`Checkout`)."""
    svc = Checkout(config, psp)
    app = FastAPI(title="checkout-chaos reference checkout", version="1", lifespan=svc.lifespan,
                  description="Order service and merchant; closes orders with the simulation's policies. "
                              "Amounts are integer fen. Errors: {error, field, code?}.")
    app.state.service = svc
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"], summary="liveness")
    async def healthz() -> Response:
        return json_response({"ok": True, "service": "checkout"})

    @app.post("/orders", tags=["orders"], status_code=201, response_model=OrderView, summary="create an order")
    async def create_order(body: OrderCreate) -> Response:
        return await svc.create_order(body)

    @app.get("/orders/{order}", tags=["orders"], response_model=OrderView, summary="the buyer's order page")
    async def get_order(order: OrderPath) -> Response:
        return json_response(svc._view(order, replica=True))

    @app.post("/orders/{order}/pay", tags=["orders"],
              summary="start payment: creates the provider trade (or BNPL agreement); answers pay_url")
    async def start_payment(order: OrderPath, body: PayBody | None = None) -> Response:
        return await svc.start_payment(order, body)

    @app.post("/orders/{order}/cancel", tags=["orders"], response_model=OrderView,
              summary="cancel: closes an unpaid order (close policy), refunds a paid, unshipped one")
    async def cancel(order: OrderPath) -> Response:
        return await svc.cancel(order)

    @app.post("/orders/{order}/after-sales", tags=["orders"], status_code=202,
              summary="after-sales request (seed 003): routed by the order's state — the merchant may cancel a "
                      "paid, unshipped order; a shipped one is refunded only for a defect; a completed one "
                      "gets a complaint; answered later (202)")
    async def after_sales_request(order: OrderPath) -> Response:
        return await svc.after_sales(order)

    @app.post("/notify", tags=["notifications"], response_class=PlainTextResponse,
              summary="the provider's signed payment notification; answers 'success' to acknowledge",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["notify_id", "trade", "order", "amount", "trade_status", "attempt"],
                  "properties": {"notify_id": {"type": "string"}, "trade": {"type": "string"},
                                 "order": {"type": "string"}, "amount": {"type": "integer"},
                                 "trade_status": {"type": "string"}, "attempt": {"type": "integer"}}}}}}})
    async def notify(request: Request) -> Response:
        return await svc.notify(request)

    if svc.psp is not None:
        app.include_router(svc.psp.router())
    app.include_router(admin_router(svc))

    @app.get("/admin/stats", tags=["admin"], dependencies=[Depends(require_admin(config.admin_token))],
             summary="counts by state, pending jobs")
    async def stats() -> Response:
        return json_response(svc.stats())

    # FastRoutes in front of everything (its own in-flight count and limits: InFlightLimit's), then
    # InFlightLimit around the FastAPI app for every other request.
    limit = InFlightLimit(app, limit=config.scenario.live.max_in_flight, before_response=lambda: svc.store.durable())
    return FastRoutes(app, svc, limit)


def _provider_from_port_file(path: str, host: str, timeout: float = 30.0) -> str:
    """The runner starts both services at once; the checkout learns the provider's port when it binds."""
    import time
    from pathlib import Path as _Path

    deadline = time.monotonic() + timeout
    while not _Path(path).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"checkout: no provider port in {path} after {timeout:g}s")
        time.sleep(0.01)
    return base.url_for(host, int(_Path(path).read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.service.checkout", description=__doc__.split("\n")[0])
    base.common_arguments(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--provider-url", help="the payment provider's base URL")
    where.add_argument("--provider-port-file", help="wait for the mock provider's port in this file (loopback)")
    parser.add_argument("--public-url", help="this service's base URL as the provider reaches it (notify_url)")
    parser.add_argument("--psp", choices=CLIENTS, default="native",
                        help="the protocol the checkout pays through (default: the provider's native API)")
    args = parser.parse_args(argv)
    config = base.config_from_args(args)
    config.provider_url = args.provider_url or _provider_from_port_file(args.provider_port_file, args.host)
    app = create_app(config, args.psp)

    def bound(port: int) -> None:  # the notify_url needs the real port when it was picked at bind time
        app.state.service.notify_url = (args.public_url or base.url_for(args.host, port)).rstrip("/") + "/notify"

    base.serve(app, args, config.scenario.live.max_in_flight, on_bound=bound)


if __name__ == "__main__":
    main()
