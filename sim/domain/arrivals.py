"""The arrival schedule both clocks share: a Poisson process whose rate is piecewise linear.

A scenario's load is ``arrival_rate × multiplier(t)``; the multiplier holds between profile points
(a step) or moves linearly from one point to the next (a ramp, like k6's ``ramping-arrival-rate`` or a
Locust ``LoadTestShape`` that ramps). :func:`pieces` turns the points into ``(start, end, rate at
start, rate at end)`` pieces over ``[0, horizon)``; :func:`arrival_steps` draws the arrivals of those
pieces from one random stream.

The simulation (``sim/model/user.py``) waits each step's ``delay`` on the SimPy clock; the live plan
(``loadtests/plan.py``) adds the delays up on the load's clock. Both therefore see the same arrivals
from the same stream, to the last bit. Pure: no SimPy, no I/O.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, NamedTuple


class Piece(NamedTuple):
    """On ``[start, end)`` the rate moves linearly from ``rate0`` to ``rate1`` (equal: constant)."""

    start: float
    end: float
    rate0: float
    rate1: float

    def rate_at(self, t: float) -> float:
        if self.rate0 == self.rate1 or self.end <= self.start:
            return self.rate0
        return self.rate0 + (self.rate1 - self.rate0) * (t - self.start) / (self.end - self.start)

    @property
    def integral(self) -> float:
        """The mean number of arrivals in the piece."""
        return (self.rate0 + self.rate1) / 2.0 * (self.end - self.start)


def _segments(points: Iterable[tuple[float, float, bool]]) -> list[tuple[float, float, float, float]]:
    """``(from, until, multiplier at from, multiplier at until)`` over ``[0, ∞)``."""
    out = []
    prev_at, prev_m = 0.0, 1.0
    for at, m, ramp in points:
        if at > prev_at:
            out.append((prev_at, at, prev_m, m if ramp else prev_m))
        prev_at, prev_m = max(prev_at, at), m
    out.append((prev_at, math.inf, prev_m, prev_m))
    return out


def _interpolate(seg: tuple[float, float, float, float], t: float) -> float:
    a, b, m0, m1 = seg
    return m0 if m0 == m1 else m0 + (m1 - m0) * (t - a) / (b - a)


def multiplier_at(points: Iterable[tuple[float, float, bool]], t: float) -> float:
    """The profile's multiplier at ``t``: ``points`` are ``(at, multiplier, ramp)`` in order of ``at``;
    before the first point the multiplier is 1; from a step point on, its multiplier holds; a ramp
    point is reached linearly from the point before (from 1 at ``t = 0`` for the first)."""
    for seg in _segments(points):
        if t < seg[1]:
            return _interpolate(seg, t)
    return 1.0  # unreachable: the last segment is unbounded


def pieces(base_rate: float, points: Iterable[tuple[float, float, bool]], horizon: float) -> list[Piece]:
    """The rate over ``[0, horizon)`` as pieces, cut at every profile point inside it."""
    out = []
    for seg in _segments(points):
        a, b = seg[0], min(seg[1], horizon)
        if a >= horizon:
            break
        if b <= a:
            continue
        out.append(Piece(a, b, base_rate * _interpolate(seg, a),
                         base_rate * (seg[3] if b == seg[1] else _interpolate(seg, b))))
    return out


def expected_count(ps: Iterable[Piece]) -> float:
    return sum(p.integral for p in ps)


class Step(NamedTuple):
    """Wait ``delay`` (scenario seconds since the previous step), then one arrival if ``arrive``."""

    delay: float
    arrive: bool


def arrival_steps(ps: list[Piece], expovariate: Callable[[float], float]) -> Iterator[Step]:
    """The arrivals of ``ps`` as waits, drawn with ``expovariate`` (``random.Random.expovariate``).

    On a constant piece the gap is ``expovariate(rate)``; on a ramp an ``Exp(1)`` draw is turned into a
    gap by inverting the rate's integral. A gap that crosses the piece's end is thrown away and the
    next piece draws again from its start (memoryless: the process is still Poisson). A piece whose
    rate is 0 throughout draws nothing.
    """
    t = 0.0
    for p in ps:
        if t < p.start:
            yield Step(p.start - t, False)
            t = p.start
        if p.rate0 <= 0 and p.rate1 <= 0:
            continue
        while True:
            if p.rate0 == p.rate1:
                gap = expovariate(p.rate0)
            else:
                gap = _ramp_gap(p, t, expovariate(1.0))
            if t + gap >= p.end:
                break
            yield Step(gap, True)
            t += gap


def _ramp_gap(p: Piece, t: float, e: float) -> float:
    """The ``x`` with ``∫_t^{t+x} rate = e`` on a linear piece (∞ when the piece ends first)."""
    lam = p.rate_at(t)
    slope = (p.rate1 - p.rate0) / (p.end - p.start)
    disc = lam * lam + 2.0 * slope * e
    if disc < 0:
        return math.inf  # a falling rate reaches 0 before e arrivals' worth accumulate
    root = math.sqrt(disc)
    if lam + root <= 0:
        return math.inf
    return 2.0 * e / (lam + root)  # = (-lam + root) / slope, without the cancellation


def arrival_times(ps: list[Piece], expovariate: Callable[[float], float], limit: int | None = None) -> Iterator[float]:
    """Scenario times of the arrivals of ``ps`` (the steps' delays added up as the SimPy clock adds them)."""
    t, n = 0.0, 0
    for step in arrival_steps(ps, expovariate):
        t = t + step.delay
        if step.arrive:
            if limit is not None and n >= limit:
                return
            n += 1
            yield t
