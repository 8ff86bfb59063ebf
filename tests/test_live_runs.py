"""Live runs end to end on loopback: services, Locust, the checker, thresholds, workers, a target.

Each test is one bounded run of ``checkout-chaos load`` (about 15 s of wall time) of the compressed
mall scenario in ``tests/fixtures/live_mall.toml``: naive close at a 2-minute order TTL, late
notifications acknowledged and ignored, at time scale 60. The command runs in this process (it never
imports Locust: Locust and the services run in their own processes).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from sim.cli import main
from sim.scenario import load_scenario

FIXTURE = Path(__file__).parent / "fixtures" / "live_mall.toml"
REFERENCE_ADAPTER = Path(__file__).parents[1] / "loadtests" / "adapters" / "reference.toml"

pytestmark = pytest.mark.slow


def _load(tmp_path: Path, *extra: str) -> tuple[int, dict, Path]:
    out = tmp_path / "run"
    rc = main(["load", str(FIXTURE), "--out", str(out), "-q", *extra])
    return rc, json.loads((out / "results.json").read_text()), out


def _why(doc: dict) -> str:
    """What a run that is not valid says about itself (on a machine too busy to keep up, exit 3 is right)."""
    v = doc.get("validity") or {}
    return f"valid={doc.get('valid')}: {v.get('reasons')}"


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_mall_pattern_live_finds_paid_but_closed_and_fails_its_threshold(tmp_path, capsys):
    """Naive close + late notify ignored: the checker finds paid-but-closed orders in the live history,
    the story of each is the mall story (paid, shown success, closed, notification after the close), and
    the scenario's threshold ``paid_but_closed.count <= 0`` makes the command exit 1."""
    rc, doc, out = _load(tmp_path)
    assert rc == 1, _why(doc)
    assert "FAIL paid_but_closed.count <= 0" in capsys.readouterr().err
    assert doc["kind"] == "live" and doc["replications"] == 1
    pbc = doc["anomalies"]["paid_but_closed"]
    assert pbc["count"] >= 3, pbc
    assert doc["anomalies"]["success_shown_then_closed"]["count"] >= 1
    assert doc["end_states"]["paid_closed_unrefunded"] == pbc["count"]
    example = doc["examples"]["paid_but_closed"][0]["events"]
    types = [e["type"] for e in example]
    assert "client.invoke" in types and "app.shown" in types  # what the buyer did and saw
    assert types.index("ledger.txn") < types.index("order.closed") < types.index("notify.received")
    live = doc["live"]
    assert live["planned_arrivals"] == live["started"] > 0
    assert live["harness_errors"] == 0
    assert live["locust"]["requests"], "Locust's request statistics are in the results"
    assert {r["name"] for r in live["locust"]["requests"]} >= {"create order", "start payment"}
    assert live["thresholds"] == [{"rule": "paid_but_closed.count <= 0", "observed": pbc["count"], "holds": False}]
    history = _events(out / "history.jsonl")
    assert history[0]["type"] == "run.start" and history[-1]["type"] == "run.end"
    assert all(0 <= e["t"] <= doc["end_s"] for e in history)
    # the list of affected orders, beside results.json: the open counted rows are the table's count
    import csv

    with open(out / "anomalies.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert live["anomalies_csv"] == {"file": "anomalies.csv", "rows": len(rows)}
    for cls, a in doc["anomalies"].items():
        counted = [r for r in rows if r["class"] == cls and r["counted"] == "yes"]
        assert sum(r["status"] == "open" for r in counted) == a["unresolved_count"], cls
        assert sum(r["status"] == "repaired" for r in counted) == a["repaired_count"], cls
    assert {r["order"] for r in rows if r["class"] == "paid_but_closed" and r["status"] == "open"} >= \
        {e["order"] for e in doc["examples"]["paid_but_closed"] if not e["resolved"]}
    # what the live history held: the reference checkout's, the provider's and the buyers' events
    obs = doc["observable"]
    assert obs["sources"] == {"ledger": True, "gateway": True, "checkout": True, "screens": True, "bnpl": True}
    assert all(how in ("seen", "no BNPL orders") for how in obs["how"].values())
    assert obs["not_observable"] == [] and obs["money_from"] == "ledger"


def _paid_but_closed(history: list[dict]) -> dict[str, dict]:
    """Orders that ended closed with the buyer's money held (the checker's paid_but_closed rule), each with
    the trades charged and the provider's answers to closing them."""
    orders: dict[str, dict] = {}
    for e in history:
        o = orders.setdefault(e.get("order"), {"closed": False, "net": Counter(), "close_answers": set()})
        if e["type"] == "order.closed":
            o["closed"] = True
        elif e["type"] in ("order.paid", "order.reopened"):
            o["closed"] = False
        elif e["type"] == "ledger.txn" and e.get("kind") in ("charge", "refund"):
            o["net"][e["trade"]] -= sum(p["amount"] for p in e["postings"] if p["account"].startswith("user:"))
        elif e["type"] in ("trade.closed", "trade.close_refused"):
            o["close_answers"].add(e["trade"])
    return {k: o for k, o in orders.items() if o["closed"] and sum(v for v in o["net"].values() if v > 0) > 0}


def test_close_trade_then_order_removes_them_with_two_workers(tmp_path):
    """The same buyers with close_trade_then_order: the close job closes the gateway trade first and keeps
    the order when the trade is paid, so no order the mall way ends paid and closed. Played by a Locust
    master and two local workers, the merged history holds every buyer's events, each exactly once.

    (A race the live run once exposed — the close job asking the provider to close a trade that
    start-payment had recorded but not yet created there — is closed by a per-order lock in the
    reference checkout; this test would find it again.)
    """
    rc, doc, out = _load(tmp_path, "--workers", "2", "--set", "order_service.close_policy=close_trade_then_order")
    history = _events(out / "history.jsonl")
    pbc = _paid_but_closed(history)
    assert doc["anomalies"]["paid_but_closed"]["count"] == len(pbc) == 0, sorted(pbc)
    assert rc == 0, _why(doc)
    live = doc["live"]
    assert live["workers"] == 2 and live["harness_errors"] == 0
    planned = live["planned_arrivals"]
    files = sorted((out / "client").glob("client-*.jsonl"))
    assert [f.name for f in files] == ["client-0.jsonl", "client-1.jsonl"]
    per_file = [_events(f) for f in files]
    orders = [{e["order"] for e in evs} for evs in per_file]
    assert all(orders) and not orders[0] & orders[1], "each buyer is played by one worker"
    run_id = next(iter(orders[0])).rsplit("-", 1)[0]
    assert orders[0] | orders[1] == {f"{run_id}-{i}" for i in range(planned)}, "no buyer is missing"
    merged = [e for e in history if e["actor"] in ("client", "app", "user")]
    client_lines = [json.dumps(e, sort_keys=True) for evs in per_file for e in evs]
    merged_lines = [json.dumps(e, sort_keys=True) for e in merged]
    assert Counter(merged_lines) == Counter(client_lines), "every client event once in the merged history"
    assert max(Counter(merged_lines).values()) == 1
    calls = Counter((e["call"], e["type"]) for e in merged if e["type"].startswith("client."))
    assert max(calls.values()) == 1
    assert live["history"]["duplicate_client_events"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_target_checkout_through_the_reference_adapter(tmp_path, capsys):
    """A checkout started on its own, pointed at the harness's mock provider, driven through an adapter
    file: the anomaly is found from the client histories, the provider's ledger and the order states
    read through the adapter."""
    scenario = load_scenario(FIXTURE)
    provider_port = _free_port()
    secret = secrets.token_hex(16)
    data = tmp_path / "staging"
    data.mkdir()
    (data / "scenario.json").write_text(json.dumps(scenario.resolved()))
    env = {**os.environ, "CHECKOUT_CHAOS_NOTIFY_SECRET": secret, "CHECKOUT_CHAOS_ADMIN_TOKEN": "staging"}
    argv = [sys.executable, "-m", "loadtests.service.checkout", "--scenario-json", str(data / "scenario.json"),
            "--data", str(data), "--host", "127.0.0.1", "--port", "0", "--port-file", str(data / "port"),
            "--start-epoch", repr(time.time()), "--time-scale", "60",
            "--provider-url", f"http://127.0.0.1:{provider_port}"]
    with open(data / "checkout.log", "wb") as log:
        staging = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (data / "port").exists():
            assert staging.poll() is None and time.monotonic() < deadline, (data / "checkout.log").read_text()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{int((data / 'port').read_text())}"
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rc, doc, out = _load(tmp_path, "--target", url, "--target-config", str(REFERENCE_ADAPTER),
                             "--provider-port", str(provider_port), "--notify-secret", secret)
    finally:
        staging.terminate()
        staging.wait(timeout=10)
    assert rc == 1, _why(doc)  # the staging checkout has the mall close pattern: the threshold fails
    live = doc["live"]
    assert live["target"] == url and live["adapter"] == "reference"
    assert doc["anomalies"]["paid_but_closed"]["count"] >= 1
    history = _events(out / "history.jsonl")
    created = [e for e in history if e["type"] == "order.created"]
    assert created and all(e.get("observed_by") == "client" for e in created)  # the target's own history is not read
    assert any(e["type"] == "ledger.txn" for e in history)  # the provider's ledger is
    # the order pages, sampled during the run and read after the drain (order.observed)
    assert any(e.get("observed_by") == "adapter" and e["type"] == "order.observed" and e["state"] == "closed"
               for e in history)
    assert any(e["type"] == "order.observed" and e.get("final") for e in history)


def test_an_overloaded_run_is_not_valid_and_exits_3(tmp_path, capsys, monkeypatch):
    """2,400 arrivals per wall second (40/s at time scale 60) for 3 s, several times what one Locust process
    can send on this machine (a few hundred flows/s: docs/performance.md; at 720/s a faster generator kept
    up and only the services' transport errors failed the run):
    the run warns before it starts, misses its health limits, writes valid: false with the reasons, prints
    the banner with what to lower and exits 3 — not 0 with "0 anomalies"."""
    monkeypatch.setenv("CHECKOUT_CHAOS_CAPACITY", "200")  # whatever this machine's stored figure says
    rc, doc, out = _load(tmp_path, "--set", "load.arrival_rate=40", "--run-time", "3s", "--drain", "4s")
    err = capsys.readouterr().err
    assert rc == 3
    assert doc["valid"] is False
    failed = {c["check"] for c in doc["validity"]["checks"] if not c["holds"]}
    assert "achieved_ratio" in failed, doc["validity"]
    assert doc["live"]["achieved_arrival_ratio"] < 0.95
    assert len(doc["validity"]["reasons"]) == len(failed) and any("live.min_achieved_ratio" in r
                                                                    for r in doc["validity"]["reasons"])
    assert "THIS RUN IS NOT VALID" in err and "--time-scale" in err and "load.arrival_rate" in err
    assert "2,400 arrivals per wall second" in err  # the preflight warned before the run
    assert doc["live"]["preflight"]["planned_peak_rate_wall_per_s"] == 2400.0


def test_a_healthy_run_is_valid_and_exits_0(tmp_path, capsys):
    """The compressed mall story at its own (gentle) rate with the safe close: valid, thresholds hold, exit 0."""
    rc, doc, out = _load(tmp_path, "--set", "order_service.close_policy=close_trade_then_order")
    assert doc["valid"] is True and doc["validity"]["reasons"] == [], doc["validity"]
    assert all(c["holds"] for c in doc["validity"]["checks"])
    assert doc["validity"]["warnings"] == []
    assert rc == 0, _why(doc)
    assert "NOT VALID" not in capsys.readouterr().err


def test_workers_started_on_their_own_join_a_master(tmp_path):
    """`load --master --expect-workers 2` and two `checkout-chaos load-worker --master-host 127.0.0.1` processes
    started separately, as on two load machines: the workers get the plan, the go and send their histories
    back over Locust's message channel only — they run in a directory of their own with no plan file and no
    path into the run's directory — and every buyer is played exactly once."""
    port = _free_port()
    elsewhere = tmp_path / "load-machine"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHECKOUT_CHAOS_")}
    workers = []
    try:
        for i in range(2):
            with open(elsewhere / f"worker-{i}.log", "wb") as log:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "sim.cli", "load-worker", "--master-host", "127.0.0.1", "--master-port",
                     str(port)], cwd=elsewhere, env={**env, "PYTHONPATH": str(Path(__file__).parents[1])},
                    stdout=log, stderr=subprocess.STDOUT))
        rc, doc, out = _load(tmp_path, "--master", "--expect-workers", "2", "--master-port", str(port),
                             "--worker-timeout", "60s", "--set", "order_service.close_policy=close_trade_then_order")
        codes = [w.wait(timeout=30) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert codes == [0, 0], [(elsewhere / f"worker-{i}.log").read_text()[-2000:] for i in range(2)]
    assert rc == 0 and doc["valid"] is True, _why(doc)
    live = doc["live"]
    assert live["workers"] == 2 and live["harness_errors"] == 0
    done = [json.loads((out / "client" / f"done-{i}.json").read_text()) for i in range(2)]
    assert len({d["pid"] for d in done}) == 2 and {d["slot"] for d in done} == {0, 1}
    per_file = [_events(out / "client" / f"client-{i}.jsonl") for i in range(2)]
    orders = [{e["order"] for e in evs} for evs in per_file]
    assert all(orders) and not orders[0] & orders[1]
    run_id = next(iter(orders[0])).rsplit("-", 1)[0]
    assert orders[0] | orders[1] == {f"{run_id}-{i}" for i in range(live["planned_arrivals"])}
    assert sum(d["events"] for d in done) == sum(len(evs) for evs in per_file), "every event sent arrived"
    assert live["history"]["duplicate_client_events"] == 0
    assert not list(elsewhere.glob("**/*.jsonl")), "the workers wrote no history files of their own"


def test_web_opens_locusts_own_ui_on_loopback_during_the_run(tmp_path):
    """`--web`: while the run goes on, Locust's web UI answers on 127.0.0.1 and shows the run's requests."""
    import threading

    port = _free_port()
    seen: list[dict] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.3):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/stats/requests", timeout=2)
                if r.status_code == 200:
                    seen.append(r.json())
            except httpx.HTTPError:
                pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        rc, doc, out = _load(tmp_path, "--web", "--web-port", str(port),
                             "--set", "order_service.close_policy=close_trade_then_order")
    finally:
        stop.set()
        t.join(timeout=5)
    assert rc == 0 and doc["valid"], _why(doc)
    assert any(s.get("state") == "running" for s in seen), "the UI answered while the load ran"
    names = {row["name"] for s in seen for row in s.get("stats", ())}
    assert "create order" in names
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)  # gone with the run
