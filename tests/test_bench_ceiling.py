"""The premise of benchmarks/sim_ceiling.py: the model reads nothing back from its history but the
replica's write log, so a replication whose events are dropped (or never built) runs the same model —
the same orders, queue metrics and ledger — and the benchmark's timings of it are the model's own cost."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import sim.model.world as W
from sim.model.model import run_replication
from sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sim_ceiling", ROOT / "benchmarks" / "sim_ceiling.py")
ceiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ceiling)

SHORT = {"run.replications": 1, "run.horizon": "4m", "run.warmup": "30s", "run.drain": "2h"}


def _model_of(result) -> tuple:
    return result.orders_created, result.metrics, result.ledger_total


@pytest.mark.parametrize("scenario", ["baseline.toml", "bnpl_sync_lag.toml", "mall_pattern.toml"])
@pytest.mark.parametrize("mode", ["no_checker", "no_history"])
def test_a_replication_without_its_history_runs_the_same_model(monkeypatch, scenario, mode):
    s = load_scenario(ROOT / "scenarios" / scenario).with_overrides(SHORT)
    full = run_replication(s, 0)
    assert full.orders_created > 100 and full.summary.orders > 0
    for name, fn in ceiling.world_patches(mode).items():
        monkeypatch.setattr(W.World, name, fn)
    bare = run_replication(s, 0)
    assert _model_of(bare) == _model_of(full)
    assert bare.summary.orders == 0  # nothing reached the checker: the timing has no judgement in it


def test_the_replica_write_log_is_kept_when_the_scenario_reads_it(monkeypatch):
    s = load_scenario(ROOT / "scenarios" / "baseline.toml").with_overrides(
        {**SHORT, "order_service.read_lag": "2s", "app.order_page_request": True})
    seen = []
    original = W.World.replica_state

    def spy(self, order, lag):
        seen.append(bool(self.state_log.get(order.id)))
        return original(self, order, lag)

    monkeypatch.setattr(W.World, "replica_state", spy)
    for name, fn in ceiling.world_patches("no_history").items():
        monkeypatch.setattr(W.World, name, fn)
    run_replication(s, 0)
    assert seen and all(seen)
