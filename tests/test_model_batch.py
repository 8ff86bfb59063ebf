"""A batch merchant's finish job paused by the big-promotion plan (大促预案: lower-priority jobs are paused
for the peak, ``merchant.batch_paused`` in a fault window): the runs due in the window are skipped, the
delivered agreements wait for the first run after it, and those that wait past ``bnpl.finish_limit`` are
reported unfinished — a race between the pause window, the batch schedule and the limit, not a draw."""

from __future__ import annotations

from pathlib import Path

from sim.runner import simulate
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
BATCH = {
    "run.replications": 2, "run.horizon": "1h", "run.warmup": "0s", "run.drain": "1d", "load.arrival_rate": 0.2,
    "user.payment_methods": {"bnpl": 1.0}, "user.abandon_probability": 0.0,
    "merchant.population": [{"name": "b1", "share": 1.0, "finish": "batch", "batch_interval": "1h",
                             "batch_item_time": "1s"}],
    "merchant.ship_time": "0s", "merchant.delivery_time": "30m", "merchant.bnpl_finish_failure": 0.0,
    "bnpl.finish_limit": "3h",
}
PAUSE = {"faults": [{"start": "0s", "end": "6h", "label": "big-promotion plan", "set": {"merchant.batch_paused": True}}]}


def _run(over: dict) -> dict:
    return simulate(load_scenario(ROOT / "scenarios" / "baseline.toml", {**BATCH, **over}), progress=False)


def test_a_paused_batch_job_leaves_the_agreements_delivered_before_the_window_ends_unfinished_past_the_limit():
    plain, paused = _run({}), _run(PAUSE)
    assert plain["orders"] == paused["orders"] > 1000  # the same buyers (common random numbers)
    a, b = plain["anomalies"]["bnpl_stuck_unfinished"], paused["anomalies"]["bnpl_stuck_unfinished"]
    assert a["count"] == 0 and a.get("occurred_orders", 0) == 0, a  # hourly runs finish within the 3-h limit
    # Delivered 30 min after paying in the first hour, every agreement waits for the 6-h run: 4.5 h or more.
    assert b["occurred_orders"] >= 0.8 * paused["orders"], b
    assert b["count"] == 0 and b["repaired"] == b["occurred_orders"], b  # the 6-h run finishes them all
    # open from delivery + 3 h (3.5 h - 4.5 h) to the 6-h run: 1.5 h - 2.5 h
    assert 1.4 * 3600 < b["repair_s"]["median"] < 2.6 * 3600, b["repair_s"]
    runs = paused["metrics"]["merchant_batch"]
    assert runs["skipped_paused"] == 5, runs  # the runs at 1 h .. 5 h; the one at 6 h is outside the window
    assert "merchant_batch" not in plain["metrics"]


def test_a_pause_that_ends_in_time_costs_nothing():
    """Paused for the first 150 min: the runs at 1 h and 2 h are skipped and the 3-h run finishes every
    agreement delivered in the first 1 h 30 min within 2 h 30 min of its delivery, inside the 3-h limit."""
    short = _run({"faults": [{"start": "0s", "end": "150m", "set": {"merchant.batch_paused": True}}]})
    b = short["anomalies"]["bnpl_stuck_unfinished"]
    assert b.get("occurred_orders", 0) == 0, b
    assert short["metrics"]["merchant_batch"]["skipped_paused"] == 2


def test_which_agreements_a_pause_strands_is_decided_by_their_delivery_against_the_window():
    """Deliveries spread over 10 min – 3 h after paying, paused until 4 h, a 3-h limit: an agreement is
    stranded exactly when it was delivered more than 3 h before the first run after the pause (4 h), i.e.
    before 1 h — the race between each delivery and the window's end, not a draw; a part, not all."""
    from sim.model.model import run_replication

    s = load_scenario(ROOT / "scenarios" / "baseline.toml", {
        **BATCH, "merchant.delivery_time": {"dist": "uniform", "low": "10m", "high": "3h"},
        "faults": [{"start": "0s", "end": "4h", "set": {"merchant.batch_paused": True}}]})
    events: list[dict] = []
    r = run_replication(s, 0, examples=False, tap=events.append)
    delivered = {e["order"]: e["t"] for e in events if e["type"] == "order.delivered"}
    finished = {e["order"]: e["t"] for e in events if e["type"] == "bnpl.finish_sent"}
    assert len(delivered) > 300
    stranded = {o for o, t in delivered.items() if finished.get(o, float("inf")) - t > 3 * 3600}
    # The 4-h run sends one finish a second, so its last goes out `span` seconds after it starts.
    span = max(finished.values()) - 4 * 3600
    assert 0 < span < 900
    assert {o for o, t in delivered.items() if t < 3600} <= stranded  # delivered before 1 h: stranded
    assert all(delivered[o] < 3600 + span for o in stranded)  # none delivered later than the run's own seconds allow
    assert all(4 * 3600 <= finished[o] <= 4 * 3600 + span for o in stranded)  # finished by the first run after
    assert 0.02 * len(delivered) < len(stranded) < 0.5 * len(delivered), (len(stranded), len(delivered))
    assert r.summary.per_class["bnpl_stuck_unfinished"].count == 0  # the 4-h run finishes them: repaired
