"""Order-page samples: the harness reads each open order's page during a live run, bounded.

A checkout judged from outside shows its orders' states only on their pages. Read once after the drain,
an order closed early shows as closed only then, and an anomaly's window would start at that read. So
every Locust process samples the pages of the orders its buyers created, through the adapter's
``order_status`` call, every ``live.order_sample_interval`` (scenario time) from the order's creation
until the page shows ``paid`` or ``refunded``, the order has had ``live.order_sample_max`` samples, or
observation ends. Closed orders stay sampled, each time after twice the previous gap (a late payment may
still revive or refund them, but most stay closed). All processes
together start at most ``live.order_sample_rate`` samples per wall second: a sample over the budget
waits for its turn (its lag is counted), so the extra load is bounded whatever the number of open orders.
A checkout that answers a sample slowly (over a quarter of the timeout) or not at all gets fewer: the
process's gap between samples doubles (up to one second) and shrinks back as answers come fast again.

Only a ``--target`` is sampled by default: the reference checkout's own events already give exact
windows (``live.order_sample_reference = true`` samples it too, to test the harness).

Each answered sample becomes an ``order.observed`` event (docs/events.md): the state class the page
showed, at the time the answer came back (the state was visible by then). The checker takes the first
observation of a state as the time the order entered it (docs/checker.md, "Judged from outside").

Samples are not buyer traffic: they write no ``client.*`` events (so they do not enter the buyers'
error rate or latencies) and go into Locust's statistics as ``order page (sample)``; their counts are
reported in the ``live.order_samples`` section of results.json.

Nothing here imports gevent or Locust: the sampler talks to a ``loadtests.buyer.Transport``. Several
loops (:meth:`OrderSampler.loop`) may share one sampler under gevent (cooperative: the heap and the
budget change only between yields).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Callable

from loadtests.adapter import Adapter
from loadtests.buyer import OK, Transport

SAMPLE_NAME = "order page (sample)"
OPEN_STATES = frozenset({None, "awaiting_payment", "closed"})  # a page showing these is sampled again
MAX_GAP = 1.0  # wall seconds: the widest gap between two samples of one process while backing off
SLOW_SHARE = 0.25  # an answer slower than this share of the timeout (or none) doubles the gap
IDLE_WAKE = 0.05  # wall seconds: a loop with nothing due wakes this often (new orders may be due sooner)


@dataclass
class SampleCounters:
    """What one process's sampler did (added to its ``done`` file)."""

    sample_requests: int = 0  # page reads sent
    sample_errors: int = 0  # reads with no usable answer (no 2xx JSON, or a state the adapter does not map)
    sampled_orders: int = 0  # orders registered for sampling
    sample_capped_orders: int = 0  # orders still open when they reached order_sample_max
    sample_lag_max: float = 0.0  # wall seconds: the longest wait past a sample's due time (the rate budget)
    sample_late: int = 0  # samples that started more than one interval after they were due
    sample_backoffs: int = 0  # answers that were slow or missing: the gap between samples doubled
    sampler_failed: bool = False  # a sampling loop raised (a harness bug): samples stopped early

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class OrderSampler:
    """Samples the pages of registered orders until ``end`` (wall time); see the module docstring."""

    def __init__(self, adapter: Adapter, transport: Transport, emit: Callable[[dict[str, Any]], None], *,
                 base_url: str, epoch: float, time_scale: float, interval: float, rate: float, max_per_order: int,
                 end: float, timeout: float) -> None:
        self.adapter, self.tr, self.emit = adapter, transport, emit
        self.base = base_url.rstrip("/")
        self.epoch, self.k = epoch, float(time_scale)
        self.interval_wall = interval / self.k  # interval is in scenario seconds
        self.base_gap = 1.0 / rate  # wall seconds between two sample starts of this process
        self.gap = self.base_gap  # now: wider while the checkout answers slowly (below)
        self.max_gap = max(self.base_gap, MAX_GAP)
        self.slow = timeout * SLOW_SHARE
        self.max_per_order = max_per_order
        self.end, self.timeout = end, timeout
        self.counters = SampleCounters()
        self._heap: list[tuple[float, int, str]] = []  # (due wall time, sequence, order)
        self._seq = 0
        self._n: dict[str, int] = {}  # order -> samples taken
        self._closed: dict[str, int] = {}  # order -> samples that showed it closed
        self._next_start = 0.0  # the rate budget: no sample of this process starts before this

    def add(self, order: str) -> None:
        """Sample ``order`` (just created) from one interval from now on."""
        if order in self._n:
            return
        self._n[order] = 0
        self.counters.sampled_orders += 1
        self._push(self.tr.time() + self.interval_wall, order)

    def _push(self, due: float, order: str) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, order))

    def loop(self) -> None:
        """Take due samples until the end of observation (several loops may share the sampler)."""
        tr, heap = self.tr, self._heap
        while True:
            now = tr.time()
            if now >= self.end:
                return
            if not heap or heap[0][0] > now:
                wake = heap[0][0] - now if heap else IDLE_WAKE
                tr.sleep(min(wake, IDLE_WAKE, self.end - now))
                continue
            due, _, order = heapq.heappop(heap)
            start = max(now, self._next_start)
            self._next_start = start + self.gap  # reserved before sleeping: the other loops see it
            if start >= self.end:
                return
            if start > now:
                tr.sleep(start - now)
            lag = start - due
            c = self.counters
            if lag > c.sample_lag_max:
                c.sample_lag_max = lag
            if lag > self.interval_wall:
                c.sample_late += 1
            self.sample(order)

    def sample(self, order: str) -> str | None:
        """Read ``order``'s page once; record what it showed; schedule the next read while it is open."""
        c, ad = self.counters, self.adapter
        n = self._n[order] = self._n.get(order, 0) + 1
        method, path, body = ad.request("order_status", {"order": order})
        c.sample_requests += 1
        sent = self.tr.time()
        reply = self.tr.send(method, self.base + path, body, self.timeout, SAMPLE_NAME)
        got = self.tr.time()
        if reply.kind != OK or got - sent > self.slow:  # the checkout struggles: do not pile on
            self.gap = min(2 * self.gap, self.max_gap)
            c.sample_backoffs += 1
        else:
            self.gap = max(self.base_gap, 0.8 * self.gap)
        cls = None
        if reply.kind == OK:
            raw = ad.field("order_status", "state", reply.body)
            cls = ad.state_class(raw)
            if cls is None:
                c.sample_errors += 1
            else:
                self.emit({"t": round((got - self.epoch) * self.k, 6), "type": "order.observed", "actor": "harness",
                           "order": order, "state": cls, "raw_state": raw, "sample": n, "observed_by": "adapter"})
        else:
            c.sample_errors += 1
        if cls in OPEN_STATES:
            if n < self.max_per_order:
                gap = self.interval_wall
                if cls == "closed":  # settled unless a late payment revives it: read ever less often
                    k = self._closed[order] = self._closed.get(order, 0) + 1
                    gap *= 2 ** min(k, 16)
                self._push(got + gap, order)
            else:
                c.sample_capped_orders += 1
        return cls
