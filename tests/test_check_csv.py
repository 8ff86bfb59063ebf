"""anomalies.csv: one row per instance, the list of orders an engineer hands to operations."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from test_check import Order

from sim.check import CSV_COLUMNS, AnomalyCsv, CheckConfig, Checker, check_events, read_history, write_anomalies_csv
from sim.examples import EXAMPLE_HISTORY
from sim.vocabulary import ANOMALY_CLASSES


def rows_of(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _agrees(summary, rows: list[dict[str, str]]) -> None:
    """Counted open rows are the class's count, counted repaired rows its repaired, per class."""
    for cls in ANOMALY_CLASSES:
        mine = [r for r in rows if r["class"] == cls and r["counted"] == "yes"]
        stats = summary.per_class[cls]
        assert sum(r["status"] == "open" for r in mine) == stats.count, cls
        assert sum(r["status"] == "repaired" for r in mine) == stats.repaired, cls
        assert round(sum(float(r["amount_cny"]) for r in mine if r["status"] == "open") * 100) == stats.amount_fen


def test_example_rows_match_the_summary(tmp_path):
    s = check_events(read_history(EXAMPLE_HISTORY))
    path = write_anomalies_csv(tmp_path, [s])
    rows = rows_of(path)
    assert list(rows[0]) == list(CSV_COLUMNS)
    _agrees(s, rows)
    assert len(rows) == len(s.instances) == 7
    pbc = {r["status"]: r for r in rows if r["class"] == "paid_but_closed"}
    assert pbc["open"]["until_s"] == "" and pbc["open"]["window_s"] == "" and pbc["open"]["repaired_by"] == ""
    assert "ledger.txn refund" in pbc["repaired"]["repaired_by"].split("; ")
    assert float(pbc["repaired"]["window_s"]) == float(pbc["repaired"]["until_s"]) - float(pbc["repaired"]["from_s"])
    assert all(r["user"] and r["order"] for r in rows)
    cwo = next(r for r in rows if r["class"] == "charge_without_order")
    assert cwo["user"] and cwo["trades"]  # taken from the ledger: who paid, on which trade


def test_streaming_gives_the_same_rows_and_keeps_none():
    """A sink receives every instance as the summary would keep them; the summary then holds none."""
    events = list(read_history(EXAMPLE_HISTORY))
    kept = check_events(events).instances
    got = []
    checker = Checker(on_instance=got.append)
    for e in events:
        checker.feed(e)
    s = checker.finish()
    assert s.instances is None
    assert sorted(got, key=repr) == sorted(kept, key=repr)


def test_streaming_holds_no_rows_while_orders_end():
    """Orders that end as they go: rows go straight to the sink, the checker keeps none of them."""
    got = []
    checker = Checker(CheckConfig(end=1e6, examples=False), on_instance=got.append)
    for i in range(3000):
        o = Order(f"o{i}").created(t=float(i)).charge(i + 1.0, f"T{i}").add(i + 1800.0, "order.closed", reason="ttl")
        o.add(i + 1800.0, "order.end")
        for e in o.events:
            checker.feed(e)
        assert len(checker._pending) == 0 and checker._rows is None
    s = checker.finish()
    assert len(got) == 3000 == s.per_class["paid_but_closed"].count


def test_open_rows_that_may_start_after_the_end_wait_for_it():
    """Without a known end, a deadline-started open instance is held until the end is known."""
    o = Order().created(expires_at=100.0)  # stuck at 100 + 3600 if nothing happens
    got = []
    checker = Checker(on_instance=got.append)
    for e in o.events + [{"t": 50.0, "type": "run.end"}]:
        checker.feed(e)
    s = checker.finish()
    assert got == [] and s.per_class["stuck_pending"].count == 0  # 3700 s is after the end (50 s)


def test_replication_column_and_order_of_rows(tmp_path):
    s1 = check_events(read_history(EXAMPLE_HISTORY))
    s2 = check_events(read_history(EXAMPLE_HISTORY), CheckConfig(warmup=100.0))
    rows = rows_of(write_anomalies_csv(tmp_path, [s1, s2]))
    assert list(rows[0])[0] == "replication"
    assert [r["replication"] for r in rows] == ["0"] * 7 + ["1"] * 7
    assert sum(r["counted"] == "no" for r in rows if r["replication"] == "1") > 0


def test_nothing_kept_writes_nothing(tmp_path):
    s = check_events(read_history(EXAMPLE_HISTORY), CheckConfig(instances=False))
    assert s.instances is None and write_anomalies_csv(tmp_path, [s]) is None
    assert not (tmp_path / "anomalies.csv").exists()


def test_cells_a_spreadsheet_would_run_are_quoted(tmp_path):
    o = Order("=HYPERLINK(\"x\")", user="+1").created().charge(10).add(1800, "order.closed", reason="ttl")
    s = check_events(o.events, CheckConfig(end=5000))
    row = rows_of(write_anomalies_csv(tmp_path, [s]))[0]
    assert row["order"] == "'=HYPERLINK(\"x\")" and row["user"] == "'+1"


def test_commit_is_all_or_nothing(tmp_path):
    """Rows are spooled; the file appears only at commit, complete."""
    w = AnomalyCsv()
    s = check_events(read_history(EXAMPLE_HISTORY))
    for inst in s.instances:
        w.add(inst)
    out = tmp_path / "new" / "dir"
    assert not out.exists()
    path = w.commit(out)
    text = path.read_text()
    assert len(list(csv.reader(io.StringIO(text)))) == 1 + len(s.instances)
    assert [p.name for p in out.iterdir()] == ["anomalies.csv"]


def test_rows_are_deterministic():
    events = [json.loads(ln) for ln in EXAMPLE_HISTORY.read_text().splitlines()]
    assert check_events(events).instances == check_events(events).instances


def test_simulate_writes_anomalies_csv_beside_results(tmp_path):
    """A simulation's results directory gets the same list, a replication column first."""
    from sim.cli import main
    from sim.results import load_results

    out = tmp_path / "sim"
    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "litemall_pattern.toml"
    assert main(["simulate", str(scenario), "--set", "run.horizon=4m", "--set", "run.warmup=1m",
                 "--set", "run.drain=1h", "-n", "2", "--jobs", "1", "--quiet", "--out", str(out)]) == 0
    doc = load_results(out / "results.json")
    rows = rows_of(out / "anomalies.csv")
    assert rows and {r["replication"] for r in rows} <= {"0", "1"}
    for cls, a in doc["anomalies"].items():
        mine = [r for r in rows if r["class"] == cls and r["counted"] == "yes"]
        assert (sum(r["status"] == "open" for r in mine), sum(r["status"] == "repaired" for r in mine)) == \
            (a["count"], a["repaired"]), cls
