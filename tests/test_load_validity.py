"""Whether a live run measured its scenario: the preflight warnings and the health checks (no Locust here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.scenario import load_scenario, scenario_from_dict

from loadtests import validity
from loadtests.compare import conclusiveness
from loadtests.plan import live_window

SCENARIOS = Path(__file__).parents[1] / "scenarios"


@pytest.fixture(autouse=True)
def _no_stored_capacity(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(validity.CAPACITY_ENV, raising=False)


def _live(**over):
    live = {"time_scale": 60.0, "workers": 0, "planned_arrivals": 1000, "started": 1000, "achieved_arrivals": 990,
            "achieved_arrival_ratio": 0.99, "harness_errors": 0, "error_rate": 0.0, "requests": 3000, "failures": 0,
            "start_lag_wall_s": {"p50": 0.001, "p99": 0.01, "max": 0.02}, "flows_unfinished_at_end": 0}
    live.update(over)
    return live


def _assess(live, scenario=None):
    s = scenario or scenario_from_dict({})
    pre = validity.preflight(s, live_window(s, 60, 60, 30), 0)
    return validity.assess(live, s, pre)


def test_a_healthy_run_is_valid():
    v = _assess(_live())
    assert v["valid"] and v["reasons"] == [] and all(c["holds"] for c in v["checks"])
    assert {c["check"] for c in v["checks"]} == {"achieved_ratio", "harness_error_rate", "transport_error_rate",
                                                   "start_lag_p99_s", "unfinished_share"}


@pytest.mark.parametrize("over, check, key", [
    ({"achieved_arrival_ratio": 0.9}, "achieved_ratio", "live.min_achieved_ratio"),
    ({"harness_errors": 11}, "harness_error_rate", "live.max_harness_error_rate"),
    ({"error_rate": 0.2, "failures": 600}, "transport_error_rate", "live.max_transport_error_rate"),
    ({"start_lag_wall_s": {"p50": 0.1, "p99": 0.5, "max": 1.0}}, "start_lag_p99_s", "live.max_start_lag"),
    ({"flows_unfinished_at_end": 60}, "unfinished_share", "live.max_unfinished_share"),
])
def test_each_limit_makes_a_run_not_valid_and_says_which(over, check, key):
    v = _assess(_live(**over))
    assert not v["valid"]
    assert [c["check"] for c in v["checks"] if not c["holds"]] == [check]
    assert len(v["reasons"]) == 1 and key in v["reasons"][0]
    assert v["advice"], "a run that is not valid says what to change"


def test_live_section_moves_the_limits():
    """0.9 achieved fails the default 0.95 and holds under live.min_achieved_ratio = 0.85; a 0.5 s p99 lag at
    K = 60 (30 s scenario) fails the default 10 s and holds under 1m."""
    bad = _live(achieved_arrival_ratio=0.9, start_lag_wall_s={"p50": 0.1, "p99": 0.5, "max": 1.0})
    assert not _assess(bad)["valid"]
    relaxed = scenario_from_dict({"live": {"min_achieved_ratio": 0.85, "max_start_lag": "1m"}})
    assert _assess(bad, relaxed)["valid"]


def test_nothing_planned_is_not_a_measurement():
    v = _assess(_live(planned_arrivals=0, started=0, achieved_arrivals=0, achieved_arrival_ratio=None,
                      start_lag_wall_s={"p50": None, "p99": None, "max": 0.0}))
    assert not v["valid"] and "no arrivals were planned" in v["reasons"][0]


def test_overload_advice_names_time_scale_and_rate():
    v = _assess(_live(achieved_arrival_ratio=0.04, error_rate=0.97))
    text = " ".join(v["advice"])
    assert "--time-scale" in text and "load.arrival_rate" in text


def test_mall_pattern_one_minute_warns_that_no_counted_order_is_seen_through():
    """The issue's example: `load scenarios/mall_pattern.toml --run-time 1m` watches 1h30m against a 60-minute
    TTL (its delayed cancel) and Alipay retries: 20% of the counted orders can be seen through."""
    s = load_scenario(SCENARIOS / "mall_pattern.toml")
    pre = validity.preflight(s, live_window(s, None, 60.0, None), 0)
    win = pre["window"]
    assert win["observed_s"] == 5400.0 and win["seen_through_share"] == pytest.approx(655 / 3300)
    assert win["needed_s"] == pytest.approx(3600 + 5 + 4 * 60 + 10 * 60)  # loss 0.1: two retries matter
    text = " ".join(pre["warnings"])
    assert "only 20% of the counted orders" in text and "--drain 75s" in text
    assert "240 arrivals per wall second" in text  # 4/s × 60, beyond the default capacity of 100


def test_compare_help_example_is_not_conclusive():
    """`compare scenarios/mall_pattern.toml --time-scale 30 --run-time 1m` watches 45 min against a 60-minute
    TTL: even a valid live run makes it not conclusive."""
    s = load_scenario(SCENARIOS / "mall_pattern.toml")
    pre = validity.preflight(s, live_window(s, 30.0, 60.0, None), 0)
    assert pre["window"]["observed_s"] == 2700.0
    doc = {"valid": True, "live": {"preflight": pre}}
    c = conclusiveness(doc)
    assert c["conclusive"] is False and "watched through their story" in c["inconclusive_reasons"][0]
    long = validity.preflight(s, live_window(s, 60.0, 60.0, 120.0), 0)
    assert conclusiveness({"valid": True, "live": {"preflight": long}})["conclusive"] is True
    assert conclusiveness({"valid": False, "validity": {"reasons": ["x"]}, "live": {"preflight": long}})[
        "conclusive"] is False


def test_a_run_within_capacity_and_window_has_no_warning():
    s = load_scenario(Path(__file__).parent / "fixtures" / "live_mall.toml")
    pre = validity.preflight(s, live_window(s), 0)
    assert pre["warnings"] == [] and pre["window"]["seen_through_share"] == 1.0
    assert pre["planned_peak_rate_wall_per_s"] == 30.0


def test_capacity_figure_sources(tmp_path, monkeypatch):
    s = scenario_from_dict({})
    assert validity.capacity_figure(s) == (validity.DEFAULT_CAPACITY, pytest.approx(
        "conservative default (run benchmarks/load_capacity.py to measure this machine)"))
    path = validity.store_capacity({"max_flows_per_s": 220.0, "workers": 0})
    assert path == validity.capacity_file()
    assert json.loads(path.read_text())["by_workers"]["0"]["max_flows_per_s"] == 220.0
    value, source = validity.capacity_figure(s)
    assert value == 220.0 and "capacity benchmark" in source
    validity.store_capacity({"max_flows_per_s": 180.0, "workers": 2})
    assert validity.capacity_figure(s, 2)[0] == 180.0 and validity.capacity_figure(s, 0)[0] == 220.0
    assert validity.capacity_figure(s, 3)[0] == 220.0  # no figure for 3 workers: the one-process figure
    monkeypatch.setenv(validity.CAPACITY_ENV, "50")
    assert validity.capacity_figure(s)[0] == 50.0
    assert validity.capacity_figure(scenario_from_dict({"live": {"capacity": 30}})) == (30.0, "live.capacity")
    pre = validity.preflight(scenario_from_dict({"load": {"arrival_rate": 1.0}}), live_window(s, 60, 60, 30), 0)
    assert "more than the ~50 flows/s" in pre["warnings"][0]


def test_ramped_peak_counts_in_the_capacity_warning():
    """A ramp from 1 to 3 by 30 min, held: the peak wall rate is 3/s × K = 120 over a 40-minute horizon, and
    2/s × 40 = 80 when the horizon (20 min) ends halfway up the ramp."""
    s = scenario_from_dict({"load": {"arrival_rate": 1.0, "profile": [{"at": "30m", "multiplier": 3, "ramp": True}]}})
    assert validity.preflight(s, live_window(s, 40, 60, 30), 0)["planned_peak_rate_wall_per_s"] == pytest.approx(120)
    assert validity.preflight(s, live_window(s, 40, 30, 30), 0)["planned_peak_rate_wall_per_s"] == pytest.approx(
        (1 + 2 * 1200 / 1800) * 40)


FIXTURE = Path(__file__).parent / "fixtures" / "live_mall.toml"


@pytest.mark.parametrize("argv, message", [
    (["--master"], "--master needs --expect-workers"),
    (["--expect-workers", "2"], "--expect-workers needs --master"),
    (["--master", "--expect-workers", "2", "--workers", "2"], "drop --workers"),
    (["--master", "--expect-workers", "1", "--master-bind-host", "0.0.0.0"], "--allow-remote"),
    (["--web", "--web-port", "0"], "--web-port"),
    (["--master", "--expect-workers", "1", "--worker-timeout", "soon"], "--worker-timeout"),
])
def test_distribution_flags_are_usage_errors_before_anything_starts(tmp_path, capsys, argv, message):
    from sim.cli import main

    assert main(["load", str(FIXTURE), "--out", str(tmp_path / "run"), "-q", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing started, nothing written"


def test_load_worker_refuses_bad_flags(capsys):
    from sim.cli import main

    assert main(["load-worker", "--master-host", "127.0.0.1", "--master-port", "0"]) == 2
    assert "--master-port" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["load-worker"])
    assert exc.value.code == 2


def test_report_puts_a_run_that_is_not_valid_at_the_top():
    from reports.html import render_index

    doc = json.loads((Path(__file__).parent / "fixtures" / "results_live.json").read_text())
    assert "This run is not valid" not in render_index([doc], [], [])
    v = validity.assess(_live(achieved_arrival_ratio=0.04), scenario_from_dict({}),
                        validity.preflight(scenario_from_dict({}), live_window(scenario_from_dict({}), 60, 60, 30), 0))
    doc.update(valid=False, validity=v)
    page = render_index([doc], [], [])
    banner = page.index("This run is not valid")
    assert banner < page.index("<b>Summary</b>") and "live.min_achieved_ratio" in page[banner:]
    assert "--time-scale" in page[banner:page.index("<b>Summary</b>")]


def test_compare_exits_3_with_a_banner_when_not_conclusive():
    from rich.console import Console

    from loadtests.compare import comparison_exit

    console = Console(record=True, width=200)
    doc = {"conclusive": False, "inconclusive_reasons": ["the window is too short"], "live": {"validity": {}}}
    assert comparison_exit(doc, console) == 3
    text = console.export_text()
    assert "THIS COMPARISON IS NOT CONCLUSIVE" in text and "the window is too short" in text
    assert comparison_exit({"conclusive": True, "live": {}}, console) == 0


def test_a_live_run_of_a_scenario_with_customer_service_says_the_desk_is_simulated_only():
    """support.agents is the simulation's: the preflight warns that a live run has no desk."""
    s = scenario_from_dict({"support": {"agents": 3}})
    pre = validity.preflight(s, live_window(s, 60, 60, 30), 0)
    assert any("support.agents = 3" in w and "simulated only" in w for w in pre["warnings"]), pre["warnings"]
    plain = scenario_from_dict({})
    assert not any("support" in w for w in validity.preflight(plain, live_window(plain, 60, 60, 30), 0)["warnings"])
