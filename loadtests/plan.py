"""What a live run will do, decided before any process starts: its window, its arrivals, its plan file.

A live run replays a scenario's arrival profile as an *open* workload: arrival ``i`` is due at scenario
time ``t_i`` (a non-homogeneous Poisson process following ``load.arrival_rate × load.profile``, drawn
from one seeded stream, exactly as the simulation draws it) and starts then, whether or not earlier
orders have finished. Every process of the run (the orchestrator, each Locust worker) draws the same
schedule from the same seed; worker ``w`` of ``W`` takes the arrivals with ``i % W == w``, so the load is
the same whatever the number of workers, and each order is played by exactly one of them.

Clocks: scenario seconds = wall seconds × ``time_scale``. The *load epoch* ``G`` is the wall time of
scenario ``t = 0`` for the load and for every event of the merged history; the services keep their own
start epoch and their events are rebased onto ``G`` when the history is merged (``loadtests.history``).

Nothing here imports Locust or gevent: the plan is read by the pytest process and the orchestrator too.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from sim.domain import arrivals as schedule
from sim.errors import ConfigError
from sim.scenario import LoadSection, Scenario, format_duration

PLAN_ENV = "CHECKOUT_CHAOS_PLAN"  # path of the plan file, read by loadtests/locustfile.py
ROLE_ENV = "CHECKOUT_CHAOS_ROLE"  # "worker": a Locust worker, which gets the plan from its master
DEFAULT_MAX_ORDERS = 100_000
# An arrival that starts more than this (wall seconds) after it was due is counted as a late start.
DEFAULT_LATE_TOLERANCE = 0.05
# Wall seconds; a client timeout never goes below this (what one loopback round trip through a busy
# Python server may cost). The services use the same floor for their calls to each other.
MIN_CLIENT_TIMEOUT = 0.25


@dataclass(frozen=True)
class LiveWindow:
    """The live run's window in scenario seconds (and the wall seconds it takes)."""

    time_scale: float
    warmup: float  # orders created before this are not counted in rates
    horizon: float  # arrivals stop here
    end: float  # end of observation: horizon + drain

    @property
    def drain(self) -> float:
        return self.end - self.horizon

    @property
    def load_wall(self) -> float:
        return self.horizon / self.time_scale

    @property
    def drain_wall(self) -> float:
        return self.drain / self.time_scale

    @property
    def wall(self) -> float:
        return self.end / self.time_scale


def live_window(scenario: Scenario, time_scale: float | None = None, run_time: float | None = None,
                drain: float | None = None) -> LiveWindow:
    """The window of a live run of ``scenario``.

    Arrivals run for ``run_time`` wall seconds (default ``live.run_time``), that is ``run_time ×
    time_scale`` scenario seconds, but never past the scenario's ``run.horizon``. The drain is
    ``drain`` wall seconds (default ``live.drain``), never longer than ``run.drain``.
    """
    k = float(time_scale if time_scale is not None else scenario.live.time_scale)
    if not (k > 0 and math.isfinite(k)):
        raise ConfigError(f"--time-scale: expected a positive number, found {time_scale!r}")
    r = float(run_time if run_time is not None else scenario.live.run_time)
    if not r > 0:
        raise ConfigError(f"--run-time: expected a positive duration, found {format_duration(r)}")
    d = float(drain if drain is not None else scenario.live.drain)
    horizon = min(scenario.run.horizon, r * k)
    warmup = scenario.run.warmup
    if warmup >= horizon:
        raise ConfigError(
            f"--run-time {format_duration(r)} at time scale {k:g} covers {format_duration(horizon)} of scenario "
            f"time, not more than run.warmup = {format_duration(warmup)}: nothing would be counted; run longer, "
            f"raise --time-scale or --set run.warmup=...")
    return LiveWindow(k, warmup, horizon, horizon + min(scenario.run.drain, d * k))


def expected_arrivals(load: LoadSection, horizon: float) -> float:
    """The mean number of arrivals in ``[0, horizon)`` (the integral of the rate, steps and ramps)."""
    return schedule.expected_count(load.rate_pieces(horizon))


def arrival_times(load: LoadSection, horizon: float, seed: int, limit: int | None = None,
                  rng: random.Random | None = None) -> Iterator[float]:
    """Scenario times of the arrivals in ``[0, horizon)``: Poisson, rate ``arrival_rate × multiplier(t)``.

    The simulation's schedule (``sim.domain.arrivals``, steps and linear ramps alike), drawn from its
    own stream of ``seed`` (or from ``rng``). At most ``limit`` arrivals.
    """
    rng = rng if rng is not None else random.Random(f"{seed}:live:arrivals")
    return schedule.arrival_times(load.rate_pieces(horizon), rng.expovariate, limit)


def buyer_rng(seed: int, index: int) -> random.Random:
    """The stream of buyer ``index``'s decisions: the same whichever worker plays it."""
    return random.Random(f"{seed}:live:buyer:{index}")


# --------------------------------------------------------------------------------------------------
# The plan file: everything a Locust process needs, written by the orchestrator


@dataclass
class Plan:
    """The run as every Locust process sees it (JSON in ``DIR/client/plan.json``)."""

    scenario: dict[str, Any]  # resolved, faults included (the client applies user/app faults itself)
    checkout_url: str  # the reference checkout, or the --target
    provider_url: str  # the mock provider
    adapter: dict[str, Any]  # loadtests.adapter config (reference.toml unless --target-config)
    time_scale: float
    horizon: float  # scenario seconds; arrivals in [0, horizon)
    end: float  # scenario seconds; flows still running then are stopped
    slots: int  # Locust processes that play arrivals (1, or the number of workers)
    run_id: str  # prefix of order ids (unique per run, so a staging checkout never sees one twice)
    client_dir: str  # history, ready, go and done files
    max_orders: int = DEFAULT_MAX_ORDERS
    late_tolerance: float = DEFAULT_LATE_TOLERANCE
    connections: int = 512  # HTTP connections per Locust process
    max_in_flight: int = 50_000  # flows per Locust process; an arrival beyond it is dropped (counted)
    profiles: int = 512  # Faker buyer profiles drawn per process
    synthesize_orders: bool = False  # a --target writes no history: the clients record the orders they created
    allow_remote: bool = False  # a worker refuses a plan whose URLs are not loopback unless this is set

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls(**json.loads(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so a reader polling for the file never sees half of it."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data if isinstance(data, str) else json.dumps(data, sort_keys=True))
    os.replace(tmp, p)


def read_plan(path: str | Path) -> Plan:
    return Plan.from_json(Path(path).read_text(encoding="utf-8"))

