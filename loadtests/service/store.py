"""SQLite persistence for one service: transactions, the history events, durable jobs and the ledger.

One connection per process, used only on the event loop's thread. A transaction is a plain ``with
store.tx():`` block with **no await inside**, so a state change, its ledger postings, its history
events and the jobs it schedules (notifications to send, timers to fire) commit together or not at all,
and no other request can interleave with it.

Group commit: the logical transactions of one turn of the event loop share one SQLite commit, and
no response leaves before its transaction is committed (``durable()``, awaited by the HTTP layer).

Durability: WAL mode. With ``synchronous=NORMAL`` (the default) a commit is in the WAL file before the
response is sent, so it survives a ``kill -9`` of the process (the crash the tests make); only an
operating-system crash or power loss can lose the last commits. ``synchronous=FULL`` (``--synchronous
full``) fsyncs every commit and survives those too, at a cost in throughput. Checkpoints (copying the
WAL back into the database, with an fsync) run in a background thread, never on the event loop. A
writer that never pauses starves those PASSIVE checkpoints (the WAL is only rewound when a checkpoint
has caught up with it), so once the WAL passes :data:`WAL_LIMIT` the event loop's own connection, between
two batches, finishes the checkpoint and truncates the file (``wal_checkpoint(TRUNCATE)``: a pause of a
few milliseconds, since the thread has copied nearly everything already). The ``-wal`` file stays bounded.

Storage failures: a COMMIT that fails (disk I/O error, disk full) is rolled back, every response
waiting on it fails, and the store calls its ``on_fatal`` hook: the service logs why and exits
non-zero (``base.ServiceBase``), since which of its in-memory timers that batch touched is no longer
known; a restart reloads them all from the database. Nothing waits forever on a batch that failed.

Jobs are the outbox and the timers: a row in ``jobs`` with a kind, a key and a due time in scenario
seconds. The :class:`Scheduler` keeps them in a heap, runs each due job's handler, and on start loads
every row left by the previous process, so pending notifications and timers resume after a crash. A
job may instead be kept by a row of the service's own (``Store.queue``: the provider's outbox row is
its notification's job), which the service loads again itself after a restart.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from sim.domain.ledger import Txn, UnbalancedTransaction

log = logging.getLogger("checkout_chaos.service")

BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, t REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, due REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, data TEXT
);
"""

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS txns (
    txn TEXT PRIMARY KEY, kind TEXT NOT NULL, t REAL NOT NULL, ord TEXT NOT NULL, trade TEXT, agreement TEXT
);
CREATE TABLE IF NOT EXISTS postings (txn TEXT NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL);
"""

_json_text = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

try:  # orjson encodes the same compact JSON about ten times faster (events, job data, responses)
    import orjson as _orjson

    _ORJSON_OPTIONS = _orjson.OPT_NON_STR_KEYS

    def json_text(value: Any) -> str:
        """``value`` as compact JSON text (no spaces, non-ASCII kept), as ``json.dumps(value,
        separators=(",", ":"), ensure_ascii=False)`` writes it; orjson when installed. The text may
        differ only in how a float below 1e-4 or from 1e16 is spelt (``0.000097`` for ``9.7e-05``),
        never in the value. What orjson refuses (an integer beyond 64 bits) goes to ``json``."""
        try:
            return _orjson.dumps(value, option=_ORJSON_OPTIONS).decode()
        except TypeError:  # orjson.JSONEncodeError is one
            return _json_text(value)
except ImportError:  # pragma: no cover - orjson is a dependency; the standard library still works
    json_text = _json_text

_dumps = json_text

WAL_LIMIT = 32 << 20  # bytes: a -wal file past this is truncated by the checkpoint thread


class StorageError(Exception):
    """A write could not be made durable (the batch was rolled back); nothing of it was acknowledged."""


@dataclass
class Job:
    id: int
    kind: str
    key: str
    due: float
    attempt: int = 0
    data: dict[str, Any] | None = None
    done: bool = field(default=False, compare=False)
    # What the process that scheduled the job already had in hand (never stored: a job loaded after a
    # restart has none, and its handler reads the rows instead).
    memo: Any = field(default=None, compare=False, repr=False)


class Store:
    """One SQLite database in WAL mode; ``tx()`` commits state, events and jobs atomically."""

    def __init__(self, path: str | Path, schema: str, synchronous: str = "NORMAL",
                 on_fatal: Callable[[str], None] | None = None, wal_limit: int = WAL_LIMIT) -> None:
        self.path = str(path)
        self.on_fatal = on_fatal
        self.wal_limit = wal_limit
        self.failed: str | None = None  # why the store stopped accepting writes (after a failed commit)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        # Every commit writes each page it touched to the WAL: small pages and few indexes keep a
        # payment's commit to a few kilobytes (4 KiB pages and three more indexes cost 1.7x the CPU).
        # Tables are indexed only where a hot path looks rows up.
        self.conn.execute("PRAGMA page_size=1024")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute("PRAGMA cache_size=-65536")
        self.conn.executescript(BASE_SCHEMA + schema)
        # A checkpoint fsyncs the database file: 10-20 ms that would stall the event loop. The loop's
        # connection never checkpoints; a thread with its own connection does, twice a second (PASSIVE:
        # it never blocks the writer).
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        # After a checkpoint resets the WAL, SQLite truncates the file back to this size.
        self.conn.execute(f"PRAGMA journal_size_limit={int(wal_limit)}")
        self._closing = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="wal-checkpoint", daemon=True)
        self._checkpointer.start()
        self.scheduler: Scheduler | None = None
        self._in_tx = False
        self._events: list[tuple[float, str]] = []
        self._after_tx: list[Callable[[], None]] = []  # of the logical transaction under way
        self._after_commit: list[Callable[[], None]] = []  # of the batch awaiting its commit
        self._batch_open = False
        self._committed: asyncio.Future | None = None
        self.commits = 0

    # -- transactions -------------------------------------------------------------------------------

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One logical transaction. Never ``await`` inside it: it must not interleave with other requests.

        Group commit: logical transactions are savepoints inside one SQLite transaction per turn of
        the event loop, committed by a callback at the end of that turn. A logical transaction that
        raises is rolled back alone. Its after-commit work (jobs reaching the scheduler) runs only once
        the batch is committed, and no response leaves before the commit (:meth:`durable`, awaited by
        the HTTP layer), so "acknowledged" still means "on disk".
        """
        if self._in_tx:
            raise RuntimeError("nested transaction")
        if self.failed is not None:
            raise StorageError(f"storage failed: {self.failed}")
        self._in_tx = True
        try:
            # The first logical transaction of a batch needs no savepoint: if it raises, the whole
            # SQLite transaction (holding nothing else yet) is rolled back. Later ones get one each.
            first = not self._batch_open
            if first:
                self.conn.execute("BEGIN IMMEDIATE")
                self._batch_open = True
                self._schedule_commit()
            else:
                self.conn.execute("SAVEPOINT tx")
            try:
                yield self.conn
                if self._events:
                    self.conn.executemany("INSERT INTO events (t, body) VALUES (?, ?)", self._events)
                if not first:
                    self.conn.execute("RELEASE tx")
            except BaseException:
                if first:
                    self._abandon_batch()
                else:
                    self.conn.execute("ROLLBACK TO tx")
                    self.conn.execute("RELEASE tx")
                self._after_tx.clear()
                raise
        finally:
            self._in_tx = False
            self._events = []
        self._after_commit += self._after_tx
        self._after_tx = []
        if not self._deferred:
            self.commit()

    def _abandon_batch(self) -> None:
        """The batch's first logical transaction raised: roll the SQLite transaction back (nothing
        else is in it: no other transaction's work, no after-commit work, no waiter)."""
        self._batch_open = False
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _schedule_commit(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.commit)
            self._deferred = True
        except RuntimeError:  # no event loop (start-up, tools): commit at the end of the transaction
            self._deferred = False

    _deferred = False

    def commit(self) -> None:
        """Commit the open batch (if any), then run its after-commit work and wake :meth:`durable`."""
        if not self._batch_open:
            return
        waiter, self._committed = self._committed, None
        try:
            self.conn.execute("COMMIT")
        except BaseException as exc:
            # SQLite may have rolled the transaction back itself (an I/O error does): then ROLLBACK
            # would raise "no transaction is active" and leave the batch open for ever.
            self._batch_open = False
            self._after_commit.clear()
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("ROLLBACK after a failed COMMIT failed")
            why = f"COMMIT failed: {exc.__class__.__name__}: {exc}"
            if waiter is not None and not waiter.done():
                waiter.set_exception(StorageError(why))
                waiter.exception()  # retrieved: the waiters see it through the shield
            self._fail(why)
            if self._deferred and isinstance(exc, Exception):
                return  # a callback of the event loop: the waiters and on_fatal have been told
            raise StorageError(why) from exc
        self._batch_open = False
        self.commits += 1
        if self._truncate_wanted or (self.commits % 64 == 0 and self.wal_size() > self.wal_limit):
            self._truncate_wal()
        after, self._after_commit = self._after_commit, []
        for fn in after:
            fn()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            log.critical("storage failure in %s: %s", self.path, why)
            if self.on_fatal is not None:
                self.on_fatal(why)

    async def durable(self) -> None:
        """Return once everything written so far is committed (``StorageError`` if that failed)."""
        if self.failed is not None and not self._batch_open:
            raise StorageError(f"storage failed: {self.failed}")
        if not self._batch_open:
            return
        if self._committed is None:
            self._committed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._committed)

    def emit(self, t: float, type: str, actor: str, order: str, **fields: Any) -> None:
        """Record one history event (``docs/events.md``) in the current transaction."""
        assert self._in_tx, "events are written inside a transaction"
        event = {"t": round(t, 6), "type": type, "actor": actor, "order": order}
        event.update(fields)
        self._events.append((event["t"], _dumps(event)))

    def one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def meta(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- jobs ---------------------------------------------------------------------------------------

    def schedule(self, kind: str, key: str, due: float, attempt: int = 0, data: dict | None = None,
                 memo: Any = None) -> None:
        """Add a durable job in the current transaction; the scheduler sees it once committed.
        ``memo``: what the handler may use instead of reading it back (in memory only, see :class:`Job`)."""
        assert self._in_tx, "jobs are scheduled inside a transaction"
        cur = self.conn.execute(
            "INSERT INTO jobs (kind, key, due, attempt, data) VALUES (?, ?, ?, ?, ?)",
            (kind, key, due, attempt, _dumps(data) if data is not None else None),
        )
        job = Job(cur.lastrowid, kind, key, due, attempt, data, memo=memo)
        if self.scheduler is not None:
            self._after_tx.append(lambda: self.scheduler.push(job))

    def queue(self, job: Job) -> None:
        """In the current transaction: hand the scheduler a job whose durable record is a row of the
        caller's own (not a ``jobs`` row): it reaches the scheduler once the transaction commits, as
        a scheduled one does. Such a job has a negative ``id`` (unique among them); its owner makes
        its row say what is left to do, and loads it again after a restart."""
        assert self._in_tx, "jobs are queued inside a transaction"
        assert job.id < 0, "a queued job has no jobs row: its id is negative"
        if self.scheduler is not None:
            self._after_tx.append(lambda: self.scheduler.push(job))

    def done(self, job: Job) -> None:
        """Remove ``job`` in the current transaction (its effects and its removal commit together).
        A job without a ``jobs`` row (:meth:`queue`) has nothing to remove."""
        if job.id >= 0:
            self.conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
        job.done = True

    def load_jobs(self) -> list[Job]:
        return [
            Job(r["id"], r["kind"], r["key"], r["due"], r["attempt"], json.loads(r["data"]) if r["data"] else None)
            for r in self.all("SELECT * FROM jobs")
        ]

    # -- export -------------------------------------------------------------------------------------

    def history_chunks(self, chunk: int = 5000) -> Iterator[str]:
        """The history, ordered by ``t``, as JSON Lines text chunks; reads through its own connection.

        Sorts the (t, id) pairs, then fetches the bodies in chunks: no index on ``t`` to maintain on
        every write, and no more than one chunk of bodies in memory.
        """
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            conn.execute("BEGIN")  # one snapshot for the whole export
            ids = [r[0] for r in conn.execute("SELECT id FROM events ORDER BY t, id")]
            for start in range(0, len(ids), chunk):
                part = ids[start:start + chunk]
                bodies = dict(conn.execute(
                    f"SELECT id, body FROM events WHERE id IN ({','.join('?' * len(part))})", part))
                yield "".join(bodies[i] + "\n" for i in part)
        finally:
            conn.close()

    _truncate_wanted = False

    def _truncate_wal(self) -> None:
        """Finish the checkpoint and truncate the WAL (on the writer's connection, no batch open)."""
        self._truncate_wanted = False
        try:
            # A reader holding an old snapshot (a history export) would make it wait: never long.
            self.conn.execute("PRAGMA busy_timeout=50")
            busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:  # the checkpoint thread or a reader held it: try again at the next commit, not 64 later
                self._truncate_wanted = True
        except sqlite3.Error:
            self._truncate_wanted = True
            log.warning("WAL truncation failed; retried at the next commit", exc_info=True)
        finally:
            self.conn.execute("PRAGMA busy_timeout=5000")

    def wal_size(self) -> int:
        try:
            return Path(self.path + "-wal").stat().st_size
        except OSError:
            return 0

    def _checkpoint_loop(self, interval: float = 0.5) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            while not self._closing.wait(interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    if self.wal_size() > self.wal_limit:
                        self._truncate_wanted = True  # done by the writer, between batches (commit)
                except sqlite3.Error:
                    log.warning("WAL checkpoint failed", exc_info=True)
        finally:
            conn.close()

    def close(self) -> None:
        if self.failed is None:
            self.commit()
        self._closing.set()
        self._checkpointer.join(timeout=5)
        self.conn.close()


class SqlLedger:
    """The domain's ledger interface (``post(txn)``) over the ``txns``/``postings`` tables.

    Handed to the domain entities (``Trade.debit``, ``Agreement.deducted`` …) so the money each step
    moves is decided by ``sim/domain``; posting writes the rows and the ``ledger.txn`` event in the
    caller's transaction, exactly once per txn id.
    """

    def __init__(self, store: Store, t: float, order: str, actor: str, **ref: str) -> None:
        self.store, self.t, self.order, self.actor, self.ref = store, t, order, actor, ref

    def post(self, txn: Txn) -> bool:
        total = sum(v for _, v in txn.postings)
        if total != 0:
            raise UnbalancedTransaction(f"{txn.txn}: postings sum to {total}")
        try:
            self.store.conn.execute(
                "INSERT INTO txns (txn, kind, t, ord, trade, agreement) VALUES (?, ?, ?, ?, ?, ?)",
                (txn.txn, txn.kind, self.t, self.order, self.ref.get("trade"), self.ref.get("agreement")),
            )
        except sqlite3.IntegrityError:
            return False
        self.store.conn.executemany(
            "INSERT INTO postings (txn, account, amount) VALUES (?, ?, ?)",
            [(txn.txn, a, v) for a, v in txn.postings],
        )
        self.store.emit(self.t, "ledger.txn", self.actor, self.order, **txn.as_event_fields(), **self.ref)
        return True


def ledger_summary(store: Store) -> dict[str, Any]:
    balances = {r[0]: r[1] for r in store.all("SELECT account, SUM(amount) FROM postings GROUP BY account")}
    unbalanced = [r[0] for r in store.all("SELECT txn FROM postings GROUP BY txn HAVING SUM(amount) != 0")]
    total = sum(balances.values())
    kinds = {r[0]: r[1] for r in store.all("SELECT kind, COUNT(*) FROM txns GROUP BY kind")}
    return {"balances": balances, "total": total, "balanced": total == 0 and not unbalanced,
            "unbalanced_txns": unbalanced, "txns": kinds}


Handler = Callable[[Job], Awaitable[None]]
MAX_JOB_FAILURES = 10  # a job whose handler keeps raising is dropped (and logged) after this many tries


class _Slot:
    """The slot of the scheduler a running job's task holds (or, in a modelled wait, gave back)."""

    __slots__ = ("scheduler", "task", "held")

    def __init__(self, scheduler: "Scheduler", task: asyncio.Task | None) -> None:
        self.scheduler, self.task, self.held = scheduler, task, True


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar("checkout_chaos_job_slot", default=None)


class _Unslotted:
    """``async with scheduler.unslotted():`` — see :meth:`Scheduler.unslotted`."""

    __slots__ = ("_slot",)

    def __init__(self) -> None:
        self._slot: _Slot | None = None

    async def __aenter__(self) -> None:
        slot = _SLOT.get()
        # Only the job's own task gives its slot back (a task it spawned inherits the context, not the slot)
        if slot is None or not slot.held or slot.task is not asyncio.current_task():
            return
        sched = slot.scheduler
        slot.held = False
        sched._in_slots -= 1
        sched._waiting += 1
        sched._sem.release()
        self._slot = slot

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        slot, self._slot = self._slot, None
        if slot is None:
            return
        sched = slot.scheduler
        sched._waiting -= 1
        if exc_type is not None:  # cancelled (a stop) or failed in the wait: it ends without its slot
            return
        await sched._sem.acquire()  # cancelled here: not acquired, and the job ends without its slot
        slot.held = True
        sched._in_slots += 1


class Scheduler:
    """Runs durable jobs when due (scenario time), at most ``concurrency`` at once.

    A handler removes its job with ``store.done(job)`` inside the transaction that applies its effects;
    a handler that returns without doing so has its job removed afterwards, and one that raises has it
    retried after ``retry_delay`` scenario seconds (the error is logged), at most ``MAX_JOB_FAILURES`` times.

    The ``concurrency`` slots bound the jobs doing real work at once (their statements, their HTTP
    calls). A job waiting out a *modelled* delay (a notification's network latency, a gateway worker's
    service time) gives its slot back for the wait (:meth:`unslotted`): otherwise the slots, not the
    scenario, would cap such jobs at ``concurrency`` per delay (128 notifications per half second of
    ``gateway.notify_latency``). The job stays what it was: its durable record is untouched by the
    wait, so a restart during it makes the job again, as before.
    """

    def __init__(self, store: Store, clock: Any, handlers: dict[str, Handler], concurrency: int = 128,
                 retry_delay: float = 60.0) -> None:
        self.store, self.clock, self.handlers = store, clock, handlers
        self.retry_delay = retry_delay
        self._heap: list[tuple[float, int, Job]] = []
        self._pushed = 0
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._running = 0  # jobs started and not ended (holding a slot or in a modelled wait)
        self._in_slots = 0  # of which holding a slot
        self._waiting = 0  # of which in a modelled wait, their slot given back (unslotted)
        store.scheduler = self

    def push(self, job: Job) -> None:
        # Jobs due at the same time run in the order they were pushed (committed, or loaded): a
        # counter, not the job's id (a queued job's id is negative, the opposite of its row's order)
        self._pushed += 1
        heapq.heappush(self._heap, (job.due, self._pushed, job))
        if self._heap[0][2] is job:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._heap) + self._running

    def counts(self) -> dict[str, int]:
        """``queued``: jobs not due yet or waiting for a slot; ``in_slots``: jobs holding a slot;
        ``modelled_waits``: jobs in a modelled delay, holding none (:meth:`unslotted`)."""
        return {"queued": len(self._heap), "in_slots": self._in_slots, "modelled_waits": self._waiting}

    def unslotted(self) -> _Unslotted:
        """``async with scheduler.unslotted(): await clock.sleep(modelled)`` — the running job gives its
        slot back for a modelled wait and takes one again (queueing like a job that is due) before
        going on; nothing durable changes. Outside a job's own task (a request handler, a task a job
        spawned) it does nothing, so code shared with request handlers may use it."""
        return _Unslotted()

    def load(self) -> None:
        """Queue every job the database holds (call once, before anything schedules new ones)."""
        for job in self.store.load_jobs():
            self.push(job)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self.clock.wall(self._heap[0][0] - self.clock.now())
            if delay > 0:
                self._wake.clear()
                timer = loop.call_later(delay, self._wake.set)
                await self._wake.wait()
                timer.cancel()
                continue
            await self._sem.acquire()
            _, _, job = heapq.heappop(self._heap)
            self._running += 1
            task = loop.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        slot = _Slot(self, asyncio.current_task())
        _SLOT.set(slot)  # this task's own context (create_task copied it)
        self._in_slots += 1
        try:
            await self.handlers[job.kind](job)
            if not job.done:
                with self.store.tx():
                    self.store.done(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = (job.data or {}).get("_failures", 0) + 1
            gives_up = failures >= MAX_JOB_FAILURES
            log.exception("job %s %s (attempt %s) failed%s", job.kind, job.key, job.attempt,
                          "; giving up" if gives_up else "; retrying later")
            try:
                with self.store.tx():
                    self.store.done(job)
                    if not gives_up:
                        self.store.schedule(job.kind, job.key, self.clock.now() + self.retry_delay, job.attempt,
                                            {**(job.data or {}), "_failures": failures})
            except Exception:
                log.exception("could not reschedule job %s", job.id)
        finally:
            self._running -= 1
            if slot.held:
                self._in_slots -= 1
                self._sem.release()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
