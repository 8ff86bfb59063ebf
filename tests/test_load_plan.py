"""The live run's plan: its window, the open-model arrival schedule, the plan file."""

from __future__ import annotations

import math

import pytest

from sim.errors import ConfigError
from sim.scenario import Scenario, scenario_from_dict

from loadtests.plan import Plan, arrival_times, expected_arrivals, live_window, read_plan, write_json_atomic


def _scenario(**sections) -> Scenario:
    return scenario_from_dict(sections)


def test_arrivals_are_a_pure_function_of_the_seed():
    """Every process draws the same schedule from the same seed; another seed gives another one."""
    load = _scenario(load={"arrival_rate": 5.0}).load
    a = list(arrival_times(load, 100.0, seed=1))
    assert a == list(arrival_times(load, 100.0, seed=1))
    assert a != list(arrival_times(load, 100.0, seed=2))
    assert a == sorted(a) and 0 < a[0] and a[-1] < 100.0


def test_arrival_count_is_poisson_around_the_integral_of_the_rate():
    """50/s over 200 s: 10,000 arrivals on average; one seed lands within 4 standard deviations."""
    load = _scenario(load={"arrival_rate": 50.0}).load
    n = sum(1 for _ in arrival_times(load, 200.0, seed=3))
    assert expected_arrivals(load, 200.0) == pytest.approx(10_000)
    assert abs(n - 10_000) < 4 * math.sqrt(10_000)


def test_arrivals_follow_the_profile():
    """A silent stretch has no arrivals; a x10 stretch has ten times the rate."""
    load = _scenario(load={"arrival_rate": 10.0, "profile": [{"at": "100s", "multiplier": 0.0},
                                                            {"at": "200s", "multiplier": 10.0}]}).load
    times = list(arrival_times(load, 300.0, seed=4))
    assert not [t for t in times if 100.0 <= t < 200.0]
    before = len([t for t in times if t < 100.0])
    after = len([t for t in times if t >= 200.0])
    assert expected_arrivals(load, 300.0) == pytest.approx(1000 + 0 + 10_000)
    assert abs(before - 1000) < 4 * math.sqrt(1000) and abs(after - 10_000) < 4 * math.sqrt(10_000)


def test_arrivals_stop_at_the_limit():
    load = _scenario(load={"arrival_rate": 100.0}).load
    assert len(list(arrival_times(load, 100.0, seed=5, limit=17))) == 17


def test_window_scales_run_time_and_drain_but_respects_the_scenario():
    """run_time × time_scale of arrivals, never past run.horizon; drain likewise capped by run.drain."""
    s = _scenario(run={"horizon": "1h", "warmup": "5m", "drain": "26h"})
    w = live_window(s, time_scale=60, run_time=30, drain=10)
    assert (w.horizon, w.warmup, w.end) == (1800.0, 300.0, 2400.0)
    assert (w.load_wall, w.drain_wall, w.wall) == (30.0, 10.0, 40.0)
    w = live_window(s, time_scale=60, run_time=600, drain=10)
    assert w.horizon == 3600.0 and w.load_wall == 60.0
    short = _scenario(run={"horizon": "10m", "warmup": "1m", "drain": "2m"})
    assert live_window(short, time_scale=60, run_time=60, drain=60).drain == 120.0
    defaults = live_window(Scenario())
    assert defaults.time_scale == 60.0 and defaults.horizon == 3600.0 and defaults.drain == 1800.0


def test_window_refuses_a_run_that_would_count_nothing():
    s = _scenario(run={"horizon": "1h", "warmup": "5m"})
    with pytest.raises(ConfigError, match="run.warmup"):
        live_window(s, time_scale=10, run_time=20)
    with pytest.raises(ConfigError, match="--time-scale"):
        live_window(s, time_scale=0)


def test_plan_round_trips_through_its_file(tmp_path):
    plan = Plan(scenario=Scenario().resolved(), checkout_url="http://127.0.0.1:1", provider_url="http://127.0.0.1:2",
                adapter={"name": "x"}, time_scale=60.0, horizon=100.0, end=200.0, slots=2, run_id="abc",
                client_dir=str(tmp_path))
    write_json_atomic(tmp_path / "plan.json", plan.to_json())
    assert read_plan(tmp_path / "plan.json") == plan
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left behind
