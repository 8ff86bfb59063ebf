"""Outages of the order service's notification endpoint: when the gateway's "paid" notifications cannot
get through at all.

A payment notification reaches the merchant only if the URL it posts to (``notify_url``) answers. In the
field it stops answering for minutes at a time, for everything at once: a rolling deploy of the
service behind it, its pods restarted under memory pressure at the peak, an ingress or certificate
change, a WAF rule that starts blocking the PSP's addresses. Every attempt that falls inside such an
outage fails — the first one and the retries the provider's schedule puts inside it — while the order
service's close job, which does not need the endpoint, goes on. What decides whether an order is
closed while its buyer has paid is then a race between the outage's length, the provider's retry gaps
(Alipay's first retry is 4 minutes after the first attempt, WeChat Pay's 15 seconds) and the order's
remaining time to live: nothing decides per order or per attempt that a notification is lost.

``order_service.notify_outage_every`` is the time from the end of one outage to the start of the next
(a distribution, or ``"off"``), ``order_service.notify_outage_duration`` how long each lasts. The
outages of a run are drawn once, from a stream of their own (:func:`outage_stream`: root seed and
replication only), so turning them on changes no other draw, and the live mock provider (replication
0) meets the same outages at the same scenario times as the simulation's replication 0.

Pure: no clock, no I/O. The simulation's gateway (``sim/model/gateway.py``) and the live provider's
notifier (``loadtests/service/psp/core.py``) ask :meth:`Outages.down_at`.
"""

from __future__ import annotations

import hashlib
import random
from bisect import bisect_right
from typing import Any


def outage_stream(seed: int, replication: int) -> random.Random:
    """The stream of a run's notification-endpoint outages (their gaps and lengths, in that order)."""
    key = hashlib.blake2b(b"notify-outage:%d:%d" % (seed, replication), digest_size=16).digest()
    return random.Random(int.from_bytes(key, "little"))


class Outages:
    """The outage windows ``[start, end)`` of one run, in scenario seconds from the run's start."""

    __slots__ = ("starts", "ends")

    def __init__(self, windows: list[tuple[float, float]]) -> None:
        self.starts = [a for a, _ in windows]
        self.ends = [b for _, b in windows]

    @classmethod
    def draw(cls, every: Any, duration: Any, r: random.Random, until: float) -> "Outages":
        """Alternate an up time (``every``) and an outage (``duration``) from 0 until ``until``."""
        windows: list[tuple[float, float]] = []
        t = 0.0
        while True:
            t += every.draw(r)
            if t >= until:
                break
            length = duration.draw(r)
            windows.append((t, t + length))
            t += length
        return cls(windows)

    @classmethod
    def of(cls, order_service: Any, seed: int, replication: int, until: float) -> "Outages | None":
        """The outages a scenario's ``order_service`` section gives a run, or None when they are off."""
        every = order_service.notify_outage_every
        if every is None:
            return None
        return cls.draw(every, order_service.notify_outage_duration, outage_stream(seed, replication), until)

    def down_at(self, t: float) -> bool:
        """Is the endpoint down at scenario time ``t``?"""
        i = bisect_right(self.starts, t) - 1
        return i >= 0 and t < self.ends[i]

    def __len__(self) -> int:
        return len(self.starts)

    def down_seconds(self, lo: float, hi: float) -> float:
        """Seconds of ``[lo, hi)`` the endpoint was down."""
        return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in zip(self.starts, self.ends))

    def begun(self, lo: float, hi: float) -> int:
        """Outages that began in ``[lo, hi)``."""
        return sum(1 for a in self.starts if lo <= a < hi)
