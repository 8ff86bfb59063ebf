"""The results document (sim/results.py): pooling, intervals, canonical bytes, atomic writes, loading."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from rich.console import Console
from scipy import stats as sps

from sim import results as R
from sim.check import CheckConfig, ClassStats, CheckSummary, check_events, read_history
from sim.errors import ConfigError
from sim.examples import EXAMPLE_HISTORY
from sim.scenario import ANOMALY_CLASSES


def summary(orders: int, counts: dict[str, int] | None = None, windows: dict[str, list[float]] | None = None,
            examples: dict | None = None) -> CheckSummary:
    """A hand-made replication summary: ``counts`` unresolved instances per class, with ``windows``."""
    per_class = {}
    for cls in ANOMALY_CLASSES:
        c = (counts or {}).get(cls, 0)
        w = (windows or {}).get(cls, [])
        per_class[cls] = ClassStats(count=c, repaired=len(w) - c if len(w) > c else 0, amount_fen=c * 1000,
                                    windows=list(w), window_max=max(w, default=0.0), window_sum=sum(w), n_windows=len(w))
    return CheckSummary(orders=orders, per_class=per_class, end_states={"paid_open": orders}, timeline={},
                        examples=examples or {}, end=100.0)


def build(summaries, **kw):
    args = dict(scenario=None, scenario_name=None, seed=None, horizon_s=3600.0, warmup_s=0.0, end_s=7200.0)
    args.update(kw)
    return R.build_results("simulation", summaries, **args)


def example_doc() -> dict:
    s = check_events(read_history(EXAMPLE_HISTORY))
    return R.build_results("check", [s], scenario=None, scenario_name=None, seed=None,
                           horizon_s=s.horizon, warmup_s=s.warmup, end_s=s.end)


def test_single_replication_uses_wilson():
    """One replication: rate = count/orders with a Wilson score interval."""
    doc = build([summary(1000, {"paid_but_closed": 7}, {"paid_but_closed": [1.0] * 7})])
    a = doc["anomalies"]["paid_but_closed"]
    assert a["rate"] == 0.007 and a["ci_method"] == "wilson"
    lo, hi = sps.binomtest(7, 1000).proportion_ci(0.95, method="wilson")
    assert a["ci95"] == pytest.approx([lo, hi], rel=1e-9)
    assert a["amount"] == 70.0 and a["per_replication"] == [0.007]


def test_replications_use_a_t_interval():
    """Several replications: mean of per-replication rates, Student-t interval."""
    reps = [summary(1000, {"double_charge": c}) for c in (2, 5, 3, 6)]
    a = build(reps)["anomalies"]["double_charge"]
    rates = [0.002, 0.005, 0.003, 0.006]
    mean = sum(rates) / 4
    half = sps.t.ppf(0.975, 3) * sps.tstd(rates) / 2
    assert a["ci_method"] == "t" and a["rate"] == pytest.approx(mean)
    assert a["ci95"] == pytest.approx([mean - half, mean + half])
    assert a["count"] == 16 and a["per_replication"] == rates


def test_t_interval_is_clipped_at_zero():
    """A wide interval around a small rate does not go negative."""
    a = build([summary(1000, {"stuck_pending": c}) for c in (0, 0, 9)])["anomalies"]["stuck_pending"]
    assert a["ci95"][0] == 0.0 and a["ci95"][1] > a["rate"]


def test_zero_orders_give_no_interval():
    """No orders: rate 0, ci95 null, and every class still present."""
    doc = build([summary(0)])
    assert set(doc["anomalies"]) == set(ANOMALY_CLASSES)
    for a in doc["anomalies"].values():
        assert (a["rate"], a["ci95"], a["ci_method"], a["window_s"]) == (0.0, None, None, None)
        assert a["per_replication"] == [None]


def test_every_class_is_present_with_zeros():
    """Classes with no instance appear with zeros, an interval, and no window."""
    doc = build([summary(50), summary(60)])
    for cls in ANOMALY_CLASSES:
        a = doc["anomalies"][cls]
        assert (a["count"], a["repaired"], a["amount"], a["window_samples"]) == (0, 0, 0.0, [])
        assert a["ci95"] == [0.0, 0.0]
    assert doc["orders"] == 110 and doc["orders_per_replication"] == [50, 60] and doc["replications"] == 2
    assert doc["end_states"] == {"paid_open": 110}


def test_windows_pool_exact_max_and_mean():
    """window_s: median and p99 from the pooled sample, exact max and mean."""
    w1, w2 = [10.0, 20.0, 30.0], [40.0, 1000.0]
    doc = build([summary(10, {"paid_but_closed": 3}, {"paid_but_closed": w1}),
                 summary(10, {"paid_but_closed": 2}, {"paid_but_closed": w2})])
    win = doc["anomalies"]["paid_but_closed"]["window_s"]
    assert win == {"median": 30.0, "p99": 1000.0, "max": 1000.0, "mean": 220.0}
    assert doc["anomalies"]["paid_but_closed"]["window_samples"] == [10.0, 20.0, 30.0, 40.0, 1000.0]


def test_window_samples_are_bounded_and_deterministic():
    """Thousands of windows pool into at most 500 ascending samples, the same every time."""
    reps = [summary(10_000, {"stuck_pending": 400}, {"stuck_pending": [float(i * (k + 1)) for i in range(400)]})
            for k in range(3)]
    a = build(reps)["anomalies"]["stuck_pending"]
    b = build(reps)["anomalies"]["stuck_pending"]
    assert len(a["window_samples"]) == R.MAX_WINDOW_SAMPLES
    assert a["window_samples"] == sorted(a["window_samples"]) == b["window_samples"]


def test_metrics_are_averaged_and_timeouts_summed():
    """Per-replication metrics: mean of each value, timeouts summed."""
    m = [{"gateway": {"utilization": 0.5, "timeouts": 3}}, {"gateway": {"utilization": 0.7, "timeouts": 4}}]
    doc = build([summary(10), summary(10)], metrics=m)
    assert doc["metrics"]["gateway"] == {"utilization": pytest.approx(0.6), "timeouts": 7}
    assert build([summary(10)])["metrics"] == {}


def test_examples_pick_first_worst_last_across_replications():
    """Examples across replications: earliest start, longest window, latest start."""
    def ex(order, start, window, roles):
        return {"role": roles[0], "roles": roles, "order": order, "start": start, "window_s": window,
                "amount": 1.0, "resolved": True, "events": []}

    r0 = summary(10, examples={"paid_but_closed": [ex("r0-a", 5.0, 10.0, ["first", "last"]), ex("r0-w", 6.0, 50.0, ["worst"])]})
    r1 = summary(10, examples={"paid_but_closed": [ex("r1-a", 1.0, 99.0, ["first", "worst"]), ex("r1-z", 9.0, 1.0, ["last"])]})
    got = build([r0, r1])["examples"]["paid_but_closed"]
    assert [(e["role"], e["roles"], e["order"]) for e in got] == [("first", ["first", "worst"], "r1-a"),
                                                                    ("last", ["last"], "r1-z")]
    assert build([r0])["examples"]["double_charge"] == []


def test_timeline_comes_from_the_first_replication_that_has_one():
    """The timeline is the first non-empty one."""
    a, b = summary(1), summary(1)
    b.timeline = {"bucket_s": 60.0, "t": [0.0]}
    assert build([a, b])["timeline"] == b.timeline


def test_document_shape_and_extra_keys():
    """Top-level keys of docs/results.md, plus extra keys; unspecified window values come from the summary."""
    s = summary(5)
    doc = R.build_results("live", [s], scenario={"run": {}}, scenario_name="baseline", seed=7, faults=[{"from": 1.0, "to": 2.0, "label": "x"}],
                          horizon_s=None, warmup_s=None, end_s=None, extra={"live": {"rps": 3}})
    for key in ("schema_version", "kind", "scenario", "scenario_name", "seed", "replications", "orders",
                "orders_per_replication", "horizon_s", "warmup_s", "end_s", "anomalies", "end_states", "metrics",
                "timeline", "faults", "examples", "live"):
        assert key in doc
    assert (doc["schema_version"], doc["kind"], doc["seed"], doc["end_s"], doc["warmup_s"]) == (1, "live", 7, 100.0, 0.0)


def test_canonical_json_is_byte_identical_for_identical_input():
    """Two checks of the same history give the same bytes; keys sorted, floats at 9 digits, NaN -> null."""
    assert R.canonical_json(example_doc()) == R.canonical_json(example_doc())
    text = R.canonical_json({"b": 1 / 3, "a": [math.nan, math.inf, 2], "c": {"z": 1, "y": True}})
    assert json.loads(text) == {"a": [None, None, 2], "b": 0.333333333, "c": {"y": True, "z": 1}}
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')


def test_canonical_json_differs_only_in_run_info():
    """run_info is where wall time lives; the rest of two runs is identical."""
    a, b = example_doc(), example_doc()
    a["run_info"] = R.run_info(0.0, ["x"])
    b["run_info"] = R.run_info(1.0, ["y"])
    a.pop("run_info"), b.pop("run_info")
    assert R.canonical_json(a) == R.canonical_json(b)


def test_write_results_is_atomic(tmp_path, monkeypatch):
    """results.json is replaced whole; a failed write leaves the old file and no temp file."""
    out = tmp_path / "deep" / "dir"
    path = R.write_results({"schema_version": 1, "x": 1}, out)
    assert path == out / "results.json" and json.loads(path.read_text()) == {"schema_version": 1, "x": 1}
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        R.write_results({"schema_version": 1, "x": 2}, out)
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert json.loads(path.read_text())["x"] == 1


def test_load_results_round_trip(tmp_path):
    """A written document loads back equal to its canonical form (a directory path works too)."""
    doc = example_doc()
    R.write_results(doc, tmp_path)
    assert R.load_results(tmp_path / "results.json") == json.loads(R.canonical_json(doc))
    assert R.load_results(tmp_path)["kind"] == "check"


@pytest.mark.parametrize("content, message", [
    (None, "no such results file"),
    ("{not json", "not valid JSON (line 1"),
    ("[1]", "expected a JSON object"),
    ('{"kind": "check"}', "missing schema_version"),
    ('{"schema_version": 2}', "schema_version: expected 1, found 2"),
])
def test_load_results_errors(tmp_path, content, message):
    """Missing file, bad JSON, wrong or missing schema_version: ConfigError naming the file."""
    p = tmp_path / "results.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ConfigError) as err:
        R.load_results(p)
    assert str(p) in str(err.value) and message in str(err.value)


def test_run_info_fields():
    """run_info records wall time, host, python, package versions, start time and command."""
    info = R.run_info(0.0, ["checkout-chaos", "check"])
    assert set(info) >= {"wall_s", "host", "python", "versions", "started_at", "command"}
    assert info["started_at"].startswith("1970-01-01T00:00:00") and info["command"] == ["checkout-chaos", "check"]
    assert info["versions"]["simpy"] and "locust" in info["versions"]


def test_summary_table_has_a_row_per_class():
    """The table lists every class with count, rate, CI, windows and money."""
    doc = example_doc()
    table = R.summary_table(doc)
    assert table.row_count == len(ANOMALY_CLASSES)
    console = Console(width=140, record=True)
    doc["metrics"] = {"gateway": {"utilization": 0.71, "wait_p99_s": 0.2, "timeouts": 3}}
    R.print_summary(doc, console)
    text = console.export_text()
    assert "paid_but_closed" in text and "¥299.00" in text and "1d02h" in text and "capacity-limited" in text


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.35, "350ms"), (4.25, "4.2s"), (42, "42s"), (725, "12m05s"), (3720, "1h02m"), (97200, "1d03h"),
    (None, "—"),
])
def test_human_duration(seconds, text):
    """Durations as a person reads them."""
    assert R.human_duration(seconds) == text


def test_results_module_does_not_need_rich_or_scipy_to_import():
    """Importing sim.results stays light (rich and scipy load only when used)."""
    import subprocess
    import sys

    code = "import sys, sim.results; print('rich' in sys.modules, 'scipy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
    assert out.stdout.split() == ["False", "False"]


def test_check_config_round_trip_through_results():
    """Warmup, horizon and end of the check appear in the document."""
    s = check_events(read_history(EXAMPLE_HISTORY), CheckConfig(warmup=100.0))
    doc = R.build_results("check", [s], scenario=None, scenario_name=None, seed=None,
                          horizon_s=s.horizon, warmup_s=s.warmup, end_s=s.end)
    assert (doc["warmup_s"], doc["horizon_s"], doc["end_s"], doc["orders"]) == (100.0, 3600.0, 97200.0, 6)
