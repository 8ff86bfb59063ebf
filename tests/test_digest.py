"""Pins a small scenario's simulation results to a stored digest, so a change that alters results
(a speed-up that reorders random draws, a model change) is seen, not silently shipped.

The digest is the SHA-256 of the canonical results JSON (``sim.results.canonical_json``) minus
``run_info`` (wall time, host, command), of the scenario and overrides stored in
``tests/fixtures/digest.json`` (three small scenarios). When a change of results is intended, regenerate the fixture and commit
it with the change, saying why the results moved:

    CHECKOUT_CHAOS_UPDATE_DIGEST=1 .venv/bin/pytest tests/test_digest.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sim.results import canonical_json
from sim.runner import simulate
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "digest.json"
UPDATE_ENV = "CHECKOUT_CHAOS_UPDATE_DIGEST"

# Small scenarios: the default one, and two whose anomalies come from different races (a retry with a new trade number after a
# timeout; notifications lost while the order's TTL runs out), a fraction of a second each.
CASES = {
    # every mechanism of the default scenario, short
    "baseline": {"run.replications": 2, "run.horizon": "2m", "run.warmup": "20s", "run.drain": "1h", "run.seed": 11},
    # the file's push scaled to 3 minutes (x10 for 45 s, 3 gateway workers): requests queue past the app's timeout
    "impatient_retry": {"run.replications": 2, "run.horizon": "3m", "run.warmup": "30s", "run.drain": "30m",
                        "load.arrival_rate": 1.0, "run.seed": 20261201, "gateway.workers": 3,
                        "load.profile": [{"at": "60s", "multiplier": 10.0}, {"at": "105s", "multiplier": 1.0}]},
    "notifications_lost": {"run.replications": 2, "run.horizon": "3m", "run.warmup": "30s", "run.drain": "30m",
                           "load.arrival_rate": 2.0, "run.seed": 20261201},
}
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/pytest tests/test_digest.py"


def _digest(name: str, overrides: dict) -> dict:
    doc = simulate(load_scenario(ROOT / "scenarios" / f"{name}.toml", dict(overrides)), progress=False)
    body = canonical_json({k: v for k, v in doc.items() if k != "run_info"})
    counts = {cls: v["count"] for cls, v in sorted(doc["anomalies"].items()) if v["count"]}
    return {"overrides": overrides, "sha256": hashlib.sha256(body.encode()).hexdigest(), "orders": doc["orders"],
            "anomaly_counts": counts}


def test_results_match_the_stored_digest():
    now = {name: _digest(name, overrides) for name, overrides in CASES.items()}
    if os.environ.get(UPDATE_ENV):
        FIXTURE.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n")
        return
    assert FIXTURE.exists(), f"{FIXTURE} is missing: create it with {REGENERATE}"
    stored = json.loads(FIXTURE.read_text())
    for name, got in now.items():
        want = stored.get(name)
        assert want is not None and want["overrides"] == got["overrides"], (
            f"{FIXTURE.name} has no digest for scenarios/{name}.toml with {got['overrides']}; regenerate it: {REGENERATE}")
        assert got["sha256"] == want["sha256"], (
            f"the simulation's results changed for a fixed seed (scenarios/{name}.toml with {got['overrides']}).\n"
            f"  stored: sha256 {want['sha256']}, orders {want['orders']}, anomalies {want['anomaly_counts']}\n"
            f"  now:    sha256 {got['sha256']}, orders {got['orders']}, anomalies {got['anomaly_counts']}\n"
            "If the change was not meant to alter results (a speed-up, a refactoring), it broke same seed, same "
            "result: find the draw or the ordering it changed. If it was meant to (a model change), regenerate the "
            f"digests and commit them with the change, saying why the results moved: {REGENERATE}")
