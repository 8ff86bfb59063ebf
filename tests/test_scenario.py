"""Scenario files: parsing of durations and distributions, overrides, and one clear error per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main
from sim.errors import ConfigError
from sim.scenario import (Scenario, format_duration, load_scenario, parse_duration, parse_override,
                          scenario_from_dict)


@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("15s", 15), ("15m", 900), ("2h", 7200),
                                           ("15d", 1296000), (0, 0.0), ("1.5h", 5400)])
def test_durations_as_people_write_them(text, seconds):
    """Durations parse from the forms people write."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_duration_round_trips_through_its_human_form():
    """format_duration gives back a form parse_duration reads to the same value."""
    for s in (0.25, 15, 900, 7200, 1296000, 90, 0.001):
        assert parse_duration(format_duration(s)) == pytest.approx(s)


def test_defaults_are_complete_and_round_trip():
    """The resolved scenario (defaults included) validates back into the same scenario."""
    s = Scenario()
    assert scenario_from_dict(s.resolved()) == s
    for key in ("seed", "replications", "horizon", "drain", "warmup"):
        assert key in s.resolved()["run"]


def test_distributions():
    """A plain duration is a constant; tables give exponential, lognormal, uniform, empirical."""
    s = scenario_from_dict({"user": {"pay_delay": "20s"}, "gateway": {
        "service_time": {"dist": "lognormal", "median": "20ms", "p99": "200ms"},
        "notify_latency": {"dist": "empirical", "values": ["1s", "2s"]}}})
    assert s.user.pay_delay.kind == "constant" and s.user.pay_delay.mean == 20
    import random
    draw = s.gateway.service_time.sampler(random.Random(1))
    xs = sorted(draw() for _ in range(20000))
    assert xs[10000] == pytest.approx(0.020, rel=0.05)
    assert xs[19800] == pytest.approx(0.200, rel=0.1)


def test_named_and_explicit_retry_schedules():
    """Named schedules come from the providers' documentation; lists are gaps."""
    s = scenario_from_dict({"gateway": {"notify_schedule": "wechat"}})
    assert s.gateway.notify_schedule.gaps[:3] == (15.0, 15.0, 30.0)
    s = scenario_from_dict({"gateway": {"notify_schedule": ["1s", "1m"]}})
    assert s.gateway.notify_schedule.gaps == (1.0, 60.0)


def test_override_with_set():
    """--set key.path=value overrides any key, values read as TOML or bare words."""
    s = Scenario().with_overrides(dict([parse_override("order_service.order_ttl=15m"),
                                        parse_override("order_service.close_policy=query_then_close"),
                                        parse_override("load.arrival_rate=50")]))
    assert s.order_service.order_ttl == 900 and s.order_service.close_policy == "query_then_close"
    assert s.load.arrival_rate == 50


BAD = [
    ("[run]\nsed = 3\n", ["run.sed", "unknown key", "did you mean 'seed'"]),
    ("[gateway]\ntimeout = \"fast\"\n", ["gateway.timeout", "duration", "'fast'"]),
    ("[bank]\ndecline_probability = 1.5\n", ["bank.decline_probability", "between 0 and 1", "1.5"]),
    ("[run]\nhorizon = \"-5m\"\n", ["run.horizon", "non-negative", "-5m"]),
    ("[user]\npay_delay = {dist = \"lognormal\", median = \"1s\"}\n", ["user.pay_delay", "missing key 'p99'"]),
    ("[order_service]\nclose_policy = \"nave\"\n", ["order_service.close_policy", "naive", "'nave'"]),
    ("[run\nseed = 1\n", ["not valid TOML"]),
    ("[[load.profile]]\nat = \"1m\"\n", ["load.profile[0].multiplier", "missing"]),
    ("[run]\nreplications = \"many\"\n", ["run.replications", "'many'"]),
    ("[gatway]\nworkers = 3\n", ["gatway", "did you mean 'gateway'"]),
]


@pytest.mark.parametrize("text, needles", BAD)
def test_bad_file_gets_one_clear_message(tmp_path, text, needles):
    """Each kind of mistake names the file, the key, what was expected and what was found."""
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(f)
    msg = str(err.value)
    assert str(f) in msg
    for needle in needles:
        assert needle in msg, msg


def test_validate_command_exit_codes(tmp_path, capsys):
    """validate exits 0 on good files, 2 on a bad one, with the message on stderr."""
    good = tmp_path / "good.toml"
    good.write_text("[order_service]\norder_ttl = \"15m\"\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[order_service]\norder_tll = \"15m\"\n")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "order_service.order_tll" in err and "did you mean 'order_ttl'" in err


def test_validate_prints_resolved_scenario(tmp_path, capsys):
    """validate --print shows the resolved scenario with defaults."""
    good = tmp_path / "good.toml"
    good.write_text("[order_service]\norder_ttl = \"15m\"\n")
    assert main(["validate", str(good), "--print"]) == 0
    out = capsys.readouterr().out
    assert '"order_ttl": "15m"' in out and '"trade_ttl": "15d"' in out


def test_bad_set_override_is_a_usage_error(tmp_path):
    """A misspelt --set key exits 2 with a suggestion and no traceback (real console script)."""
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "simulate", "--set", "order_service.order_tll=5m",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "did you mean 'order_ttl'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_schema_doc_is_current():
    """docs/scenario.md is what `python -m sim.scenario` generates from the schema."""
    from pathlib import Path

    from sim.scenario import schema_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "scenario.md"
    assert doc.read_text(encoding="utf-8").strip() == schema_markdown().strip(), \
        "regenerate with: python -m sim.scenario > docs/scenario.md"


def test_fault_windows_validate_and_apply():
    """A fault window's keys are validated like the file's; inside it the values change."""
    s = scenario_from_dict({"faults": [{"start": "1m", "end": "2m", "label": "storm",
                                        "set": {"bank.response_loss": 0.5}}]})
    inside = s.faulted(s.faults[0])
    assert inside.bank.response_loss == 0.5 and s.bank.response_loss == 0.0
    with pytest.raises(ConfigError, match="did you mean 'response_loss'"):
        scenario_from_dict({"faults": [{"start": "1m", "end": "2m", "set": {"bank.response_los": 0.5}}]}, "f.toml")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        scenario_from_dict({"faults": [{"start": "1m", "end": "2m", "set": {"bank.response_loss": 1.5}}]}, "f.toml")
    with pytest.raises(ConfigError, match="end must be after start"):
        scenario_from_dict({"faults": [{"start": "2m", "end": "1m", "set": {"bank.response_loss": 0.5}}]}, "f.toml")
    # two problems in one window: both named in one message
    with pytest.raises(ConfigError) as exc:
        scenario_from_dict({"faults": [{"start": "2m", "end": "1m", "set": {"bank.response_los": 0.5}}]}, "f.toml")
    assert "end must be after start" in str(exc.value) and "response_los" in str(exc.value)


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in
                                  ("simulate", "sweep", "scenarios", "validate", "check", "report", "serve",
                                   "load", "compare")])
def test_every_help_prints(argv, capsys):
    """`checkout-chaos --help` and every command's --help print and exit 0."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


# -- settings that cannot act (notes, not errors) -----------------------------------------------------------

def test_a_setting_that_cannot_act_gets_a_note_naming_it_and_what_it_waits_for(capsys):
    from sim.scenario import inert_settings

    root = Path(__file__).resolve().parents[1]
    base = root / "scenarios" / "baseline.toml"
    assert main(["validate", str(base), "--set", "support.escalate_probability=0.5",
                 "--set", "order_service.notify_outage_duration=10m"]) == 0  # valid: a note, not an error
    err = capsys.readouterr().err
    assert "support.escalate_probability has no effect: support.agents is off" in err, err
    assert "order_service.notify_outage_duration has no effect: order_service.notify_outage_every is \"off\"" in err
    desk = load_scenario(base, ["support.agents=5", "support.escalate_probability=0.5"])
    assert any("user.after_sales_probability = 0" in n for n in inert_settings(desk))
    on = load_scenario(root / "scenarios" / "after_sales_race.toml", ["support.agents=5", "support.escalate_probability=0.5"])
    assert inert_settings(on) == []
    wallet = load_scenario(root / "scenarios" / "bnpl_sync_lag.toml", ["bnpl.deduction_failure=0.3"])
    assert [n.split(":")[0] for n in inert_settings(wallet)] == ["bnpl.deduction_failure has no effect"]
    pause = {"faults": [{"start": "0s", "end": "1h", "set": {"merchant.batch_paused": True}}]}
    assert [n.split(":")[0] for n in inert_settings(load_scenario(base, pause))] == ["merchant.batch_paused has no effect"]
    assert inert_settings(load_scenario(root / "scenarios" / "bnpl_forgotten_finish.toml", pause)) == []


def test_no_library_file_sets_a_key_that_cannot_act():
    from sim.scenario import inert_settings

    for path in sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.toml")):
        assert inert_settings(load_scenario(path)) == [], path.name
