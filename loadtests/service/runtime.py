"""Time, randomness and the conditions in force, shared by the mock provider and the reference checkout.

* :class:`Clock` — scenario time. Both services get the same start epoch on their command lines, so an
  event's ``t`` (scenario seconds = wall seconds since the start × ``time_scale``) means the same
  instant in both histories, and survives a restart.
* :class:`Conditions` — the scenario in force *now*: the base scenario, plus the fault windows whose
  ``[start, end)`` covers the current scenario time, plus the overrides set at run time through
  ``PUT /admin/faults``. Samplers draw from one seeded ``random.Random`` per named stream.
* :class:`Limiter` — a semaphore whose capacity is read from the conditions at each acquire, so a fault
  that changes ``gateway.workers`` or ``bank.channels`` takes effect at once.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import Any, Callable

from sim.domain import policies  # the overload rules sim.model.station applies too
from sim.errors import ConfigError
from sim.scenario import FAULTABLE_SECTIONS, Scenario, scenario_from_dict


# The event loop's timers have a resolution of about a millisecond: a shorter sleep would really last
# about a millisecond, overstating every sub-millisecond delay. Such a delay d is slept as one full
# TIMER_RESOLUTION with probability d / TIMER_RESOLUTION and skipped otherwise: right on average.
TIMER_RESOLUTION = 0.001


class Clock:
    """Scenario seconds since the run's start epoch (a Unix time shared by both services)."""

    def __init__(self, start_epoch: float, time_scale: float) -> None:
        if time_scale <= 0:
            raise ConfigError(f"--time-scale: expected a positive number, found {time_scale!r}")
        self.start_epoch = start_epoch
        self.scale = time_scale
        self._dither = random.Random(0).random  # timer dithering only, never a domain outcome

    def now(self) -> float:
        return (time.time() - self.start_epoch) * self.scale

    def wall(self, scenario_seconds: float) -> float:
        """Wall seconds for a scenario duration."""
        return scenario_seconds / self.scale

    async def sleep(self, scenario_seconds: float) -> None:
        wall = scenario_seconds / self.scale
        if wall >= TIMER_RESOLUTION:
            await asyncio.sleep(wall)
        elif wall > 0 and self._dither() * TIMER_RESOLUTION < wall:
            await asyncio.sleep(TIMER_RESOLUTION)


def validate_fault_overrides(base: Scenario, overrides: dict[str, Any]) -> None:
    """Raise ``ConfigError`` unless ``overrides`` would be a valid ``[[faults]] set`` of ``base``: the
    scenario loader itself validates them, as one fault window."""
    data = base.resolved()
    data["faults"] = [{"start": "0s", "end": "1s", "set": dict(overrides)}]
    try:
        scenario_from_dict(data, "faults")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("faults: faults[0].set", "faults set", 1)) from None


class Conditions:
    """The scenario in force at the current scenario time (base + fault windows + run-time overrides)."""

    def __init__(self, scenario: Scenario, clock: Clock, stream_prefix: str) -> None:
        self.base = scenario
        self.clock = clock
        self.overrides: dict[str, Any] = {}
        self._version = 0
        self._cache: dict[tuple, Scenario] = {}
        self._samplers: dict[tuple, tuple[Scenario, Callable[[], float]]] = {}
        self._rngs: dict[str, random.Random] = {}
        self._seed = scenario.run.seed
        self._prefix = stream_prefix
        self._windows = tuple(scenario.faults)

    def active_windows(self) -> tuple[int, ...]:
        now = self.clock.now()
        return tuple(i for i, w in enumerate(self._windows) if w.start <= now < w.end)

    def current(self) -> Scenario:
        active = self.active_windows() if self._windows else ()
        if not active and not self.overrides:
            return self.base
        key = (active, self._version)
        scenario = self._cache.get(key)
        if scenario is None:
            merged: dict[str, Any] = {}
            for i in active:
                merged.update(self._windows[i].set)
            merged.update(self.overrides)
            scenario = self.base.with_overrides(merged, source="faults") if merged else self.base
            self._cache[key] = scenario
        return scenario

    def set_overrides(self, overrides: dict[str, Any]) -> None:
        """Replace the run-time overrides (validated first; ``ConfigError`` leaves them unchanged)."""
        validate_fault_overrides(self.base, overrides)
        self.overrides = dict(overrides)
        self._version += 1
        self._cache.clear()

    def rng(self, stream: str) -> random.Random:
        """One seeded generator per named stream (``bank.decline``, ``gateway.notify_loss`` …)."""
        r = self._rngs.get(stream)
        if r is None:
            r = self._rngs[stream] = random.Random(f"{self._seed}:{self._prefix}:{stream}")
        return r

    def chance(self, stream: str, p: float) -> bool:
        return p > 0 and self.rng(stream).random() < p

    def sample(self, path: str) -> float:
        """A draw (scenario seconds or CNY) from the distribution at dotted ``path`` as in force now."""
        scenario = self.current()
        key = (id(scenario), path)
        entry = self._samplers.get(key)
        # The entry holds its scenario: while it exists no other scenario can get that id (an id is
        # reused once its object is freed, as a scenario replaced by new overrides is, and a sampler
        # keyed by the bare id would then draw from the old distribution)
        if entry is None or entry[0] is not scenario:
            section, name = path.split(".", 1)
            dist = getattr(getattr(scenario, section), name)
            if len(self._samplers) > 4096:
                self._samplers.clear()
            entry = self._samplers[key] = (scenario, dist.sampler(self.rng(path)))
        return entry[1]()

    def describe(self) -> dict[str, Any]:
        current = self.current()
        resolved = current.resolved()
        return {
            "overrides": self.overrides,
            "windows": [{"start": w.start, "end": w.end, "label": w.label, "set": w.set} for w in self._windows],
            "active_windows": list(self.active_windows()),
            "now": self.clock.now(),
            "effective": {s: resolved[s] for s in FAULTABLE_SECTIONS},
        }


class Overloaded(Exception):
    """A pool refused a request (``kind``: ``rejected`` — its queue is full; ``shed`` — load shedding)
    or dropped it (``dropped`` — its caller's deadline passed before a worker took it)."""

    def __init__(self, pool: str, kind: str) -> None:
        super().__init__(f"{pool}: {kind}")
        self.pool, self.kind = pool, kind


class Limiter:
    """An asyncio semaphore whose capacity is a function, read at every acquire (a resizable pool).

    With ``policy`` (a function returning ``(queue_limit | None, deadlines, shedding, shed_limit[, margin])``, read
    at each acquire, as the simulation's ``Station.configure``) and ``now`` (scenario seconds),
    :meth:`acquire` applies the overload policies of ``sim.model.station`` with the same rules
    (``policies.should_shed`` on running + queued, a queue bounded at ``queue_limit``,
    ``policies.deadline_passed`` when a worker takes the request) and raises :class:`Overloaded`.
    The counts (``served``, ``rejected``, ``shed``, ``dropped``) are what ``/admin/stats`` shows."""

    def __init__(self, capacity: Callable[[], int], policy: Callable[[], tuple] | None = None,
                 now: Callable[[], float] | None = None, name: str = "pool") -> None:
        self._capacity = capacity
        self._policy = policy
        self._now = now
        self.name = name
        self.in_use = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.served = self.rejected = self.shed = self.dropped = 0

    async def __aenter__(self) -> None:
        await self.acquire()

    async def acquire(self, deadline: float = float("inf")) -> None:
        """Take a worker (queueing FIFO); raise :class:`Overloaded` when the policies refuse or drop."""
        queue_limit, deadlines, shedding, shed_limit, *more = (self._policy() if self._policy is not None
                                                               else (None, False, False, 0))
        if shedding and policies.should_shed(self.in_use + len(self._waiters), shed_limit):
            self.shed += 1
            raise Overloaded(self.name, "shed")
        if self.in_use < self._capacity() and not self._waiters:
            self.in_use += 1
        else:
            if queue_limit is not None and len(self._waiters) >= queue_limit:
                self.rejected += 1
                raise Overloaded(self.name, "rejected")
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut  # the releaser counted us in
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()
                else:
                    try:
                        self._waiters.remove(fut)
                    except ValueError:
                        pass
                raise
        if deadlines and self._now is not None and policies.deadline_passed(self._now(), deadline,
                                                                             more[0] if more else 0.0):
            self.dropped += 1
            self._release()
            raise Overloaded(self.name, "dropped")
        self.served += 1

    def release(self) -> None:
        self._release()

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self.in_use -= 1
        cap = self._capacity()
        while self._waiters and self.in_use < cap:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def counts(self) -> dict[str, int]:
        return {"busy": self.in_use, "queued": len(self._waiters), "served": self.served,
                "rejected": self.rejected, "shed": self.shed, "dropped": self.dropped}
