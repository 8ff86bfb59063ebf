"""``checkout-chaos check``: table, JSON, results.json, flags, scenarios and clear errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cli import main
from sim.examples import EXAMPLE_HISTORY
from sim.results import load_results
from sim.scenario import ANOMALY_CLASSES

SCRIPT = Path(sys.executable).with_name("checkout-chaos")


def test_check_example_prints_table_and_writes_results(tmp_path, capsys):
    """The example history: a row per class on stdout and a results.json of kind 'check'."""
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for cls in ANOMALY_CLASSES:
        assert cls in out
    assert "¥299.00" in out and f"wrote {tmp_path / 'results.json'}" in out
    doc = load_results(tmp_path / "results.json")
    assert doc["kind"] == "check" and doc["orders"] == 8 and doc["replications"] == 1
    assert doc["anomalies"]["paid_but_closed"]["count"] == 1
    history = doc["history"]
    assert {k: history[k] for k in ("files", "events", "late_events", "unattributed_events")} == {
        "files": ["example_history.jsonl"], "events": 125, "late_events": 0, "unattributed_events": 0}
    assert (history["refused_lines"], history["duplicate_events"], history["unknown_types"]) == (0, 0, {})
    assert history["not_observable"] == [] and history["money_from"] == "ledger"
    assert history["anomalies_csv"]["rows"] == 7 and (tmp_path / "anomalies.csv").is_file()
    assert doc["run_info"]["command"][:2] == ["checkout-chaos", "check"]


def test_check_json_prints_the_document(tmp_path, capsys):
    """--json prints the results JSON (what was written) instead of the table."""
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == json.loads((tmp_path / "results.json").read_text())
    assert "wrote" in captured.err


def test_console_script(tmp_path):
    """The installed console script runs the check end to end."""
    proc = subprocess.run([str(SCRIPT), "check", str(EXAMPLE_HISTORY), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "paid_but_closed" in proc.stdout and (tmp_path / "results.json").is_file()


def test_malformed_history_exits_2_naming_file_and_line(tmp_path):
    """A bad line: exit 2, one message with the file and line, no traceback."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t": 0, "type": "run.start"}\n{"t": "soon", "type": "order.created", "order": "o"}\n')
    proc = subprocess.run([str(SCRIPT), "check", str(bad), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{bad}:2:" in proc.stderr and "'t'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_history_exits_2(tmp_path, capsys):
    """A missing file is a usage error."""
    assert main(["check", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 2
    assert "no such history file" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--warmup", "--horizon", "--stuck-grace", "--bnpl-finish-limit", "--bucket"])
def test_bad_duration_names_the_flag(tmp_path, capsys, flag):
    """A duration without a unit: exit 2 and the flag in the message."""
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), flag, "15"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {flag}:")


def test_zero_bucket_is_refused(tmp_path, capsys):
    """--bucket 0 would make an endless timeline."""
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), "--bucket", "0"]) == 2
    assert "--bucket" in capsys.readouterr().err


def test_flags_set_the_measurement_window(tmp_path):
    """--warmup/--horizon decide which orders count; --bucket sets the timeline bucket."""
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), "--warmup", "100s", "--horizon", "10m",
                 "--bucket", "1h"]) == 0
    doc = load_results(tmp_path / "results.json")
    assert (doc["warmup_s"], doc["horizon_s"]) == (100.0, 600.0)
    assert doc["orders"] == 4  # created at 120, 300, 400, 500
    assert doc["timeline"]["bucket_s"] == 3600.0 and len(doc["timeline"]["t"]) == 27


def test_scenario_supplies_window_and_is_echoed(tmp_path, capsys):
    """--scenario: warmup/horizon/grace/limit from the scenario, echoed in the results; flags still win."""
    scen = tmp_path / "tight.toml"
    scen.write_text('[run]\nwarmup = "1m"\nhorizon = "30m"\n\n[order_service]\nstuck_grace = "10m"\n')
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), "--scenario", str(scen)]) == 0
    doc = load_results(tmp_path / "results.json")
    assert doc["scenario_name"] == "tight" and doc["scenario"]["run"]["warmup"] == "1m"
    assert (doc["warmup_s"], doc["horizon_s"], doc["orders"]) == (60.0, 1800.0, 7)
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), "--scenario", str(scen), "--warmup", "0"]) == 0
    assert load_results(tmp_path / "results.json")["orders"] == 8


def test_bad_scenario_exits_2(tmp_path, capsys):
    """A broken scenario file is reported like every other scenario error."""
    scen = tmp_path / "broken.toml"
    scen.write_text('[run]\nwarmpu = "1m"\n')
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path), "--scenario", str(scen)]) == 2
    assert "warmpu" in capsys.readouterr().err


def test_several_histories_are_one_stream(tmp_path):
    """Client and service histories given separately (one gzipped) give the same anomalies as one file."""
    lines = EXAMPLE_HISTORY.read_text().splitlines()
    client = [ln for ln in lines if json.loads(ln)["actor"] in ("app", "user")]
    services = [ln for ln in lines if json.loads(ln)["actor"] not in ("app", "user")]
    (tmp_path / "client.jsonl").write_text("\n".join(client) + "\n")
    with gzip.open(tmp_path / "services.jsonl.gz", "wt") as fh:
        fh.write("\n".join(services) + "\n")
    assert main(["check", str(tmp_path / "client.jsonl"), str(tmp_path / "services.jsonl.gz"),
                 "--out", str(tmp_path / "split")]) == 0
    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path / "one")]) == 0
    split, one = load_results(tmp_path / "split/results.json"), load_results(tmp_path / "one/results.json")
    assert split["anomalies"] == one["anomalies"] and split["end_states"] == one["end_states"]


def test_command_module_imports_stay_light():
    """Importing the command does not pull in matplotlib, locust or the checker itself."""
    code = ("import sys, sim.commands.check; "
            "print(any(m in sys.modules for m in ('matplotlib', 'locust', 'scipy', 'sim.check')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# issue 14: inputs that used to break or mislead the command


NASTY = [
    '{"t": 0, "type": "order.created", "order": "o1", "user": "u1", "amount": 9223372036854775808}',
    '{"t": 1, "type": "order.created", "order": "o2", "amount": 1e30}',
    '{"t": 2, "type": "order.created", "order": "o3", "amount": NaN}',
    '{"t": 3, "type": "order.paid", "order": ["o4"]}',
    '{"t": 4, "type": "trade.created", "order": "o5", "trade": ["T"]}',
    '{"t": 5, "type": "app.shown", "order": "o6", "screen": ["payment_failed"]}',
]


def test_values_that_used_to_crash_are_refused_per_line(tmp_path):
    """The six inputs of the issue: exit 0, each line named, no traceback; --strict exits 2 writing nothing."""
    bad = tmp_path / "nasty.jsonl"
    good = EXAMPLE_HISTORY.read_text().splitlines()
    bad.write_text("\n".join(good[:40] + NASTY + good[40:]) + "\n")
    proc = subprocess.run([str(SCRIPT), "check", str(bad), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"refused {len(NASTY)} line(s)" in proc.stdout
    for k, name in enumerate(["amount", "amount", "amount", "order", "trade", "screen"]):
        assert f"{bad}:{41 + k}: field '{name}' must be" in proc.stdout
    doc = load_results(tmp_path / "out" / "results.json")
    assert doc["history"]["refused_lines"] == len(NASTY) and doc["history"]["problems"]["count"] == len(NASTY)
    assert doc["history"]["problems"]["first"][0]["field"] == "amount"
    strict = subprocess.run([str(SCRIPT), "check", str(bad), "--out", str(tmp_path / "strict"), "--strict"],
                            capture_output=True, text=True, timeout=60)
    assert strict.returncode == 2 and "--strict" in strict.stderr and f"{bad}:41:" in strict.stderr
    assert "Traceback" not in strict.stderr and not (tmp_path / "strict").exists()


def test_an_empty_history_is_an_error_not_zero_orders(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["check", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "no events" in capsys.readouterr().err and not (tmp_path / "out").exists()
    markers = tmp_path / "markers.jsonl"
    markers.write_text('{"t": 0, "type": "run.start"}\n{"t": 9, "type": "run.end"}\n')
    assert main(["check", str(markers), "--out", str(tmp_path / "out")]) == 2
    assert "no order events" in capsys.readouterr().err


def test_a_csv_history_is_told_to_be_json_lines(tmp_path, capsys):
    p = tmp_path / "history.csv"
    p.write_text("t,type,order\n0,order.created,o1\n")
    assert main(["check", str(p), "--out", str(tmp_path / "out")]) == 2
    assert "this looks like CSV; expected JSON Lines" in capsys.readouterr().err


def test_unknown_event_types_are_named_with_a_suggestion(tmp_path, capsys):
    """Renaming trade.succeeded to trade.success no longer passes silently."""
    p = tmp_path / "typo.jsonl"
    p.write_text(EXAMPLE_HISTORY.read_text().replace('"trade.succeeded"', '"trade.success"'))
    assert main(["check", str(p), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "unknown event types, ignored: trade.success ×" in out and "(did you mean trade.succeeded?)" in out
    doc = load_results(tmp_path / "out" / "results.json")
    assert doc["history"]["unknown_types"]["trade.success"]["did_you_mean"] == "trade.succeeded"
    assert main(["check", str(p), "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert not (tmp_path / "strict").exists()


def test_anomalies_csv_lists_every_instance(tmp_path):
    """anomalies.csv beside results.json: a row per instance, counted rows adding up to the table."""
    import csv

    assert main(["check", str(EXAMPLE_HISTORY), "--out", str(tmp_path)]) == 0
    with open(tmp_path / "anomalies.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    doc = load_results(tmp_path / "results.json")
    for cls, a in doc["anomalies"].items():
        mine = [r for r in rows if r["class"] == cls and r["counted"] == "yes"]
        assert (sum(r["status"] == "open" for r in mine), sum(r["status"] == "repaired" for r in mine)) == \
            (a["count"], a["repaired"])
    assert {r["order"] for r in rows if r["class"] == "paid_but_closed"} == {"o-1002", "o-1003"}


def test_merged_histories_in_any_order_write_the_same_files(tmp_path):
    lines = EXAMPLE_HISTORY.read_text().splitlines()
    (tmp_path / "a.jsonl").write_text("\n".join(ln for ln in lines if json.loads(ln)["actor"] in ("app", "user")) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(ln for ln in lines if json.loads(ln)["actor"] not in ("app", "user")) + "\n")
    outs = []
    for k, names in enumerate((["a.jsonl", "b.jsonl"], ["b.jsonl", "a.jsonl"])):
        assert main(["check", *(str(tmp_path / n) for n in names), "--out", str(tmp_path / f"o{k}")]) == 0
        doc = load_results(tmp_path / f"o{k}" / "results.json")
        outs.append((doc["anomalies"], doc["end_states"], (tmp_path / f"o{k}" / "anomalies.csv").read_bytes()))
    assert outs[0] == outs[1]
