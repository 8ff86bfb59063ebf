"""A capacity-limited actor: ``c`` servers, one FIFO queue, on the SimPy clock.

The gateway's worker pool, the bank's channels and the order service's request handlers are all
stations. ``simpy.Resource`` would do the queueing, but every request/release pair costs two extra
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
                 "waits_n", "waits_sum", "hist", "timeouts", "served")

    def __init__(self, env: simpy.Environment, name: str, capacity: int, t0: float, t1: float) -> None:
        self.env, self.name, self.capacity = env, name, capacity
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

    def _account(self) -> None:
        # Integrate queue length and busy servers over [t0, t1] since the last change.
        now = self.env.now
        if now <= self.t0:
            return
        start = self._last if self._last > self.t0 else self.t0
        end = now if now < self.t1 else self.t1
        if end > start:
            self._q_area += len(self.queue) * (end - start)
            self._busy_area += self.busy * (end - start)
            self._cap_area += self.capacity * (end - start)
        self._last = now

    def submit(self, service_time: float, done: Callable[[float], None],
               started: Callable[[], None] | None = None) -> bool:
        """Queue a job needing ``service_time`` seconds; ``done(wait)`` runs when it finishes.

        ``started`` (optional) runs when a server takes the job: a handler that reads at the start of
        its work and writes at the end has that window open for ``service_time``.
        Returns True when a server was free and the job started at once (it then ends exactly
        ``service_time`` from now), False when it joined the queue.
        """
        self._account()
        arrived = self.env.now
        if self.busy < self.capacity:
            self.busy += 1
            self._start(arrived, service_time, done, started)
            return True
        self.queue.append((arrived, service_time, done, started))
        return False

    def _start(self, arrived: float, service_time: float, done: Callable[[float], None],
               started: Callable[[], None] | None = None) -> None:
        if started is not None:
            started()
        now = self.env.now
        wait = now - arrived
        if self.t0 <= arrived < self.t1:
            self.waits_n += 1
            self.waits_sum += wait
            self.hist[_bin(wait)] += 1
        ev = self.env.timeout(service_time)
        ev.callbacks.append(lambda _e: self._finish(wait, done))

    def _finish(self, wait: float, done: Callable[[float], None]) -> None:
        self._account()
        self.served += 1
        if self.queue:
            self._start(*self.queue.popleft())
        else:
            self.busy -= 1
        done(wait)

    def metrics(self) -> dict[str, float]:
        """utilization, wait_mean_s, wait_p99_s, queue_mean and timeouts over the measurement window."""
        self._account()
        span = max(1e-12, min(self.env.now, self.t1) - self.t0)
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
            "wait_mean_s": self.waits_sum / self.waits_n if self.waits_n else 0.0,
            "wait_p99_s": p99,
            "queue_mean": self._q_area / span,
            "timeouts": float(self.timeouts),
            "served": float(self.served),
        }
