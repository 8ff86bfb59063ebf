"""One arrival schedule for both clocks: steps and linear ramps between profile points."""

from __future__ import annotations

import math

import pytest

from sim.domain.arrivals import Piece, arrival_times, multiplier_at, pieces
from sim.errors import ConfigError
from sim.model.user import arrivals as sim_arrivals
from sim.model.world import World, make_streams
from sim.scenario import scenario_from_dict

from loadtests import plan

RAMPS = [{"at": "10m", "multiplier": 5.0, "ramp": True},   # 1 -> 5 over the first 10 minutes
         {"at": "20m", "multiplier": 5.0},                   # hold
         {"at": "30m", "multiplier": 0.0, "ramp": True},     # 5 -> 0
         {"at": "40m", "multiplier": 2.0}]                   # a step


def _scenario(profile, rate=2.0):
    return scenario_from_dict({"load": {"arrival_rate": rate, "profile": profile},
                               "run": {"horizon": "50m", "warmup": "1m", "seed": 3}})


def test_multiplier_ramps_linearly_between_points_and_steps_elsewhere():
    pts = [(s["at"] if isinstance(s["at"], float) else {"10m": 600.0, "20m": 1200.0, "30m": 1800.0, "40m": 2400.0}[s["at"]],
            s["multiplier"], s.get("ramp", False)) for s in RAMPS]
    assert multiplier_at(pts, 0.0) == 1.0
    assert multiplier_at(pts, 300.0) == pytest.approx(3.0)
    assert multiplier_at(pts, 600.0) == 5.0 and multiplier_at(pts, 1000.0) == 5.0
    assert multiplier_at(pts, 1500.0) == pytest.approx(2.5)
    assert multiplier_at(pts, 2399.0) == 0.0 and multiplier_at(pts, 2400.0) == 2.0
    load = _scenario(RAMPS).load
    assert load.multiplier_at(300.0) == pytest.approx(3.0)
    assert load.rate_pieces(3000.0) == [Piece(0.0, 600.0, 2.0, 10.0), Piece(600.0, 1200.0, 10.0, 10.0),
                                        Piece(1200.0, 1800.0, 10.0, 0.0), Piece(1800.0, 2400.0, 0.0, 0.0),
                                        Piece(2400.0, 3000.0, 4.0, 4.0)]
    # a horizon inside a ramp cuts it where the rate has got to
    assert load.rate_pieces(300.0) == [Piece(0.0, 300.0, 2.0, 6.0)]
    assert plan.expected_arrivals(load, 3000.0) == pytest.approx(3600 + 6000 + 3000 + 0 + 2400)
    assert load.peak_rate(3000.0) == 10.0


def test_the_simulation_and_the_live_plan_draw_the_same_arrivals():
    """The SimPy model's arrival process and the live plan, fed the same stream, give the same times to the
    last bit (the live plan adds the delays as the SimPy clock does)."""
    scenario = _scenario(RAMPS)
    w = World(scenario, 0, lambda e: None)
    seen: list[float] = []
    w.env.process(sim_arrivals(w, lambda: seen.append(w.env.now)))
    w.env.run(until=w.horizon + 1)
    live = list(plan.arrival_times(scenario.load, scenario.run.horizon, scenario.run.seed,
                                   rng=make_streams(scenario.run.seed, 0)["arrivals"]))
    assert len(seen) > 1000 and seen == live
    # the live plan's own stream is another draw of the same process
    assert list(plan.arrival_times(scenario.load, scenario.run.horizon, scenario.run.seed)) != live


def test_ramp_arrivals_follow_the_linear_rate():
    """Counts per minute on a ramp from 0 to 20/s follow the integral of the rate (within 4 standard deviations
    in every bin), and nothing arrives where the rate is 0."""
    import random

    ps = pieces(1.0, [(0.0, 0.0, False), (600.0, 20.0, True), (900.0, 0.0, False)], 1200.0)
    times = list(arrival_times(ps, random.Random(9).expovariate))
    assert not [t for t in times if t >= 900.0]
    for k in range(10):
        a, b = 60.0 * k, 60.0 * (k + 1)
        mean = (b * b - a * a) / 2 * 20.0 / 600.0
        n = len([t for t in times if a <= t < b])
        assert abs(n - mean) < 4 * math.sqrt(mean), (k, n, mean)
    held = len([t for t in times if 600.0 <= t < 900.0])
    assert abs(held - 6000) < 4 * math.sqrt(6000)


def test_a_falling_ramp_to_zero_ends_its_arrivals():
    import random

    ps = pieces(1.0, [(100.0, 0.0, True)], 200.0)  # 1/s falling to 0 at t = 100
    times = list(arrival_times(ps, random.Random(1).expovariate))
    assert times and max(times) < 100.0
    assert abs(len(times) - 50) < 4 * math.sqrt(50)


def test_ramp_key_is_validated():
    with pytest.raises(ConfigError, match=r"load.profile\[0\].ramp"):
        scenario_from_dict({"load": {"profile": [{"at": "1m", "multiplier": 2, "ramp": "yes"}]}})
