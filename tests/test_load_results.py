"""After a live run: merging histories, the live section, Locust's statistics, thresholds, comparison,
and the command's errors (exit 2, nothing started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.cli import main
from sim.scenario import scenario_from_dict

from loadtests.compare import agreement
from loadtests.history import HistoryWriter, merge, read_client_file
from loadtests.live import evaluate_thresholds, live_section, read_locust_stats
from loadtests.plan import LiveWindow

ROOT = Path(__file__).parents[1]
WINDOW = LiveWindow(time_scale=60.0, warmup=10.0, horizon=100.0, end=200.0)


def test_services_are_rebased_onto_the_load_clock_and_clients_merged_once(tmp_path):
    """Service times (t, expires_at) move by the epochs' offset; every client event appears once; events
    after the end of observation are dropped; run.start/run.end frame the history."""
    w = HistoryWriter(tmp_path / "client-0.jsonl")
    w.emit({"t": 20.0, "type": "client.invoke", "actor": "client", "order": "a", "op": "create_order", "call": "a:1"})
    w.emit({"t": 20.5, "type": "client.ok", "actor": "client", "order": "a", "op": "create_order", "call": "a:1"})
    w.emit({"t": 250.0, "type": "app.shown", "actor": "app", "order": "a", "screen": "order_paid"})
    w.close()
    (tmp_path / "client-1.jsonl").write_text(
        json.dumps({"t": 30.0, "type": "user.abandon", "actor": "user", "order": "b"}) + "\n" + '{"t": 31, "ty')
    services = [{"t": 520.2, "type": "order.created", "actor": "order_service", "order": "a", "expires_at": 2320.2},
                {"t": 900.0, "type": "order.closed", "actor": "order_service", "order": "a"}]
    events, info = merge(services, sorted(tmp_path.glob("client-*.jsonl")), 500.0, WINDOW, seed=7)
    assert [e["type"] for e in events] == ["run.start", "client.invoke", "order.created", "client.ok", "user.abandon",
                                          "run.end"]
    created = events[2]
    assert created["t"] == pytest.approx(20.2) and created["expires_at"] == pytest.approx(1820.2)
    assert events[0] | {} == {"t": 0.0, "type": "run.start", "actor": "run", "warmup": 10.0, "horizon": 100.0,
                              "end": 200.0, "seed": 7, "time_scale": 60.0}
    assert info.after_end == 2 and info.duplicate_client_events == 0 and info.client_events == 3
    assert info.orders_seen_by_clients == 2


def test_a_torn_last_line_is_skipped(tmp_path):
    p = tmp_path / "client-0.jsonl"
    p.write_text('{"t": 1, "type": "x"}\n{"t": 2, "ty')
    assert list(read_client_file(p)) == [{"t": 1, "type": "x"}]


def test_duplicates_are_counted(tmp_path):
    line = json.dumps({"t": 1.0, "type": "client.ok", "order": "a", "call": "a:1"}) + "\n"
    (tmp_path / "client-0.jsonl").write_text(line)
    (tmp_path / "client-1.jsonl").write_text(line)
    _, info = merge([], sorted(tmp_path.glob("*.jsonl")), 0.0, WINDOW, seed=None)
    assert info.duplicate_client_events == 1


def _call(typ: str, latency: float, op: str = "create_order", **extra) -> dict:
    return {"t": 1.0, "type": typ, "actor": "client", "order": "o", "op": op, "call": "c", "latency": latency, **extra}


def test_the_live_section_counts_arrivals_errors_and_latency_from_schedule():
    events = ([_call("client.ok", 0.6, status=201)] * 97 + [_call("client.unknown", 15.0, error="timeout")]
              + [_call("client.fail", 0.3, status=409)] + [_call("client.fail", 0.0, error="ConnectionRefusedError")]
              + [_call("client.fail", 0.1, status=422)])
    done = [{"planned": 60, "started": 60, "late": 3, "dropped": 0, "completed": 60, "flow_errors": 0, "lags": [0.001] * 60,
             "lag_max": 0.2, "in_flight_at_end": 0},
            {"planned": 40, "started": 38, "late": 0, "dropped": 2, "completed": 38, "flow_errors": 1, "lags": [0.002] * 38,
             "lag_max": 0.01, "in_flight_at_end": 1}]
    live = live_section(events, done, 100, 98.5, WINDOW, 2, None, "reference", {}, {}, [], 0.05)
    assert (live["planned_arrivals"], live["started"], live["late_starts"], live["dropped_arrivals"]) == (100, 98, 3, 2)
    assert live["achieved_arrivals"] == 95 and live["achieved_arrival_ratio"] == pytest.approx(0.95)
    assert live["harness_errors"] == 4  # one flow raised, two arrivals dropped, one request malformed
    assert live["malformed_requests"] == 1
    assert live["requests"] == 101 and live["failures"] == 2 and live["error_rate"] == pytest.approx(2 / 101)
    assert live["p50_latency_s"] == 0.6 and live["p99_latency_s"] == 0.6
    assert live["p99_latency_wall_s"] == pytest.approx(0.01)
    assert live["start_lag_wall_s"]["max"] == 0.2
    assert live["latency_by_op"]["create_order"]["count"] == 101


def test_locust_statistics_are_read_from_its_csv(tmp_path):
    header = ('"Type","Name","Request Count","Failure Count","Median Response Time","Average Response Time",'
              '"Min Response Time","Max Response Time","Average Content Size","Requests/s","Failures/s","50%","66%",'
              '"75%","80%","90%","95%","98%","99%","99.9%","99.99%","100%"\n')
    rows = ('"POST","create order",120,2,12,15.5,2,300,250,40.0,0.6,12,14,16,18,25,40,80,120,290,300,300\n'
            '"","Aggregated",120,2,12,15.5,2,300,250,40.0,0.6,12,14,16,18,25,40,80,120,290,300,300\n')
    (tmp_path / "s.csv").write_text(header + rows)
    stats = read_locust_stats(tmp_path / "s.csv")
    assert stats["requests"] == [{"type": "POST", "name": "create order", "count": 120, "failures": 2, "median_ms": 12.0,
                                  "mean_ms": 15.5, "p95_ms": 40.0, "p99_ms": 120.0, "max_ms": 300.0, "rps": 40.0}]
    assert stats["aggregated"]["count"] == 120
    assert read_locust_stats(tmp_path / "missing.csv") == {"requests": [], "aggregated": None}


def test_thresholds_read_rates_counts_and_live_metrics():
    s = scenario_from_dict({"thresholds": ["paid_but_closed.rate < 1e-4", "paid_but_closed.count <= 0",
                                           "p99_latency < 800ms", "achieved_ratio >= 0.95", "error_rate < 0.01"]})
    doc = {"anomalies": {"paid_but_closed": {"rate": 0.002, "count": 3}},
           "live": {"p99_latency_s": 0.5, "achieved_arrival_ratio": 0.97, "error_rate": None}}
    results = evaluate_thresholds(s.thresholds, doc)
    assert [(r["rule"], r["holds"]) for r in results] == [
        ("paid_but_closed.rate < 1e-4", False), ("paid_but_closed.count <= 0", False), ("p99_latency < 800ms", True),
        ("achieved_ratio >= 0.95", True), ("error_rate < 0.01", False)]  # nothing observed: the rule fails
    assert results[0]["observed"] == 0.002


def test_agreement_is_overlap_of_the_intervals():
    sim = {"anomalies": {"paid_but_closed": {"rate": 0.2, "ci95": [0.16, 0.26]},
                         "double_charge": {"rate": 0.0, "ci95": [0.0, 0.0]}}}
    live = {"anomalies": {"paid_but_closed": {"rate": 0.3, "ci95": [0.25, 0.35]},
                          "double_charge": {"rate": 0.01, "ci95": [0.002, 0.03]}}}
    a = agreement(sim, live)
    unresolved = {"sim": [0.16, 0.26], "live": [0.25, 0.35], "sim_rate": 0.2, "live_rate": 0.3,
                  "agree": True, "live_in_sim": False, "sim_in_live": False}
    assert a["paid_but_closed"]["unresolved"] == unresolved  # a schema 1 document: its rate is the unresolved one
    assert {k: a["paid_but_closed"][k] for k in unresolved} == unresolved  # repeated at the top, as before
    assert a["double_charge"]["agree"] is False
    assert a["stuck_pending"]["agree"] is True  # absent from both: 0 and 0


def _measures(occ, occ_ci, unres, unres_ci, **extra):
    return {"occurred_rate": occ, "occurred_ci95": occ_ci, "unresolved_rate": unres, "unresolved_ci95": unres_ci,
            "rate": unres, "ci95": unres_ci, **extra}


def test_agreement_and_the_table_give_occurred_and_unresolved():
    """Occurred can differ while unresolved agrees (both repaired everything): both are compared and shown."""
    from rich.console import Console

    from loadtests.compare import print_comparison

    sim = {"orders": 5000, "replications": 3, "anomalies": {
        "failure_shown_but_charged": _measures(0.7, [0.69, 0.71], 0.0, [0.0, 6e-4]),
        "ledger_imbalance": _measures(0.0, [0.0, 6e-4], 0.0, [0.0, 6e-4])}}
    live = {"orders": 400, "replications": 1, "anomalies": {
        "failure_shown_but_charged": _measures(0.2, [0.16, 0.24], 0.0, [0.0, 9e-3]),
        "ledger_imbalance": _measures(0.0, [0.0, 0.0], 0.0, [0.0, 0.0], observable=False)}}
    a = agreement(sim, live)
    f = a["failure_shown_but_charged"]
    assert f["occurred"]["agree"] is False and f["occurred"]["sim_rate"] == 0.7 and f["occurred"]["live"] == [0.16, 0.24]
    assert f["unresolved"]["agree"] is True and f["agree"] is True and f["observable"] is True
    assert a["ledger_imbalance"]["observable"] is False and a["ledger_imbalance"]["occurred"]["agree"] is None
    console = Console(width=200, record=True)
    print_comparison(sim, live, a, console)
    text = console.export_text()
    words = " ".join(text.split())
    assert "occurred (arose at all)" in words and "unresolved (still open at the end)" in words
    header = [line.split() for line in text.splitlines()[:8]]
    assert ["occurred", "occurred", "occurred", "unresolved", "unresolved", "unresolved"] in header
    assert ["anomaly", "simulation", "live", "agree", "simulation", "live", "agree"] in header
    row = next(line for line in text.splitlines() if line.strip().startswith("failure_shown_but_charged"))
    assert "0.7 [0.69, 0.71]" in row and "0.2 [0.16, 0.24]" in row and " no " in row and " yes " in row
    assert "not observable" in next(line for line in text.splitlines() if "ledger_imbalance" in line)


@pytest.mark.parametrize("argv, message", [
    (["--target", "http://10.1.2.3:8000", "--target-config", str(ROOT / "loadtests/adapters/reference.toml")],
     "not a loopback address"),
    (["--target", "http://127.0.0.1:9"], "--target needs --target-config"),
    (["--target", "ftp://127.0.0.1:9", "--target-config", "x.toml"], "expected an http(s) URL"),
    (["--run-time", "soon"], "--run-time: expected a duration"),
    (["--time-scale", "0"], "--time-scale: expected a positive number"),
    (["--run-time", "1s", "--time-scale", "60"], "nothing would be counted"),
    (["--max-orders", "10"], "more than --max-orders 10"),
    (["--provider-host", "0.0.0.0"], "--provider-host 0.0.0.0: not a loopback address"),
    (["--target", "http://127.0.0.1:9", "--target-config", "nope.toml"], "no such adapter file"),
])
def test_mistakes_exit_2_before_anything_starts(argv, message, tmp_path, capsys):
    rc = main(["load", str(ROOT / "scenarios/baseline.toml"), "--out", str(tmp_path / "o"), "-q", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "services").exists()


def test_fault_windows_are_applied_at_their_scaled_boundaries():
    """Two overlapping windows at time scale 1000: each boundary replaces the services' overrides with the
    merge of the windows then active (the later window wins a shared key), and clears them at the end."""
    import time

    from sim.scenario import FaultWindow, Scenario

    from loadtests.live import FaultSchedule

    class FakeServices:
        calls: list[tuple[dict, tuple, float]] = []

        def set_faults(self, overrides: dict, which: tuple) -> None:
            self.calls.append((overrides, which, time.time()))

    windows = (FaultWindow(start="10s", end="40s", set={"gateway.service_time": "2s", "bank.channels": 4}),
               FaultWindow(start="20s", end="30s", set={"bank.channels": 1}))
    scenario = Scenario().model_copy(update={"faults": windows})
    services = FakeServices()
    epoch = time.time() + 0.05
    schedule = FaultSchedule(services, scenario, epoch, 1000.0, ("provider",))
    schedule.start()
    schedule.join(timeout=5)
    assert [c[0] for c in services.calls] == [
        {"gateway.service_time": "2s", "bank.channels": 4}, {"gateway.service_time": "2s", "bank.channels": 1},
        {"gateway.service_time": "2s", "bank.channels": 4}, {}]
    assert all(c[1] == ("provider",) for c in services.calls)
    assert [c[2] >= epoch + t / 1000 for c, t in zip(services.calls, (10, 20, 30, 40))] == [True] * 4
    assert [r["t"] for r in schedule.applied] == [10.0, 20.0, 30.0, 40.0]


def test_the_plan_carries_fault_windows_to_the_locust_processes(tmp_path):
    from sim.scenario import FaultWindow, Scenario, scenario_from_dict

    from loadtests.plan import Plan

    windows = (FaultWindow(start="1m", end="2m", label="brownout", set={"app.request_timeout": "2s"}),)
    scenario = Scenario(name="x").model_copy(update={"faults": windows})
    plan = Plan(scenario=scenario.resolved(), checkout_url="", provider_url="", adapter={}, time_scale=1.0,
                horizon=1.0, end=2.0, slots=1, run_id="r", client_dir=str(tmp_path))
    again = scenario_from_dict(Plan.from_json(plan.to_json()).scenario)
    assert again.faults == windows and again.resolved() == scenario.resolved()
