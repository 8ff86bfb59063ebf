"""Sweeps: grid expansion, validation before any run, the CSV, Ctrl-C + --resume, Dask = local pool."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

import sim.sweep as sweep_mod
from sim.cli import main
from sim.errors import ConfigError
from sim.results import canonical_json
from sim.scenario import ANOMALY_CLASSES, Scenario
from sim.sweep import (CSV_COLUMNS, CSV_FILE, PARTIAL_DIR, SWEEP_FILE, expand_grid, parse_axis, plan_sweep,
                       run_sweep, split_values, sweep_csv, write_sweep)

# A world small enough to run many times: ~2 minutes of arrivals, every mechanism switched on.
TINY = {
    "run.horizon": "150s",
    "run.warmup": "10s",
    "run.drain": "20m",
    "run.replications": 2,
    "load.arrival_rate": 3.0,
    "order_service.order_ttl": "2m",
    "gateway.notify_loss": 0.3,
    "gateway.notify_schedule": ["20s", "1m"],
}


def tiny(**extra) -> Scenario:
    overrides = dict(TINY)
    overrides.update({k.replace("__", "."): v for k, v in extra.items()})
    return Scenario(name="tiny").with_overrides(overrides)


def without_run_info(doc: dict) -> str:
    return canonical_json({k: v for k, v in doc.items() if k != "run_info"})


# -- the grid -----------------------------------------------------------------------------------------


def test_split_values_keeps_lists_and_tables_whole():
    assert split_values("5m,15m, 30m") == ["5m", "15m", "30m"]
    assert split_values('["1h","6h"],alipay') == ['["1h","6h"]', "alipay"]
    assert split_values('{dist="uniform",low="1s",high="2s"},3s') == ['{dist="uniform",low="1s",high="2s"}', "3s"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]


def test_parse_axis_reads_values_like_set():
    assert parse_axis("order_service.order_ttl=5m,15m") == ("order_service.order_ttl", ["5m", "15m"])
    assert parse_axis("load.arrival_rate=2,4.5") == ("load.arrival_rate", [2, 4.5])
    assert parse_axis("app.cashier_closes_at_expiry=true,false") == ("app.cashier_closes_at_expiry", [True, False])
    key, values = parse_axis('gateway.bank_query_schedule=["5s","1m"],alipay')
    assert values == [["5s", "1m"], "alipay"]
    for bad in ("order_service.order_ttl", "=5m", "order_service.order_ttl=5m,,15m"):
        with pytest.raises(ConfigError, match="--vary"):
            parse_axis(bad)
    with pytest.raises(ConfigError, match="given twice"):
        parse_axis("gateway.notify_loss=0.1,0.1")


def test_grid_is_the_product_of_vary_with_compare_innermost():
    grid = expand_grid({"a": [1, 2], "b": ["x", "y", "z"]}, {"c": ["p", "q"]})
    assert len(grid) == 2 * 3 * 2
    assert grid[0] == {"a": 1, "b": "x", "c": "p"}
    assert grid[1] == {"a": 1, "b": "x", "c": "q"}  # compared variants are neighbours
    assert grid[2] == {"a": 1, "b": "y", "c": "p"}
    assert grid[-1] == {"a": 2, "b": "z", "c": "q"}
    assert list(grid[0]) == ["a", "b", "c"]  # params keep the vary-then-compare key order


def test_plan_applies_params_and_keeps_the_seed():
    base = tiny()
    plan = plan_sweep(base, ["order_service.order_ttl=1m,2m", "load.arrival_rate=2,4"],
                      ["order_service.close_policy=naive,query_then_close"])
    assert len(plan.points) == 8 and len(plan.tasks()) == 16
    p = plan.points[3]
    assert p.params == {"order_service.order_ttl": "1m", "load.arrival_rate": 4,
                        "order_service.close_policy": "query_then_close"}
    assert p.scenario.order_service.order_ttl == 60.0 and p.scenario.load.arrival_rate == 4.0
    assert p.scenario.order_service.close_policy == "query_then_close"
    assert {q.scenario.run.seed for q in plan.points} == {base.run.seed}


@pytest.mark.parametrize("vary, compare, message", [
    (["order_service.order_tll=5m,15m"], [], "--vary order_service.order_tll: unknown key (did you mean 'order_ttl'?)"),
    (["order_servce.order_ttl=5m"], [], "--vary order_servce.order_ttl: unknown key 'order_servce' (did you mean 'order_service'?)"),
    (["order_service.order_ttl=5m,fifteen"], [], "--vary: order_service.order_ttl: expected a duration"),
    ([], ["order_service.close_policy=naive,query_first"], "--compare: order_service.close_policy: expected 'naive'"),
    (["gateway.notify_loss=0.1,1.5"], [], "--vary: gateway.notify_loss: expected a probability between 0 and 1, found 1.5"),
    (["load.arrival_rate=1,2"], ["load.arrival_rate=3"], "already swept"),
    ([], [], "nothing to sweep"),
])
def test_plan_rejects_mistakes_with_one_clear_message(vary, compare, message):
    with pytest.raises(ConfigError) as exc:
        plan_sweep(tiny(), vary, compare)
    assert message in str(exc.value)


def test_set_override_message_matches_a_vary_typo():
    """The same wording as a --set typo (and, key path and suggestion, as a bad scenario file)."""
    with pytest.raises(ConfigError) as via_set:
        tiny().with_overrides({"order_service.order_tll": "5m"})
    with pytest.raises(ConfigError) as via_vary:
        plan_sweep(tiny(), ["order_service.order_tll=5m"])
    assert str(via_vary.value) == str(via_set.value).replace("--set", "--vary")


def test_cli_typo_exits_2_before_any_run(tmp_path, monkeypatch, capsys):
    def never(*_a, **_k):
        raise AssertionError("a run started despite the typo")

    monkeypatch.setattr(sweep_mod, "execute", never)
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('description = "tiny"\n[run]\nhorizon = "2m"\nwarmup = "10s"\n')
    code = main(["sweep", str(scenario), "--vary", "order_service.order_ttl=5m,15m",
                 "--vary", "gateway.notfy_loss=0,0.2", "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: --vary gateway.notfy_loss: unknown key (did you mean 'notify_loss'?)" in err
    assert not (tmp_path / "out").exists()


# -- documents ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sweep")
    plan = plan_sweep(tiny(), ["order_service.order_ttl=1m,2m"], ["order_service.close_policy=naive,query_then_close"])
    doc = run_sweep(plan, out, jobs=1, progress=False, command=["test"])
    write_sweep(doc, out)
    return doc, out


def test_sweep_document_shape(small_sweep):
    doc, out = small_sweep
    assert set(doc) == {"schema_version", "kind", "scenario_name", "vary", "compare", "points", "run_info",
                        "anomalies_csv"}
    assert doc["kind"] == "sweep" and doc["schema_version"] == 2 and doc["scenario_name"] == "tiny"
    assert doc["vary"] == {"order_service.order_ttl": ["1m", "2m"]}
    assert doc["compare"] == {"order_service.close_policy": ["naive", "query_then_close"]}
    assert [p["params"] for p in doc["points"]] == [
        {"order_service.order_ttl": "1m", "order_service.close_policy": "naive"},
        {"order_service.order_ttl": "1m", "order_service.close_policy": "query_then_close"},
        {"order_service.order_ttl": "2m", "order_service.close_policy": "naive"},
        {"order_service.order_ttl": "2m", "order_service.close_policy": "query_then_close"},
    ]
    for p in doc["points"]:
        r = p["results"]
        assert r["kind"] == "sweep_point" and r["replications"] == 2 and "run_info" not in r
        assert set(r["anomalies"]) == set(ANOMALY_CLASSES)
        assert r["scenario"]["order_service"]["order_ttl"] == p["params"]["order_service.order_ttl"]
    assert doc["run_info"]["runs"] == 8 and doc["run_info"]["runs_reused"] == 0
    from reports.documents import check_document

    check_document(json.loads((out / SWEEP_FILE).read_text()), "sweep.json")


def test_compared_variants_share_random_numbers(small_sweep):
    """Same seed, same streams: every variant of a grid point sees the same orders per replication,
    and the mitigation (query before closing) removes what the naive close leaves."""
    doc, _ = small_sweep
    naive, query = doc["points"][0]["results"], doc["points"][1]["results"]
    assert naive["orders_per_replication"] == query["orders_per_replication"]
    assert naive["anomalies"]["paid_but_closed"]["count"] > 0
    assert query["anomalies"]["paid_but_closed"]["count"] == 0


def test_point_is_what_simulate_writes(small_sweep):
    """A point's results are simulate's document for the same scenario (kind and run_info aside)."""
    from sim.runner import simulate

    doc, _ = small_sweep
    point = doc["points"][1]
    scenario = tiny(order_service__order_ttl="1m", order_service__close_policy="query_then_close")
    sim_doc = simulate(scenario, progress=False)
    sim_doc.pop("run_info")
    sim_doc["kind"] = "sweep_point"
    assert canonical_json(sim_doc) == canonical_json(point["results"])


def test_csv_columns_and_rows(small_sweep):
    """Occurred and unresolved side by side, each with its orders, rate and 95% interval, for every class."""
    doc, out = small_sweep
    text = (out / CSV_FILE).read_text()
    assert text == sweep_csv(doc)
    rows = list(csv.DictReader(io.StringIO(text)))
    header = next(csv.reader(io.StringIO(text)))
    assert header == ["order_service.order_ttl", "order_service.close_policy", *CSV_COLUMNS]
    assert header[2:] == ["class", "observable",
                          "occurred_orders", "occurred_rate", "occurred_ci95_low", "occurred_ci95_high",
                          "unresolved_orders", "unresolved_rate", "unresolved_ci95_low", "unresolved_ci95_high",
                          "repaired_share", "repair_p50_s", "repair_p99_s", "held_at_end_cny_total",
                          "occurred_count", "unresolved_count", "orders"]
    assert len(rows) == len(doc["points"]) * len(ANOMALY_CLASSES)
    for point in doc["points"]:
        res = point["results"]
        for cls, a in res["anomalies"].items():
            row = next(r for r in rows if r["class"] == cls and r["order_service.order_ttl"] ==
                       point["params"]["order_service.order_ttl"] and
                       r["order_service.close_policy"] == point["params"]["order_service.close_policy"])
            for m in ("occurred", "unresolved"):
                assert int(row[f"{m}_orders"]) == a[f"{m}_orders"]
                assert float(row[f"{m}_rate"]) == pytest.approx(a[f"{m}_rate"], rel=1e-8, abs=1e-15)
                assert float(row[f"{m}_ci95_low"]) == pytest.approx(a[f"{m}_ci95"][0], rel=1e-8, abs=1e-15)
                assert float(row[f"{m}_ci95_high"]) == pytest.approx(a[f"{m}_ci95"][1], rel=1e-8)
                assert float(row[f"{m}_ci95_high"]) > 0  # a zero count has a positive upper bound
            assert int(row["occurred_count"]) == a["occurred_count"] and int(row["orders"]) == res["orders"]
            assert float(row["held_at_end_cny_total"]) == pytest.approx(a["amount_total"])
            assert row["observable"] == "true"
    naive = next(r for r in rows if r["class"] == "paid_but_closed" and r["order_service.close_policy"] == "naive"
                 and r["order_service.order_ttl"] == "1m")
    assert int(naive["occurred_orders"]) >= int(naive["unresolved_orders"]) > 0
    quiet = next(r for r in rows if r["class"] == "ledger_imbalance")
    assert quiet["repair_p50_s"] == "" and quiet["occurred_orders"] == "0"  # never occurred: no repair time


def test_anomalies_csv_lists_every_instance_of_every_point(small_sweep):
    """One anomalies.csv for the sweep: check's columns after point, the swept keys and replication;
    the open counted rows of each point and class add up to that point's unresolved count."""
    from sim.check import CSV_COLUMNS as INSTANCE_COLUMNS

    doc, out = small_sweep
    text = (out / "anomalies.csv").read_text()
    header = next(csv.reader(io.StringIO(text)))
    assert header == ["point", "order_service.order_ttl", "order_service.close_policy", "replication",
                      *INSTANCE_COLUMNS]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert doc["anomalies_csv"] == {"file": "anomalies.csv", "rows": len(rows)} and rows
    assert [int(r["point"]) for r in rows] == sorted(int(r["point"]) for r in rows)  # in point order
    for i, point in enumerate(doc["points"]):
        mine = [r for r in rows if r["point"] == str(i)]
        assert all(r["order_service.close_policy"] == point["params"]["order_service.close_policy"] for r in mine)
        assert {r["replication"] for r in mine} <= {"0", "1"}
        for cls, a in point["results"]["anomalies"].items():
            counted = [r for r in mine if r["class"] == cls and r["counted"] == "yes"]
            assert sum(r["status"] == "open" for r in counted) == a["unresolved_count"], (i, cls)
            assert sum(r["status"] == "repaired" for r in counted) == a["repaired_count"], (i, cls)


# -- interruption and resume ----------------------------------------------------------------------------


def test_resume_after_interrupt_gives_identical_bytes(tmp_path, monkeypatch):
    plan = plan_sweep(tiny(), ["gateway.notify_loss=0.1,0.3"], ["order_service.close_policy=naive,query_then_close"])
    whole = run_sweep(plan, tmp_path / "whole", jobs=1, progress=False)
    write_sweep(whole, tmp_path / "whole")

    real_execute = sweep_mod.execute

    def interrupted_after(n):
        def fake(tasks, jobs=1, dask=None):
            for k, item in enumerate(real_execute(tasks, jobs, dask)):
                if k == n:
                    raise KeyboardInterrupt
                yield item
        return fake

    out = tmp_path / "resumed"
    monkeypatch.setattr(sweep_mod, "execute", interrupted_after(3))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, out, jobs=1, progress=False)
    assert len(list((out / PARTIAL_DIR).glob("*.pkl"))) == 3
    assert not (out / SWEEP_FILE).exists()

    ran: list[int] = []

    def counting(tasks, jobs=1, dask=None):
        ran.append(len(tasks))
        yield from real_execute(tasks, jobs, dask)

    monkeypatch.setattr(sweep_mod, "execute", counting)
    resumed = run_sweep(plan, out, jobs=1, progress=False, resume=True)
    write_sweep(resumed, out)
    assert ran == [len(plan.tasks()) - 3]  # only the rest ran
    assert resumed["run_info"]["runs_reused"] == 3
    assert without_run_info(resumed) == without_run_info(whole)
    assert (out / CSV_FILE).read_bytes() == (tmp_path / "whole" / CSV_FILE).read_bytes()
    assert (out / "anomalies.csv").read_bytes() == (tmp_path / "whole" / "anomalies.csv").read_bytes()


def test_without_resume_stale_partials_are_discarded(tmp_path):
    plan = plan_sweep(tiny(run__replications=1), ["order_service.order_ttl=1m,2m"])
    out = tmp_path / "out"
    store = sweep_mod.PartialStore(out)
    key = sweep_mod.task_key(plan.points[0].scenario, 0)
    store.save(key, "not a result")  # would break the document if it were reused
    doc = run_sweep(plan, out, jobs=1, progress=False)
    assert doc["run_info"]["runs_reused"] == 0


def test_cli_interrupt_then_resume(tmp_path, monkeypatch, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('description = "tiny"\n[run]\nhorizon = "2m"\nwarmup = "10s"\ndrain = "10m"\n'
                        'replications = 2\n[load]\narrival_rate = 2.0\n')
    argv = ["sweep", str(scenario), "--vary", "order_service.order_ttl=1m,2m", "--out", str(tmp_path / "o"),
            "-q", "--jobs", "1"]
    real_execute = sweep_mod.execute

    def stop_after_two(tasks, jobs=1, dask=None):
        for k, item in enumerate(real_execute(tasks, jobs, dask)):
            if k == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(sweep_mod, "execute", stop_after_two)
    assert main(argv) == 130
    assert "2 finished runs kept" in capsys.readouterr().err
    monkeypatch.setattr(sweep_mod, "execute", real_execute)
    assert main(argv + ["--resume"]) == 0
    doc = json.loads((tmp_path / "o" / SWEEP_FILE).read_text())
    assert doc["run_info"]["runs_reused"] == 2 and doc["run_info"]["runs"] == 4
    assert not list((tmp_path / "o" / PARTIAL_DIR).glob("*.pkl"))


# -- beyond one machine -------------------------------------------------------------------------------


def test_local_pool_equals_in_process(tmp_path):
    plan = plan_sweep(tiny(), ["gateway.notify_loss=0.1,0.3"])
    one = run_sweep(plan, tmp_path / "a", jobs=1, progress=False)
    two = run_sweep(plan, tmp_path / "b", jobs=2, progress=False)
    assert without_run_info(one) == without_run_info(two)
    assert (tmp_path / "a" / "anomalies.csv").read_bytes() == (tmp_path / "b" / "anomalies.csv").read_bytes()


def test_dask_local_cluster_equals_local_pool(tmp_path):
    distributed = pytest.importorskip("distributed")
    plan = plan_sweep(tiny(), ["gateway.notify_loss=0.1,0.3"], ["order_service.close_policy=naive,query_then_close"])
    local = run_sweep(plan, tmp_path / "local", jobs=2, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        remote = run_sweep(plan, tmp_path / "dask", dask=cluster.scheduler_address, progress=False)
    assert remote["run_info"]["dask"] == cluster.scheduler_address
    assert without_run_info(remote) == without_run_info(local)
    write_sweep(local, tmp_path / "local")
    write_sweep(remote, tmp_path / "dask")
    assert (tmp_path / "local" / CSV_FILE).read_bytes() == (tmp_path / "dask" / CSV_FILE).read_bytes()


def test_cli_sweep_end_to_end(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text('description = "tiny"\n[run]\nhorizon = "2m"\nwarmup = "10s"\ndrain = "10m"\n'
                        '[load]\narrival_rate = 2.0\n[gateway]\nnotify_loss = 0.3\n')
    out = tmp_path / "out"
    code = main(["sweep", str(scenario), "--vary", "order_service.order_ttl=1m,2m",
                 "--compare", "order_service.close_policy=naive,close_trade_then_order",
                 "-n", "1", "--jobs", "2", "-q", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / SWEEP_FILE).read_text())
    assert len(doc["points"]) == 4 and doc["points"][0]["results"]["replications"] == 1
    assert doc["run_info"]["command"][0] == "checkout-chaos"
    assert not list((out / PARTIAL_DIR).glob("*.pkl"))  # cleaned up once the documents are written
    assert (out / CSV_FILE).exists()
    assert "anomaly rates per point" in capsys.readouterr().out
