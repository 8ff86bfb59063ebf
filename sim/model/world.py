"""The shared world of one replication: the clock, the scenario in force, random streams, the history.

Actors (one module each) talk only through the messages the real systems exchange — requests,
responses, notifications, scheduled jobs — each with the latency, capacity and failure the scenario
gives. Nothing here, or in any actor, decides that an order *becomes* inconsistent: random draws are
primitive quantities only (latencies, service times, the outcome of one call), and the checker finds
the anomalies in the history the actors leave behind.

Memory stays flat: every activity that may still touch an order (the buyer, a timer, a bank call, a
notification, a fulfilment step) holds a reference on it; when the last one lets go, the world emits
``order.end``, the checker judges the order and both forget it.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from typing import Any, Callable

import numpy as np
import simpy

from sim.domain.entities import BuyerAccount
from sim.domain.ledger import Ledger, Txn
from sim.domain.states import OrderState
from sim.scenario import Scenario

_ORDER_WRITES = {"order.created": OrderState.AWAITING_PAYMENT, "order.paid": OrderState.PAID,
                 "order.closed": OrderState.CLOSED, "order.reopened": OrderState.PAID,
                 "order.shipped": OrderState.SHIPPED, "order.delivered": OrderState.DELIVERED,
                 "order.completed": OrderState.COMPLETED}

STREAMS = ("arrivals", "user", "app", "gateway", "bank", "notify", "order_service", "push")


def make_streams(seed: int, replication: int, names: tuple[str, ...] = STREAMS) -> dict[str, random.Random]:
    """One independent ``random.Random`` per named source, from one root seed.

    ``SeedSequence(seed, spawn_key=(replication, crc32(name)))`` makes each stream depend only on the
    seed, the replication and its own name, so adding a stream or changing a policy that draws more
    from one source leaves the others — arrivals, the buyers' choices — untouched (common random
    numbers across compared policies).
    """
    out = {}
    for name in names:
        ss = np.random.SeedSequence(entropy=seed, spawn_key=(replication, zlib.crc32(name.encode())))
        out[name] = random.Random(int.from_bytes(ss.generate_state(4, np.uint32).tobytes(), "little"))
    return out


class World:
    """Clock, parameters, streams, entity tables, the ledger and the history sink of one replication."""

    def __init__(self, scenario: Scenario, replication: int, sink: Callable[[dict], None]) -> None:
        self.env = simpy.Environment()
        self.scenario = scenario
        self.replication = replication
        self.rng = make_streams(scenario.run.seed, replication)
        self.sink = sink
        self.ledger = Ledger(by_kind=True)  # constant memory; per-buyer money is in the history
        self.horizon = scenario.run.horizon
        self.end = scenario.run.horizon + scenario.run.drain
        self.warmup = scenario.run.warmup
        self.refs: dict[str, int] = {}
        self.orders: dict[str, Any] = {}
        self.trades: dict[str, Any] = {}
        self.agreements: dict[str, Any] = {}
        # What the bank knows of each trade's debit, and which agreements the BNPL credit side has
        # seen paid: per-order notes, dropped with the order.
        self.bank_record: dict[str, str] = {}
        self.credit_synced: set[str] = set()
        # (t, state) of every write of each order, for a lagging read replica (only when there is lag).
        lag = scenario.order_service.read_lag
        self.state_log: dict[str, list] | None = (
            None if lag.kind == "constant" and lag.mean == 0 and not scenario.faults else {})
        # buyer -> their account (balance, card line, limits, risk status, BNPL debt) when any of it is on;
        # kept for the whole run with user.accounts, else dropped with the buyer's one order.
        self.accounts: dict[str, BuyerAccount] = {}
        self.account_rngs: dict[str, random.Random] = {}
        self.accounts_persist = scenario.user.accounts is not None
        self.order_rngs: dict[str, random.Random] = {}
        self.on_forget: list[Callable[[str], None]] = []  # actors' own per-order notes to drop
        self.txn_seq = 0
        self.orders_created = 0
        self.apply(scenario)

    # -- parameters in force (fault windows swap them) ---------------------------------------------
    def apply(self, p: Scenario) -> None:
        """Make ``p``'s sections the ones in force and rebuild the samplers that read them."""
        self.p = p
        r = self.rng
        self.s_net = p.app.network_latency.sampler(r["app"])
        self.s_gw_service = p.gateway.service_time.sampler(r["gateway"])
        self.s_notify_latency = p.gateway.notify_latency.sampler(r["notify"])
        self.s_bank_latency = p.bank.latency.sampler(r["bank"])
        self.s_risk_hold = p.bank.risk_hold_duration.sampler(r["bank"])
        self.s_os_service = p.order_service.service_time.sampler(r["order_service"])
        self.s_close_write = p.order_service.close_write_delay.sampler(r["order_service"])
        # The order service's own calls cross the network on their own stream, so a close policy
        # that asks the gateway more does not shift the buyers' draws.
        self.s_os_net = p.app.network_latency.sampler(r["order_service"])

    def buyer_rng(self, index: int) -> random.Random:
        """The stream of buyer number ``index``: everything this buyer decides, retries included.

        Seeded from the root seed, the replication and the buyer's index only, so a setting that makes
        one buyer draw more (a decline, then a retry and its think time) leaves every other buyer's
        draws as they were (common random numbers that hold across compared settings).
        """
        key = hashlib.blake2b(b"buyer:%d:%d:%d" % (self.scenario.run.seed, self.replication, index),
                              digest_size=16).digest()
        return random.Random(int.from_bytes(key, "little"))

    def account_rng(self, user: str) -> random.Random:
        """The stream of buyer account ``user``: its limits, risk status and top-ups, whoever draws first."""
        r = self.account_rngs.get(user)
        if r is None:
            key = hashlib.blake2b(b"account:%d:%d:%s" % (self.scenario.run.seed, self.replication, user.encode()),
                                  digest_size=16).digest()
            r = self.account_rngs[user] = random.Random(int.from_bytes(key, "little"))
        return r

    def top_up_later(self, user: str) -> None:
        """A wallet buyer short of balance tops up ``user.top_up_delay`` later (a fresh ``wallet_balance``)."""
        acct = self.accounts.get(user)
        u = self.p.user
        if acct is None or acct.topping_up or u.top_up_delay is None or u.wallet_balance is None:
            return
        acct.topping_up = True
        r = self.account_rng(user)
        amount = int(round(u.wallet_balance.draw(r) * 100))

        def land() -> None:
            if self.accounts.get(user) is acct:
                acct.balance = (acct.balance or 0) + amount
                acct.topping_up = False

        self.at(u.top_up_delay.draw(r), land)

    def order_rng(self, order: str) -> random.Random:
        """A stream of this order's own, for what happens to it after it is paid (BNPL orders).

        Fulfilment, finish calls and deductions happen hours later in an order that depends on
        everything before them; drawing them from shared streams would hand the same draw to different
        orders when a compared policy shifts the timing a little. A per-order stream keeps common
        random numbers exact across compared policies.
        """
        r = self.order_rngs.get(order)
        if r is None:
            ss = np.random.SeedSequence(entropy=self.scenario.run.seed,
                                        spawn_key=(self.replication, zlib.crc32(order.encode()), 1))
            r = self.order_rngs[order] = random.Random(int.from_bytes(ss.generate_state(2, np.uint32).tobytes(), "little"))
        return r

    # -- the order service's read replica ------------------------------------------------------------
    def replica_state(self, order, lag: float):
        """The order's state as a replica ``lag`` seconds behind the primary serves it (None: not there yet)."""
        if lag <= 0.0:
            return order.state
        log = self.state_log.get(order.id)
        if not log:
            return order.state
        cut = self.env._now - lag
        state = None
        for t, s in log:
            if t > cut:
                break
            state = s
        return state

    # -- history -----------------------------------------------------------------------------------
    def emit(self, type_: str, actor: str, order: str, **fields: Any) -> None:
        log = self.state_log
        if log is not None and type_ in _ORDER_WRITES:
            log.setdefault(order, []).append((self.env._now, _ORDER_WRITES[type_]))
        fields["t"] = self.env._now
        fields["type"] = type_
        fields["actor"] = actor
        fields["order"] = order
        self.sink(fields)

    def post(self, txn: Txn, order: str, actor: str, **fields: Any) -> None:
        """Emit the ``ledger.txn`` event of a transaction already posted to the ledger."""
        self.emit("ledger.txn", actor, order, **txn.as_event_fields(), **fields)

    def next_txn(self, prefix: str) -> str:
        self.txn_seq += 1
        return f"{prefix}{self.txn_seq}"

    # -- scheduling helpers --------------------------------------------------------------------------
    def at(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` after ``delay`` seconds (a bare callback: cheaper than a process)."""
        ev = self.env.timeout(delay)
        ev.callbacks.append(lambda _e: fn())

    # -- order lifetime ------------------------------------------------------------------------------
    def hold(self, order: str) -> None:
        self.refs[order] = self.refs.get(order, 0) + 1

    def release(self, order: str) -> None:
        n = self.refs[order] - 1
        if n:
            self.refs[order] = n
            return
        del self.refs[order]
        self.forget(order)

    def forget(self, order: str) -> None:
        """Nothing can touch ``order`` any more: emit ``order.end`` and drop its entities."""
        o = self.orders.pop(order, None)
        if o is not None:
            for trade in o.trades:
                self.trades.pop(trade, None)
                self.bank_record.pop(trade, None)
            self.order_rngs.pop(order, None)
            if not self.accounts_persist:
                self.accounts.pop(o.user, None)
                self.account_rngs.pop(o.user, None)
            if self.state_log is not None:
                self.state_log.pop(order, None)
            ag = self.agreements.pop(order, None)
            if ag is not None:
                self.credit_synced.discard(ag.id)
        for drop in self.on_forget:
            drop(order)
        self.emit("order.end", "order_service", order)
