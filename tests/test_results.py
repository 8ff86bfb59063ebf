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
            examples: dict | None = None, repaired: dict[str, int] | None = None) -> CheckSummary:
    """A hand-made replication summary: ``counts`` unresolved instances per class (one order each), with
    ``windows`` (the last ``count`` of them open at the end), ``repaired`` more instances (one order each)."""
    per_class = {}
    for cls in ANOMALY_CLASSES:
        c = (counts or {}).get(cls, 0)
        w = (windows or {}).get(cls, [])
        r = (repaired or {}).get(cls, len(w) - c if len(w) > c else 0)
        opened = [False] * (len(w) - c) + [True] * c if len(w) >= c else []
        per_class[cls] = ClassStats(count=c, repaired=r, amount_fen=c * 1000, windows=list(w),
                                    window_max=max(w, default=0.0), window_sum=sum(w), n_windows=len(w),
                                    windows_open=opened, orders_occurred=c + r, orders_unresolved=c)
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


def test_single_replication_uses_an_exact_interval():
    """One replication: rate = affected orders / orders with a Clopper–Pearson interval."""
    doc = build([summary(1000, {"paid_but_closed": 7}, {"paid_but_closed": [1.0] * 7})])
    a = doc["anomalies"]["paid_but_closed"]
    assert a["rate"] == a["unresolved_rate"] == 0.007 and a["ci_method"] == "clopper-pearson"
    lo, hi = sps.binomtest(7, 1000).proportion_ci(0.95, method="exact")
    assert a["ci95"] == pytest.approx([lo, hi], rel=1e-9) == a["unresolved_ci95_exact"]
    assert a["unresolved_ci95_between"] is None and a["unresolved_dispersion_p"] is None
    assert a["amount"] == a["amount_total"] == 70.0 and a["per_replication"] == [0.007]
    assert a["amount_per_replication"] == {"mean": 70.0, "ci95": None, "values": [70.0]}


def test_replications_pool_counts_over_all_orders():
    """Several replications: the pooled count over all orders with its exact interval, and the
    between-replication t-interval beside it (equal orders: the usual t-interval of per-replication rates)."""
    reps = [summary(1000, {"double_charge": c}) for c in (2, 5, 3, 6)]
    a = build(reps)["anomalies"]["double_charge"]
    rates = [0.002, 0.005, 0.003, 0.006]
    assert a["rate"] == pytest.approx(16 / 4000) and a["count"] == 16 and a["unresolved_orders"] == 16
    assert a["unresolved_ci95_exact"] == pytest.approx(list(sps.binomtest(16, 4000).proportion_ci(0.95, method="exact")))
    mean = sum(rates) / 4
    half = sps.t.ppf(0.975, 3) * sps.tstd(rates) / 2
    assert a["unresolved_ci95_between"] == pytest.approx([mean - half, mean + half])
    assert a["ci_method"] == "clopper-pearson" and a["ci95"] == a["unresolved_ci95_exact"]  # binomial spread: exact is read
    assert a["per_replication"] == rates


def test_overdispersed_replications_widen_the_interval():
    """Replications that vary far more than binomially: ci95 is the effective-n interval, wider than the
    exact one, still containing the rate and with a positive lower bound."""
    a = build([summary(1000, {"stuck_pending": c}) for c in (0, 0, 30, 1, 29)])["anomalies"]["stuck_pending"]
    assert a["unresolved_dispersion_p"] < 0.05 and a["ci_method"] == "clopper-pearson-effective-n"
    lo, hi = a["ci95"]
    assert 0 < lo <= a["unresolved_ci95_exact"][0] and hi >= a["unresolved_ci95_exact"][1] and lo <= a["rate"] <= hi
    assert hi > a["unresolved_ci95_exact"][1] * 1.5


def test_rare_class_gets_a_positive_lower_bound():
    """Two events in 5 replications: the exact pooled interval, not a t-interval clipped at 0."""
    a = build([summary(5000, {"double_charge": c}) for c in (1, 0, 0, 1, 0)])["anomalies"]["double_charge"]
    lo, hi = a["ci95"]
    assert lo > 0 and lo <= a["rate"] <= hi
    assert a["ci95"] == pytest.approx(list(sps.binomtest(2, 25000).proportion_ci(0.95, method="exact")))


def test_zero_counts_have_a_positive_upper_bound():
    """No instance in N orders: [0, upper] with upper the exact one-sided bound, never [0, 0]."""
    doc = build([summary(13000) for _ in range(5)])
    for cls in ANOMALY_CLASSES:
        a = doc["anomalies"][cls]
        for m in ("occurred", "repaired", "unresolved"):
            lo, hi = a[f"{m}_ci95"]
            assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 65000), rel=1e-6) and hi > 5e-5
        assert a["unresolved_ci95_between"] is None


def test_zero_orders_give_no_interval():
    """No orders: rate 0, ci95 null, and every class still present."""
    doc = build([summary(0)])
    assert set(doc["anomalies"]) == set(ANOMALY_CLASSES)
    for a in doc["anomalies"].values():
        assert (a["rate"], a["ci95"], a["ci_method"], a["window_s"], a["repair_s"]) == (0.0, None, None, None, None)
        assert a["per_replication"] == [None] and a["occurred_ci95"] is None


def test_occurred_repaired_and_unresolved_are_all_reported():
    """occurred = repaired + unresolved, in orders and in instances, each with a rate inside its interval."""
    doc = build([summary(1000, {"paid_but_closed": 3}, repaired={"paid_but_closed": 40}),
                 summary(1000, {"paid_but_closed": 1}, repaired={"paid_but_closed": 36})])
    a = doc["anomalies"]["paid_but_closed"]
    assert (a["occurred_orders"], a["repaired_orders"], a["unresolved_orders"]) == (80, 76, 4)
    assert (a["occurred_count"], a["repaired_count"], a["unresolved_count"]) == (80, 76, 4)
    assert (a["count"], a["repaired"]) == (4, 76)
    assert a["occurred_rate"] == pytest.approx(0.04) and a["unresolved_rate"] == pytest.approx(0.002)
    for m in ("occurred", "repaired", "unresolved"):
        lo, hi = a[f"{m}_ci95"]
        assert 0 <= lo <= a[f"{m}_rate"] <= hi <= 1


def test_a_count_above_orders_does_not_give_a_rate_above_one():
    """Two instances in one order (a ledger line unbalanced twice) are one affected order: rate <= 1."""
    events = [
        {"t": 0.0, "type": "order.created", "order": "o1", "amount": 100, "expires_at": 900.0},
        {"t": 1.0, "type": "ledger.txn", "order": "o1", "kind": "charge", "trade": "t1",
         "postings": [{"account": "user:u", "amount": -100}]},
        {"t": 2.0, "type": "ledger.txn", "order": "o1", "kind": "charge", "trade": "t2",
         "postings": [{"account": "user:u", "amount": -100}]},
        {"t": 3.0, "type": "order.paid", "order": "o1"},
        {"t": 10.0, "type": "run.end"},
    ]
    s = check_events(events)
    doc = R.build_results("check", [s], scenario=None, scenario_name=None, seed=None,
                          horizon_s=None, warmup_s=None, end_s=None)
    a = doc["anomalies"]["ledger_imbalance"]
    assert s.orders == 1 and a["count"] == 2 and a["unresolved_orders"] == 1
    assert a["rate"] == 1.0 and a["ci95"][1] == 1.0 and a["ci95"][0] <= a["rate"]
    for cls, x in doc["anomalies"].items():
        assert 0 <= x["occurred_rate"] <= 1 and x["unresolved_orders"] <= x["occurred_orders"] <= s.orders, cls


def test_every_class_is_present_with_zeros():
    """Classes with no instance appear with zeros, an interval [0, upper], and no window."""
    doc = build([summary(50), summary(60)])
    for cls in ANOMALY_CLASSES:
        a = doc["anomalies"][cls]
        assert (a["count"], a["repaired"], a["amount"], a["window_samples"]) == (0, 0, 0.0, [])
        assert a["ci95"][0] == 0.0 and a["ci95"][1] > 0.0
    assert doc["orders"] == 110 and doc["orders_per_replication"] == [50, 60] and doc["replications"] == 2
    assert doc["end_states"] == {"paid_open": 110}


def test_money_per_replication_and_total():
    """Money held at the end: the total over replications, and a per-replication mean with a t-interval."""
    a = build([summary(100, {"paid_but_closed": c}) for c in (1, 2, 3)])["anomalies"]["paid_but_closed"]
    assert a["amount_total"] == a["amount"] == 60.0
    per = a["amount_per_replication"]
    half = sps.t.ppf(0.975, 2) * sps.tstd([10.0, 20.0, 30.0]) / math.sqrt(3)
    assert per["mean"] == 20.0 and per["values"] == [10.0, 20.0, 30.0]
    assert per["ci95"] == pytest.approx([20.0 - half, 20.0 + half])


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
    assert (doc["schema_version"], doc["kind"], doc["seed"], doc["end_s"], doc["warmup_s"]) == (2, "live", 7, 100.0, 0.0)


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
    ('{"schema_version": 3}', "schema_version: expected 2, found 3"),
    ('{"schema_version": 1}', "schema_version 1: written by an older checkout-chaos"),
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
    assert "paid_but_closed" in text and "¥299.00" in text and "capacity-limited" in text
    assert "occurred" in text and "unresolved" in text and "not reached" in text and "Kaplan–Meier" in text
    assert "22% of buyers (2) paid for an order that was then closed; 1 was repaired" in text


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


def test_thresholds_name_occurred_or_unresolved():
    """A threshold names which figure it bounds: .occurred_rate (arose at all) beside .rate (unresolved at
    the end, the old syntax, unchanged); a misspelt field is refused with a suggestion."""
    from loadtests.live import evaluate_thresholds
    from sim.scenario import scenario_from_dict

    doc = build([summary(1000, {"paid_but_closed": 1}, repaired={"paid_but_closed": 9})])
    rules = ["paid_but_closed.occurred_rate < 1e-3", "paid_but_closed.rate < 1e-2",
             "paid_but_closed.occurred_orders <= 10", "paid_but_closed.unresolved_count < 1", "paid_but_closed.count < 2"]
    sc = scenario_from_dict({"thresholds": rules}, "t.toml")
    got = {r["rule"]: (r["observed"], r["holds"]) for r in evaluate_thresholds(sc.thresholds, doc)}
    assert got == {"paid_but_closed.occurred_rate < 1e-3": (0.01, False), "paid_but_closed.rate < 1e-2": (0.001, True),
                   "paid_but_closed.occurred_orders <= 10": (10, True), "paid_but_closed.unresolved_count < 1": (1, False),
                   "paid_but_closed.count < 2": (1, True)}
    with pytest.raises(ConfigError, match="did you mean 'occurred_rate'"):
        scenario_from_dict({"thresholds": ["paid_but_closed.occured_rate < 1"]}, "t.toml")


def test_charges_without_an_order_are_a_share_of_the_orders_at_stake():
    """A charge whose order was never created is an order to the buyer who paid: such orders join the
    denominator (orders_without_creation), so two of them beside one created order give 2/3 — never 2.0,
    and never "count 1, rate 0, no interval" when no order was created at all."""
    def charge(t, order, trade):
        return {"t": t, "type": "ledger.txn", "order": order, "kind": "charge", "trade": trade,
                "postings": [{"account": "user:u", "amount": -100}, {"account": "clearing", "amount": 100}]}

    created = [{"t": 0.0, "type": "order.created", "order": "ok", "amount": 100, "expires_at": 900.0}]
    orphans = [charge(5.0, "x1", "t1"), charge(6.0, "x2", "t2")]
    for events, orders, uncreated, rate in ((created + orphans, 1, 2, 2 / 3), (orphans[:1], 0, 1, 1.0)):
        # a history that declares it observed the checkout: orphan charges are decidable even alone
        full = {"ledger": True, "gateway": True, "checkout": True, "screens": True, "bnpl": True}
        s = check_events(events + [{"t": 50.0, "type": "run.end"}], CheckConfig(observed=full))
        doc = R.build_results("check", [s], scenario=None, scenario_name=None, seed=None,
                              horizon_s=None, warmup_s=None, end_s=None)
        a = doc["anomalies"]["charge_without_order"]
        assert (doc["orders"], doc["orders_without_creation"]) == (orders, uncreated)
        assert a["count"] == uncreated and a["rate"] == pytest.approx(rate)
        lo, hi = a["ci95"]
        assert 0 < lo <= a["rate"] <= hi <= 1


def test_the_actor_table_shows_rates_as_rates_and_names_the_overload_columns():
    """goodput_per_s is pays per second, not a duration ("1.6s" was printed); the overload metrics get units."""
    from sim.results import _METRIC_HEADERS, _metric_cell

    assert _metric_cell("goodput_per_s", 1.6455) == "1.65/s"
    assert _metric_cell("wait_mean_s", 48.0) == "48s"
    for key in ("busy_mean", "rejected", "shed", "dropped", "goodput_per_s", "offered_per_s", "create_failed", "resends"):
        assert "(" in _METRIC_HEADERS[key][0]  # a unit in the header
