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

import random
import zlib
from collections import deque
from heapq import heappop, heappush
from types import FunctionType
from typing import Any, Callable

import numpy as np
import simpy

from sim.domain.entities import BuyerAccount
from sim.domain.ledger import Ledger, Txn
from sim.domain.population import account_stream, buyer_stream, seeded
from sim.domain.states import OrderState
from sim.scenario import Scenario

_ORDER_WRITES = {"order.created": OrderState.AWAITING_PAYMENT, "order.paid": OrderState.PAID,
                 "order.closed": OrderState.CLOSED, "order.reopened": OrderState.PAID,
                 "order.shipped": OrderState.SHIPPED, "order.delivered": OrderState.DELIVERED,
                 "order.completed": OrderState.COMPLETED}

# events :meth:`World.emit` always passes to the checker's feed (they open or close an order's list)
_FEED_ITSELF = frozenset({"order.created", "order.end"})

STREAMS = ("arrivals", "user", "app", "gateway", "bank", "notify", "order_service", "push")


class FastEnvironment(simpy.Environment):
    """``simpy.Environment`` with a leaner run loop and bare scheduled callbacks (:meth:`call_at`).

    The order in which events are processed is SimPy's own, eid for eid: ``run(until)`` takes the eid
    SimPy's until-event would take and stops exactly where that event would stand in the queue
    (``(until, URGENT, eid)``). A callback scheduled with :meth:`call_at` is the plain function in the
    queue entry (no ``Timeout`` object, no callback list, no lambda around it).

    **Far entries wait in buckets.** Most entries of an order in flight are due hours ahead (its
    delivery, a notification retry, a refund); in one heap they made every pop sift through tens of
    thousands of entries that are not due for hours. An entry :meth:`call_at` or :meth:`timeout`
    schedules at or after ``_edge`` (a multiple of ``_SLOT`` seconds) goes, unchanged, into the list of
    its ``_SLOT``-second slot instead; the run loop pops the heap only while its first entry is due
    before ``_edge``, and otherwise moves the next slot's entries into the heap first (``_edge`` then
    moves to that slot's end). Every entry in a slot is due at or after ``_edge``, so the entry popped is
    always the least of all, the same tuple as with one heap: the order is unchanged, eid for eid.
    """

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self._ready: deque = deque()  # processes to start now, in order (see :meth:`process`)
        self._edge = (initial_time // _SLOT + 1) * _SLOT  # entries due from here on wait in slots
        self._slots: dict[int, list] = {}  # slot index -> its entries, in the order they were scheduled
        self._slot_keys: list[int] = []  # heap of the slot indices in _slots

    def _to_slot(self, entry: tuple) -> None:
        """Put ``entry``, due at or after ``_edge``, into the list of its slot."""
        k = int(entry[0] // _SLOT)  # t >= _edge = m * _SLOT (exact: _SLOT is a power of two) -> k >= m
        slot = self._slots.get(k)
        if slot is None:
            self._slots[k] = [entry]
            heappush(self._slot_keys, k)
        else:
            slot.append(entry)

    def _open_slot(self) -> None:
        """Move the next slot's entries into the heap; ``_edge`` becomes that slot's end."""
        k = heappop(self._slot_keys)
        queue = self._queue
        for entry in self._slots.pop(k):
            heappush(queue, entry)
        self._edge = (k + 1) * _SLOT

    def _open_all_slots(self) -> None:
        """Every waiting entry into the heap, and no slots from now on (for SimPy's own ``step``/``peek``)."""
        while self._slot_keys:
            self._open_slot()
        self._edge = float("inf")

    def call_at(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn()`` ``delay`` seconds from now, ordered like ``timeout(delay)`` with ``fn`` as callback."""
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        if fn.__class__ is not FunctionType:
            fn = _as_function(fn)
        t = self._now + delay
        if t < self._edge:
            heappush(self._queue, (t, 1, next(self._eid), fn))
        else:
            self._to_slot((t, 1, next(self._eid), fn))

    def process(self, generator: Any) -> "_Process":
        """Run ``generator`` as a process, driven like ``simpy.Process`` (the same events in the same
        order) without its ``Initialize`` object, its per-step bookkeeping or its end event: the model
        never waits on a process, so the end event (which SimPy schedules, with no callbacks) changed
        nothing but the eid counter, whose values only break ties in order. A process that raises
        stops the run, as in SimPy."""
        proc = _Process(generator)
        # SimPy's Initialize is (now, URGENT, eid) in the queue: it runs right after the callback that
        # made it, before anything else due now (nothing else is URGENT: the other processes' starts
        # come before or after it in the same order). Kept in a FIFO instead of the heap; the eid is
        # taken all the same, so every later entry keeps its number.
        next(self._eid)
        self._ready.append(proc)
        return proc

    def timeout(self, delay: float, value: Any = None) -> simpy.Timeout:
        """``simpy.Timeout(self, delay, value)``, built without its two Python-level calls."""
        if delay < 0:
            raise ValueError(f"Negative delay {delay}")
        ev = _new_timeout(simpy.Timeout)
        ev.env = self
        ev.callbacks = []
        ev._value = value
        ev._delay = delay
        ev._ok = True
        t = self._now + delay
        if t < self._edge:
            heappush(self._queue, (t, 1, next(self._eid), ev))
        else:
            self._to_slot((t, 1, next(self._eid), ev))
        return ev

    def peek(self) -> float:
        if self._ready:
            return self._now
        self._open_all_slots()
        return super().peek()

    def step(self) -> None:
        if self._ready:
            self._ready.popleft().step(None)
            return
        self._open_all_slots()
        entry = self._queue[0] if self._queue else None
        if entry is not None and entry[3].__class__ is FunctionType:
            heappop(self._queue)
            self._now = entry[0]
            entry[3]()
            return
        super().step()

    def run(self, until: Any = None) -> Any:
        if until is not None and isinstance(until, simpy.Event):
            self._open_all_slots()  # SimPy's loop pops the heap alone
            return super().run(until)
        if until is not None:
            at = until if isinstance(until, int) else float(until)
            if at <= self._now:
                raise ValueError(f"until ({at}) must be greater than the current simulation time")
            stop = (at, 0, next(self._eid))  # where SimPy's until event (URGENT) would stand
        else:
            stop = None
        queue = self._queue
        function = FunctionType
        ready = self._ready
        slot_keys = self._slot_keys
        limit = stop[0] if stop is not None else float("inf")
        while True:
            if ready:  # processes started by the last callback (URGENT at now: before anything else)
                if self._now >= limit:  # at the stop time they stand after the until event
                    break
                while ready:  # (a process's first step does not move the clock)
                    ready.popleft().step(None)
                continue
            if not queue or queue[0][0] >= self._edge:
                if slot_keys:  # the next slot may hold entries before the heap's first: open it
                    self._open_slot()
                    continue
                if not queue:
                    break
            entry = heappop(queue)
            t = entry[0]
            if t >= limit and stop is not None and entry > stop:  # a float first, the tuple at the stop time
                heappush(queue, entry)
                break
            self._now = t
            ev = entry[3]
            if ev.__class__ is function:
                ev()
                continue
            callbacks, ev.callbacks = ev.callbacks, None
            for callback in callbacks:
                callback(ev)
            if not ev._ok and not hasattr(ev, "_defused"):
                exc = type(ev._value)(*ev._value.args)
                exc.__cause__ = ev._value
                raise exc
        if stop is not None:
            self._now = stop[0]
        return None


_new_timeout = object.__new__
_SLOT = 64.0  # seconds per slot of far entries (a power of two: t // _SLOT is exact at slot edges)
# 32-bit words one draw of a fresh stream takes, by Dist kind (exponential, uniform: one random();
# lognormal: gauss, two random() for a pair, the second value cached in gauss_next)
_DRAW_WORDS = {"constant": 0, "exponential": 2, "uniform": 2, "lognormal": 4}
_MT_N = 624  # Mersenne Twister state words: a fresh stream stands at position 624 (twists at its first draw)


class _Process:
    """A generator driven by :class:`FastEnvironment` (see :meth:`FastEnvironment.process`)."""

    __slots__ = ("gen",)

    def __init__(self, gen: Any) -> None:
        self.gen = gen  # no bound method kept on self: a cycle the paused collector would never free

    def _resume(self, event: Any) -> None:
        if event._ok:
            self.step(event._value)
        else:
            event._defused = True
            exc = type(event._value)(*event._value.args)
            exc.__cause__ = event._value
            self.step(None, exc)

    def step(self, value: Any, exc: BaseException | None = None) -> None:
        gen = self.gen
        while True:
            try:
                event = gen.send(value) if exc is None else gen.throw(exc)
            except StopIteration:
                return
            exc = None
            try:
                callbacks = event.callbacks
            except AttributeError:
                if isinstance(event, _Process):
                    raise RuntimeError("a model process cannot wait on another process (FastEnvironment.process "
                                       "keeps no end event): wait on an event the other one succeeds") from None
                raise RuntimeError(f'Invalid yield value "{event}"') from None
            if callbacks is not None:
                callbacks.append(self._resume)
                return
            if event._ok:  # already processed: go on at once with its value, as SimPy does
                value = event._value
            else:
                event._defused = True
                exc = type(event._value)(*event._value.args)
                exc.__cause__ = event._value


_UNSET = object()


class Answer:
    """A one-shot event a model process waits on (``yield answer``): ``simpy.Event`` cut to what the
    model uses. :meth:`settle` is ``triggered or succeed(value)``: the first value wins and the event
    is queued as ``succeed`` queues it, (now, NORMAL, eid), so it is processed in SimPy's order."""

    __slots__ = ("env", "callbacks", "_ok", "_value")

    def __init__(self, env: FastEnvironment) -> None:
        self.env = env
        self.callbacks: list | None = []
        self._ok = True
        self._value = _UNSET

    @property
    def triggered(self) -> bool:
        return self._value is not _UNSET

    def settle(self, value: Any) -> None:
        if self._value is _UNSET:
            self._value = value
            env = self.env
            heappush(env._queue, (env._now, 1, next(env._eid), self))


def _as_function(fn: Callable[[], None]) -> FunctionType:
    return lambda: fn()


# numpy's SeedSequence (hashmix, mix and generate_state of numpy/random/bit_generator.pyx), uint32 words
_M32 = 0xFFFFFFFF
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4


def _words(x: int) -> list[int]:
    out = []
    while True:
        out.append(x & _M32)
        x >>= 32
        if not x:
            return out


class SpawnSeeds:
    """``SeedSequence(entropy, spawn_key=prefix + (w, tail)).generate_state(2)`` as one integer, fast.

    Exactly numpy's value (tests/test_model_seeds.py compares them), computed without building a
    ``SeedSequence``: the pool after the root entropy and the fixed spawn-key prefix is mixed once,
    and each call mixes only its last two words (one uint32 each) and draws two output words. numpy's
    own construction (an object, an ``errstate`` context, array conversions) cost ~10 % of a
    replication when done once per paid order.
    """

    __slots__ = ("pool", "hash_a", "tail")

    def __init__(self, entropy: int, prefix: tuple[int, ...], tail: int) -> None:
        if entropy < 0 or tail < 0 or tail > _M32 or any(k < 0 for k in prefix):
            raise ValueError("SpawnSeeds: entropy and spawn-key words must be non-negative (tail one uint32)")
        run = _words(entropy)
        if len(run) < _POOL:  # with a spawn key, numpy pads the run entropy to the pool size
            run += [0] * (_POOL - len(run))
        ent = run + [x for k in prefix for x in _words(k)]
        h = _INIT_A

        def hashmix(v: int) -> int:
            nonlocal h
            v = ((v ^ h) * ((h * _MULT_A) & _M32)) & _M32
            h = (h * _MULT_A) & _M32
            return v ^ (v >> 16)

        pool = [hashmix(ent[i] if i < len(ent) else 0) for i in range(_POOL)]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    r = (_MIX_L * pool[dst] - _MIX_R * hashmix(pool[src])) & _M32
                    pool[dst] = r ^ (r >> 16)
        for src in range(_POOL, len(ent)):
            for dst in range(_POOL):
                r = (_MIX_L * pool[dst] - _MIX_R * hashmix(ent[src])) & _M32
                pool[dst] = r ^ (r >> 16)
        self.pool = tuple(pool)
        consts = []  # the hash constants of the next eight hashmix calls (they do not depend on values)
        for _ in range(2 * _POOL):
            consts.append((h, (h * _MULT_A) & _M32))
            h = (h * _MULT_A) & _M32
        self.hash_a = tuple(consts)
        self.tail = tail

    def seed(self, word: int) -> int:
        """The 64-bit seed for spawn key ``prefix + (word, tail)`` (``word`` one uint32, e.g. a crc32).

        numpy's loop (8 hashmix/mix steps) unrolled: the two output words read pool words 0 and 1 only, and pool word
        ``d`` is mixed with its own two hash constants only, so words 2 and 3 need not be computed."""
        q0, q1, _, _ = self.pool
        (h0, m0), (h1, m1), _, _, (h4, m4), (h5, m5), _, _ = self.hash_a
        L, R, M = _MIX_L, _MIX_R, _M32
        w = word
        v = ((w ^ h0) * m0) & M; v ^= v >> 16; r = (L * q0 - R * v) & M; q0 = r ^ (r >> 16)  # noqa: E702
        v = ((w ^ h1) * m1) & M; v ^= v >> 16; r = (L * q1 - R * v) & M; q1 = r ^ (r >> 16)  # noqa: E702
        w = self.tail
        v = ((w ^ h4) * m4) & M; v ^= v >> 16; r = (L * q0 - R * v) & M; q0 = r ^ (r >> 16)  # noqa: E702
        v = ((w ^ h5) * m5) & M; v ^= v >> 16; r = (L * q1 - R * v) & M; q1 = r ^ (r >> 16)  # noqa: E702
        a = ((q0 ^ _INIT_B) * _OUT_M0) & M
        b = ((q1 ^ _OUT_H1) * _OUT_M1) & M
        return (a ^ (a >> 16)) | ((b ^ (b >> 16)) << 32)


_OUT_H1 = (_INIT_B * _MULT_B) & _M32
_OUT_M0 = _OUT_H1
_OUT_M1 = (_OUT_H1 * _MULT_B) & _M32


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
        self.env = FastEnvironment()
        self.at = self.env.call_at  # World.at without its own call (the model's most frequent one)
        self.scenario = scenario
        self.replication = replication
        self.rng = make_streams(scenario.run.seed, replication)
        self.sink = sink
        self._checker: Any = None  # a Checker fed directly by emit (see :meth:`feed_directly`)
        self._held: dict | None = None
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
        self._order_seeds = SpawnSeeds(scenario.run.seed, (replication,), 1)
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
        return buyer_stream(self.scenario.run.seed, self.replication, index)

    def account_rng(self, user: str) -> random.Random:
        """The stream of buyer account ``user``: its limits, risk status and top-ups, whoever draws first."""
        r = self.account_rngs.get(user)
        if r is None:
            r = self.account_rngs[user] = account_stream(self.scenario.run.seed, self.replication, user)
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
            r = self.order_rngs[order] = self._fresh_order_rng(order)
        elif r.__class__ is tuple:  # parked: rebuild the stream exactly where it stood
            r = self.order_rngs[order] = self._unpark(order, *r)
        return r

    def _fresh_order_rng(self, order: str) -> random.Random:
        # = SeedSequence(seed, spawn_key=(replication, crc32(order), 1)).generate_state(2) as an int
        return seeded(self._order_seeds.seed(zlib.crc32(order.encode())))

    def new_order_rng(self, order: str) -> bool:
        """True when ``order`` has no stream yet (its first draw will be the stream's first)."""
        return order not in self.order_rngs

    def park_order_rng(self, order: str, drew: Any = None) -> None:
        """Keep ``order``'s stream as (position, cached gauss) instead of a Mersenne Twister (2.5 KB).

        Only for a stream made since :meth:`new_order_rng` said so and drawn from a few times: its
        state is then the seed's first twist plus a position, which :meth:`order_rng` rebuilds
        exactly when the order draws again (most orders never do: their fulfilment drew once, then
        they wait hours for delivery). Orders in flight are what the run's memory follows.

        ``drew``: the one :class:`~sim.scenario.Dist` drawn since, when its words are known (CPython's
        ``random()`` takes two 32-bit words, ``gauss`` two ``random()`` for a pair): the position is
        then known without ``getstate`` (625 integers built, more than the seeding costs).
        """
        r = self.order_rngs.get(order)
        if r is None or r.__class__ is tuple:
            return
        words = _DRAW_WORDS.get(drew.kind) if drew is not None else None
        if words == 2 and drew.kind == "exponential" and drew.p("mean") == 0:
            words = 0  # Dist.draw answers 0.0 without drawing
        if words is not None:
            gauss_next = r.gauss_next
            position = words if words else _MT_N
        else:
            _version, internal, gauss_next = r.getstate()
            position = internal[-1]
        if position < _MT_N // 2 or position == _MT_N:  # one twist and few words used, or none yet
            self.order_rngs[order] = (position, gauss_next)

    def _unpark(self, order: str, position: int, gauss_next: float | None) -> random.Random:
        r = self._fresh_order_rng(order)
        if position != _MT_N:  # the stream had drawn: redo its first twist and the words up to where it stood
            # (``getrandbits`` of 32·k bits takes exactly k words, the first one twisting; no second twist
            # before 624): the state ``setstate`` of the position gives, without two 625-integer tuples
            r.getrandbits(32 * position)
        r.gauss_next = gauss_next  # what setstate would restore (a fresh stream's is None)
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
    def feed_directly(self, checker: Any) -> None:
        """Let :meth:`emit` hand an event of an order the checker already holds straight to that
        order's list, doing what ``checker.feed`` would do with it (count it; nothing else applies to
        an event that neither creates nor ends its order, of a source already seen). The sink must be
        ``checker.feed`` itself (no tap) and the checker's end of observation set: its ``_last_t`` is
        then only read at ``finish``, after ``run.end`` (the latest time of the run) went through
        ``feed``."""
        if checker.config.end is None or self.sink != checker.feed:
            raise ValueError("feed_directly: the sink must be the checker's feed and its end set")
        self._checker = checker
        self._held = checker._open

    def emit(self, type_: str, actor: str, order: str, **fields: Any) -> None:
        now = self.env._now
        log = self.state_log
        if log is not None and type_ in _ORDER_WRITES:
            log.setdefault(order, []).append((now, _ORDER_WRITES[type_]))
        fields["t"] = now
        fields["type"] = type_
        fields["actor"] = actor
        fields["order"] = order
        held = self._held
        if held is not None and type_ not in _FEED_ITSELF:
            events = held.get(order)
            if events is not None:
                chk = self._checker
                if type_ not in chk._unseen:
                    chk._events += 1
                    events.append(fields)
                    return
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
        self.env.call_at(delay, fn)

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
