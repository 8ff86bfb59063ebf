"""A capacity-limited actor: ``c`` servers, one FIFO queue, on the SimPy clock.

The gateway's worker pool, the bank's channels and the order service's request handlers are all
stations. A job may *hold* its server past its own service time (``held``): the gateway's worker stays
busy while its bank call is in flight, the order service's while its gateway call is — so a slow
dependency fills the pool in front of it. The queue may be bounded (``queue_limit``: a full queue
refuses the request), a job may carry its caller's deadline (with ``deadlines`` on, a job whose caller
has given up is dropped when it reaches a server instead of being executed), and with ``shedding`` on
a request arriving while ``shed_limit`` requests are in flight is answered 503 at once
(:mod:`sim.domain.policies`). ``simpy.Resource`` would do the queueing, but every request/release pair costs two extra
events and a process switch; here a job is a callback run when a server frees up, which keeps the
per-order path short (the simulation runs millions of orders). The statistics a design review asks
for — utilization, mean and p99 wait, mean queue length, timeouts — are kept as running sums over the
measurement window, so memory does not grow with the number of jobs.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

import simpy

from sim.domain import policies

STARTED, QUEUED, REJECTED, SHED = 1, 0, -1, -2  # what :meth:`Station.submit` did with a request
_INF = float("inf")

# Wait-time histogram for p99: log-spaced bins from 10 µs to ~28 h, 40 per decade (≈6% resolution).
_BINS_PER_DECADE = 40
_LO = 1e-5
_NBINS = 10 * _BINS_PER_DECADE


def _bin(x: float) -> int:
    if x <= _LO:
        return 0
    return min(_NBINS - 1, int(math.log10(x / _LO) * _BINS_PER_DECADE) + 1)


def _bin_upper(i: int) -> float:
    return 0.0 if i == 0 else _LO * 10 ** (i / _BINS_PER_DECADE)


class Station:
    """``capacity`` servers in front of one FIFO queue; :meth:`submit` a job, get a callback when done."""

    __slots__ = ("env", "name", "capacity", "busy", "queue", "t0", "t1", "_last", "_q_area", "_busy_area", "_cap_area",
                 "waits_n", "waits_sum", "hist", "timeouts", "served", "queue_limit", "deadlines", "shedding",
                 "shed_limit", "rejected", "shed", "dropped", "_call_at", "margin")

    def __init__(self, env: simpy.Environment, name: str, capacity: int, t0: float, t1: float) -> None:
        self.env, self.name, self.capacity = env, name, capacity
        self._call_at = getattr(env, "call_at", None)  # the model's FastEnvironment: bare callbacks
        self.busy = 0
        self.queue: deque = deque()
        self.t0, self.t1 = t0, t1  # measurement window
        self._last = t0
        self._q_area = 0.0
        self._busy_area = 0.0
        self._cap_area = 0.0  # capacity x time: a fault window may change the capacity
        self.waits_n = 0
        self.waits_sum = 0.0
        self.hist = [0] * _NBINS
        self.timeouts = 0
        self.served = 0
        self.queue_limit: int | None = None  # None: unbounded
        self.deadlines = False  # drop a job whose caller gave up, when a server reaches it
        self.margin = 0.0  # ... or has less than this left (deadline-aware admission)
        self.shedding = False  # answer 503 while shed_limit requests are in flight
        self.shed_limit = 0
        self.rejected = 0  # refused: queue full
        self.shed = 0  # refused: load shedding (503)
        self.dropped = 0  # not executed: the caller had given up (server-side deadline)

    def configure(self, capacity: int, queue_limit: int | None = None, deadlines: bool = False,
                  shedding: bool = False, shed_limit: int = 0, margin: float = 0.0) -> None:
        """Set the pool size and the overload policies in force (a fault window may change them);
        ``margin``: with deadlines, a job with less than this left before its caller's deadline is dropped."""
        self._account()
        self.capacity = capacity
        self.margin = margin
        self.queue_limit, self.deadlines, self.shedding, self.shed_limit = queue_limit, deadlines, shedding, shed_limit
        while self.queue and self.busy < self.capacity:  # more servers: start waiting jobs now
            self.busy += 1
            self._next()

    def _account(self) -> None:
        # Integrate queue length and busy servers over [t0, t1] since the last change.
        now = self.env._now
        t0 = self.t0
        if now <= t0:
            return
        start = self._last if self._last > t0 else t0
        end = now if now < self.t1 else self.t1
        if end > start:
            self._q_area += len(self.queue) * (end - start)
            self._busy_area += self.busy * (end - start)
            self._cap_area += self.capacity * (end - start)
        self._last = now

    def submit(self, service_time: float, done: Callable[..., None],
               started: Callable[[], None] | None = None, deadline: float = _INF, held: bool = False,
               dropped: Callable[[], None] | None = None) -> int:
        """Queue a job needing ``service_time`` seconds; ``done(wait)`` runs when it finishes.

        ``started`` (optional) runs when a server takes the job: a handler that reads at the start of
        its work and writes at the end has that window open for ``service_time``.
        ``held``: the server stays busy after ``service_time`` until the job lets it go —
        ``done(wait, release)`` is called and the server is free once ``release()`` is.
        ``deadline``: when the caller gives up; with ``deadlines`` on, a job reaching a server at or
        after it is dropped (``dropped()`` runs, ``done`` never does).
        Returns ``STARTED`` when a server was free and the job started at once (it then ends exactly
        ``service_time`` from now), ``QUEUED`` when it joined the queue, ``REJECTED`` (queue full) or
        ``SHED`` (load shedding) when it was refused — then neither callback ever runs.
        """
        self._account()
        busy = self.busy
        if self.shedding and policies.should_shed(busy + len(self.queue), self.shed_limit):
            self.shed += 1
            return SHED
        arrived = self.env._now
        if busy < self.capacity:
            self.busy = busy + 1
            if self._start(arrived, service_time, done, started, deadline, held, dropped):
                return STARTED
            self.busy = busy  # dropped on arrival (its caller had already given up)
            return QUEUED
        if self.queue_limit is not None and len(self.queue) >= self.queue_limit:
            self.rejected += 1
            return REJECTED
        self.queue.append((arrived, service_time, done, started, deadline, held, dropped))
        return QUEUED

    def _start(self, arrived: float, service_time: float, done: Callable[..., None],
               started: Callable[[], None] | None, deadline: float, held: bool,
               dropped: Callable[[], None] | None) -> bool:
        """Give the job a server; False (and the server stays free for the caller) when it is dropped."""
        now = self.env._now
        if self.deadlines and policies.deadline_passed(now, deadline, self.margin):
            self.dropped += 1
            if dropped is not None:
                dropped()
            return False
        if started is not None:
            started()
        wait = now - arrived
        if self.t0 <= arrived < self.t1:
            self.waits_n += 1
            self.waits_sum += wait
            self.hist[_bin(wait)] += 1
        call_at = self._call_at
        if call_at is None:  # a plain simpy.Environment
            ev = self.env.timeout(service_time)
            if held:
                ev.callbacks.append(lambda _e: self._hand_over(wait, done))
            else:
                ev.callbacks.append(lambda _e: self._finish(wait, done))
        elif held:
            call_at(service_time, lambda: self._hand_over(wait, done))
        else:
            call_at(service_time, lambda: self._finish(wait, done))
        return True

    def _next(self) -> None:
        """A server is free (counted in ``busy``): start the first waiting job that is still wanted."""
        queue = self.queue
        while queue:
            if self._start(*queue.popleft()):
                return
        self.busy -= 1

    def _finish(self, wait: float, done: Callable[[float], None]) -> None:
        self._account()
        self.served += 1
        if self.queue:
            self._next()
        else:
            self.busy -= 1
        done(wait)

    def _hand_over(self, wait: float, done: Callable[..., None]) -> None:
        """A held job's own service is over: it keeps its server until it calls ``release``."""
        freed = [False]

        def release() -> None:
            if freed[0]:
                return
            freed[0] = True
            self._account()
            self.served += 1
            if self.queue:
                self._next()
            else:
                self.busy -= 1

        done(wait, release)

    def metrics(self) -> dict[str, float]:
        """utilization, busy_mean (servers occupied, held ones included), wait_mean_s, wait_p99_s,
        queue_mean, timeouts, served, and the requests refused (rejected, shed) or dropped past their
        caller's deadline, over the measurement window (the counts: over the whole run)."""
        self._account()
        span = max(1e-12, min(self.env._now, self.t1) - self.t0)
        p99 = 0.0
        if self.waits_n:
            target = 0.99 * self.waits_n
            acc = 0
            for i, n in enumerate(self.hist):
                acc += n
                if acc >= target:
                    p99 = _bin_upper(i)
                    break
        return {
            "utilization": self._busy_area / self._cap_area if self._cap_area > 0 else 0.0,
            "busy_mean": self._busy_area / span,
            "wait_mean_s": self.waits_sum / self.waits_n if self.waits_n else 0.0,
            "wait_p99_s": p99,
            "queue_mean": self._q_area / span,
            "timeouts": float(self.timeouts),
            "served": float(self.served),
            "rejected": float(self.rejected),
            "shed": float(self.shed),
            "dropped": float(self.dropped),
        }
