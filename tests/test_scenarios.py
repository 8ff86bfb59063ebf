"""The scenario library: every file validates and runs, and every story holds, statistically.

Each story test runs the scenario scaled down (a shorter horizon, and for the slow clocks a
time-compressed deadline, as noted per scenario) twice on common random numbers — as written and
with the mitigation its comment block names — and checks that

* the anomaly the story is about appears: its 95% CI lower bound is above zero;
* the named mitigation removes it (or cuts it, where the story says so);
* anomalies the story is not about do not appear.

The figures of the full-size runs are in docs/scenarios.md.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from sim.errors import ConfigError
from sim.runner import simulate
from sim.scenario import ANOMALY_CLASSES, load_scenario, scenario_from_dict

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
FILES = sorted(SCENARIOS.glob("*.toml"))
NAMES = [f.stem for f in FILES]

# Every story test: three replications, a short horizon and warmup (per story below).
FAST = {"run.replications": 3, "run.warmup": "1m"}

MONEY = ("paid_but_closed", "double_charge", "charge_without_order", "order_paid_without_charge",
         "ledger_imbalance")


def _faults_load() -> bool:
    """Whether a scenario with a fault window loads (sim/scenario.py's faulted() once recursed)."""
    try:
        scenario_from_dict({"faults": [{"start": "1m", "end": "2m", "set": {"bank.response_loss": 0.5}}]})
    except ConfigError:
        raise
    except Exception:  # RecursionError, or pydantic wrapping it
        return False
    return True


FAULTS_LOAD = _faults_load()
FAULTS_BUG = ("sim/scenario.py: Scenario.faulted() re-validates the fault windows of the scenario it "
              "builds, which calls faulted() again: any [[faults]] scenario recurses without end")


def uses_faults(path: Path) -> bool:
    return bool(tomllib.loads(path.read_text()).get("faults"))


def marks_for(path: Path) -> list[Any]:
    if uses_faults(path) and not FAULTS_LOAD:
        return [pytest.mark.xfail(reason=FAULTS_BUG, strict=True)]
    return []


@dataclass
class Story:
    scale: dict[str, Any]                     # on top of FAST: what makes the test small
    mitigation: dict[str, Any]                # the --set lines the file's comment block names
    anomaly: str | None = None                # the class the story is about
    end_state: str | None = None              # ... or the end state it is about
    removes: bool = True                      # the mitigation removes it (else: cuts it to `cut` or less)
    cut: float = 0.5                          # with removes=False: mitigated rate <= cut x the rate as written
    absent: tuple[str, ...] = ()              # classes the story must not show
    check: Callable[[dict, dict], None] | None = None  # a story-specific check (base doc, mitigated doc)


# The notify-endpoint outage files in 8 minutes: outages every 10 min on average (the files: 1 h), so
# each short replication is likely to meet one.
OUTAGES_8M = {"run.horizon": "8m", "run.drain": "26h",
              "order_service.notify_outage_every": {"dist": "exponential", "mean": "10m"}}


def _windows(daily: dict, hourly: dict) -> None:
    """Reconciliation repairs every paid-but-closed order; daily after ~a day, hourly within ~an hour."""
    d, h = daily["anomalies"]["paid_but_closed"], hourly["anomalies"]["paid_but_closed"]
    assert d["count"] == 0 and h["count"] == 0, (d["count"], h["count"])
    assert d["repaired"] > 0 and h["repaired"] > 0
    assert d["window_s"]["median"] > 12 * 3600, d["window_s"]
    assert h["window_s"]["p99"] < 2 * 3600, h["window_s"]


def _money_not_there(base: dict, mitigated: dict) -> None:
    """bnpl_low_balance: as written, many unpaid agreements' buyers hold the amount at the end (the
    retries stopped before their money came); deducting as WeChat Pay does (other methods, retries until
    it succeeds), what is left another attempt could not collect: the money is not there."""
    b, m = base["metrics"]["bnpl_unpaid"], mitigated["metrics"]["bnpl_unpaid"]
    reps = base["replications"]
    assert b["unpaid"] * reps == base["anomalies"]["bnpl_deduction_failed"]["count"], b
    assert m["unpaid"] * reps == mitigated["anomalies"]["bnpl_deduction_failed"]["count"], m
    assert b["collectable"] >= 0.25 * b["unpaid"], b
    assert m["collectable"] <= 0.15 * m["unpaid"], m


def _hourly_windows(hourly: dict, daily: dict) -> None:
    _windows(daily, hourly)


def _told_failed_for_a_minute(storm: dict, deadlines: dict) -> None:
    """Debits that time out in the bank's queue still go through: every such buyer told 'unknown' learns
    the truth once the gateway's query (60 s) finds the debit; with bank deadlines a fifth or fewer are debited at all."""
    s, d = storm["anomalies"]["failure_shown_but_charged"], deadlines["anomalies"]["failure_shown_but_charged"]
    assert s["repaired"] >= 100 and s["count"] == 0 and d["count"] == 0, (s["repaired"], s["count"], d["count"])
    assert 30 <= s["window_s"]["median"] <= 120, s["window_s"]
    assert d["occurred_orders"] * 5 <= s["occurred_orders"], (d["occurred_orders"], s["occurred_orders"])


def _after_sales_race(base: dict, mitigated: dict) -> None:
    """The refunded-and-shipped orders are the small shop's stale answers: the model's count is the
    checker's end state and its anomaly class (with the same money), and re-read at the answer the same
    requests are refused as shipped instead."""
    a, m = base["metrics"]["after_sales"], mitigated["metrics"]["after_sales"]
    reps = base["replications"]
    assert round(a["refunded_and_shipped"] * reps) == base["end_states"]["refunded_and_shipped"]
    cls = base["anomalies"]["refunded_and_shipped"]
    assert cls["count"] == base["end_states"]["refunded_and_shipped"] and cls["repaired"] == 0
    assert round(cls["amount"] * 100) == round(a["refunded_and_shipped_fen"] * reps), (cls["amount"], a)
    assert a["requested"] == m["requested"]  # the same buyers ask (common random numbers)
    assert m["refunded_and_shipped"] == 0 and m["refused_shipped"] > a["refused_shipped"]
    assert a["refunded_and_shipped_fen"] > 0


def _promotion_pause(base: dict, mitigated: dict) -> None:
    """The plan's paused runs strand the agreements delivered early; the first run after it finishes them
    all (repaired, within the run's interval of the limit); with the finish job out of the plan, almost
    none (the sync merchant's rare finish delay past a day)."""
    a, m = base["anomalies"]["bnpl_stuck_unfinished"], mitigated["anomalies"]["bnpl_stuck_unfinished"]
    assert a["occurred_ci95"][0] > 0 and a["occurred_orders"] >= 0.02 * base["orders"], a
    assert a["count"] == 0 and a["repaired"] == a["occurred_orders"], a
    assert a["window_s"]["median"] < 2 * 3600, a["window_s"]  # the limit passed less than a run's interval before
    assert m["occurred_orders"] <= a["occurred_orders"] / 20, (m["occurred_orders"], a["occurred_orders"])
    assert base["metrics"]["merchant_batch"]["skipped_paused"] == 12  # the runs at 2 h .. 24 h
    assert "merchant_batch" not in mitigated["metrics"]


def _mitigation_line(name: str) -> dict[str, Any]:
    """A --set line of a file's Mitigation block, parsed as the CLI parses it (for values too long to
    repeat here)."""
    from sim.scenario import parse_override

    text = (SCENARIOS / f"{name}.toml").read_text(encoding="utf-8")
    line = re.search(r"--set '([^']+)'", text[text.find("# Mitigation:"):]).group(1)
    return dict([parse_override(line)])


STORIES: dict[str, Story] = {
    "after_sales_race": Story(
        scale={"run.horizon": "12m", "run.drain": "1d"},
        mitigation=_mitigation_line("after_sales_race"),  # the small shop checks at its answer
        anomaly="refunded_and_shipped",
        end_state="refunded_and_shipped",
        check=_after_sales_race,
        absent=MONEY,
    ),
    "baseline": Story(
        scale={"run.horizon": "8m", "run.drain": "26h"},
        mitigation={},
        absent=MONEY + ("success_shown_then_closed", "stuck_pending", "bnpl_false_overdue"),
    ),
    "double11_midnight": Story(
        # Half the arrivals and half the bank channels; time-compressed: the spike at 2 min, x24 for
        # 2 min (the file: 4 min), a 5-minute close (the file: 15 min).
        scale={"run.horizon": "8m", "run.drain": "26h", "load.arrival_rate": 0.5, "bank.channels": 2,
               "order_service.order_ttl": "5m",
               "load.profile": [{"at": "2m", "multiplier": 30.0}, {"at": "3m", "multiplier": 24.0},
                                {"at": "5m", "multiplier": 8.0}]},
        mitigation={"order_service.close_policy": "close_trade_then_order", "order_service.late_payment": "auto_refund"},
        anomaly="paid_but_closed",
        # Cut, not removed, at this compression: a debit still queued at the bank when the trade is
        # closed moves money the gateway then ignores (see docs/scenarios.md, model gaps).
        removes=False,
        absent=("charge_without_order", "ledger_imbalance", "bnpl_false_overdue"),
    ),
    "mall_pattern": Story(
        # Time-compressed: 5-minute orders (the file: 60 min), so more buyers pay in the order's last
        # minutes, where a lost notification's retry (4 min) or a lost response's query (60 s) lands
        # after the delayed cancel.
        scale={"run.horizon": "10m", "run.drain": "26h", "order_service.order_ttl": "5m"},
        mitigation={"order_service.close_policy": "close_trade_then_order"},
        anomaly="paid_but_closed",
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "litemall_pattern": Story(
        scale={"run.horizon": "10m", "run.drain": "25h", "order_service.order_ttl": "10m"},
        mitigation={"order_service.close_policy": "close_trade_then_order", "order_service.late_payment": "auto_refund"},
        end_state="resurrected_stock_released",
        absent=("paid_but_closed", "double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "bnpl_promotion_pause": Story(
        scale={"run.horizon": "12m", "run.drain": "3d"},  # the file's plan, merchants and limit as written
        mitigation={"faults": []},
        check=_promotion_pause,
        absent=MONEY + ("bnpl_false_overdue",),
    ),
    "bnpl_forgotten_finish": Story(
        # Only pay-after-use buyers, and one small shop whose worker restarts every 3 h (the file: 30
        # small shops, 12 h each): a restart loses every message held at that moment, so in 8 minutes
        # one fast-restarting worker shows the loss where 30 slow ones would show few.
        scale={"run.horizon": "8m", "run.drain": "3d", "run.replications": 4,
               "user.payment_methods": {"wallet": 0.0, "card": 0.0, "bnpl": 1.0},
               "merchant.population": [
                   {"name": "big", "share": 0.5, "finish": "sync"},
                   {"name": "small", "share": 0.3, "finish": "queue",
                    "restart_every": {"dist": "exponential", "mean": "3h"}},
                   {"name": "new", "share": 0.2, "finish": "batch", "batch_interval": "24h",
                    "batch_item_time": "2s"}]},
        mitigation={"merchant.finish_outbox": True},
        anomaly="bnpl_stuck_unfinished",
        absent=MONEY + ("bnpl_false_overdue",),
    ),
    "gateway_brownout": Story(
        # Half the arrivals; time-compressed: a 5-minute close and a 7-minute brownout with 3 workers
        # (the file: 15 min, 20 min with 4 workers).
        scale={"run.horizon": "12m", "run.drain": "26h", "run.replications": 5, "load.arrival_rate": 2.0,
               "order_service.order_ttl": "5m",
               "faults": [{"label": "gateway brownout", "start": "3m", "end": "10m",
                           "set": {"gateway.workers": 3,
                                   "gateway.service_time": {"dist": "lognormal", "median": "2s", "p99": "20s"}}}]},
        mitigation={"order_service.close_policy": "close_trade_then_order"},
        anomaly="paid_but_closed",
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "bank_timeout_storm": Story(
        # The storm from 4 to 10 min (the file: 20 to 35 min).
        scale={"run.horizon": "12m", "run.drain": "26h",
               "faults": [{"label": "bank on a one-channel standby", "start": "4m", "end": "10m",
                           "set": {"bank.channels": 1}}]},
        mitigation={"bank.deadlines": True, "bank.deadline_margin": "2s"},
        check=_told_failed_for_a_minute,
        absent=MONEY,
    ),
    "notification_backlog": Story(
        # A quarter of the arrivals and of the handler workers; time-compressed: a 5-minute close, a x4
        # push from 2 to 8 min (the file: 15 min, x3 from 15 to 30 min).
        scale={"run.horizon": "10m", "run.drain": "26h", "load.arrival_rate": 1.0, "order_service.workers": 1,
               "order_service.order_ttl": "5m",
               "load.profile": [{"at": "2m", "multiplier": 4.0}, {"at": "8m", "multiplier": 1.0}]},
        mitigation={"order_service.close_policy": "close_trade_then_order"},
        anomaly="paid_but_closed",
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "notifications_lost": Story(
        # Outages every 10 min on average (the file: 1 h), so an 8-minute run meets some.
        scale=OUTAGES_8M,
        mitigation={"order_service.close_policy": "query_then_close"},
        anomaly="paid_but_closed",
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "impatient_retry": Story(
        # A quarter of the arrivals and of the gateway's workers; a x10 push for 1 min from 2 min (the
        # file: x6 for 2 min from 20 min), so the queue passes the app's timeout in a 5-minute run.
        scale={"run.horizon": "5m", "run.drain": "1h", "load.arrival_rate": 1.0, "gateway.workers": 4,
               "load.profile": [{"at": "2m", "multiplier": 10.0}, {"at": "3m", "multiplier": 1.0}]},
        mitigation={"app.retry_trade_no": "reuse"},
        anomaly="double_charge",
        absent=("charge_without_order", "ledger_imbalance"),
    ),
    "risk_control_hold": Story(
        scale={"run.horizon": "12m", "run.drain": "26h", "run.replications": 5},
        mitigation={"order_service.late_payment": "auto_refund"},
        anomaly="paid_but_closed",
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "bnpl_sync_lag": Story(
        # Only pay-after-use buyers (the file: 6 in 10): the same mechanism, more instances per run.
        scale={"run.horizon": "12m", "run.drain": "3d", "run.replications": 5,
               "user.payment_methods": {"wallet": 0.0, "card": 0.0, "bnpl": 1.0}},
        mitigation={"bnpl.sync_lag": {"dist": "lognormal", "median": "2s", "p99": "1m"}},
        anomaly="bnpl_false_overdue",
        absent=MONEY,
    ),
    "bnpl_low_balance": Story(
        # The file's buyers (its wallet orders spend the balances the deductions need), fewer of them.
        scale={"run.horizon": "16m", "run.drain": "4d", "run.replications": 3},
        mitigation={"bnpl.deduction_source": "wallet_then_card",
                    "bnpl.deduction_retry_schedule": ["1h", "6h", "1d", "1d", "1d", "1d"]},
        anomaly="bnpl_deduction_failed",
        # Cut, not removed: what is left are buyers whose money is not there at the end (_money_not_there).
        removes=False,
        cut=0.15,  # at this scale 0.035 -> 0.0020 (x0.057)
        check=_money_not_there,
        absent=MONEY + ("bnpl_false_overdue",),
    ),
    "reconciliation_daily": Story(
        scale=OUTAGES_8M,
        mitigation={"reconciliation.interval": "1h", "reconciliation.statement_delay": "30m"},
        check=_windows,
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
    "reconciliation_hourly": Story(
        scale=OUTAGES_8M,
        # the other way round: what the hourly file buys over a T+1 daily run
        mitigation={"reconciliation.interval": "1d", "reconciliation.statement_delay": "10h"},
        check=_hourly_windows,
        absent=("double_charge", "charge_without_order", "ledger_imbalance"),
    ),
}


# -- the library ------------------------------------------------------------------------------------


def test_library_is_complete():
    required = {"baseline", "double11_midnight", "mall_pattern", "bnpl_forgotten_finish"}
    assert required <= set(NAMES)
    assert len(NAMES) >= 14
    assert set(STORIES) == set(NAMES), "every scenario file needs a story test (and every story a file)"


@pytest.mark.parametrize("path", [pytest.param(f, id=f.stem) for f in FILES])
def test_file_opens_with_its_story(path: Path):
    """A comment block first: the story, its source, what to expect, the mitigation (a --set line)."""
    text = path.read_text(encoding="utf-8")
    head = text.split("\n\n", 1)[0] + "\n" + text[: text.find("description")]
    assert text.startswith(f"# {path.stem} — "), "first line: '# <name> — <one line>'"
    for label in ("Story:", "Source:", "Expect:", "Mitigation:"):
        assert f"# {label}" in head or f"#{label}" in head, f"missing '{label}' in the comment block"
    assert "--set" in head[head.find("Mitigation:"):], "the mitigation is given as a --set line"
    assert "domain.md" in head or "seeds" in head, "the source cites docs/domain.md"
    data = tomllib.loads(text)
    assert data.get("description") and "\n" not in data["description"] and len(data["description"]) <= 140


@pytest.mark.parametrize("path", [pytest.param(f, id=f.stem, marks=marks_for(f)) for f in FILES])
def test_file_validates_and_runs(path: Path):
    scenario = load_scenario(path)
    assert scenario.name == path.stem and scenario.description
    # Modest by default: the whole library simulates in well under a minute per file on one core.
    run = scenario.run
    assert run.replications <= 5 and run.horizon <= 3600 and scenario.load.arrival_rate <= 5
    small = load_scenario(path, {"run.replications": 1, "run.horizon": "3m", "run.warmup": "30s",
                                 "run.drain": "1h", "load.arrival_rate": 1.0})
    doc = simulate(small, progress=False)
    assert doc["orders"] > 0 and set(doc["anomalies"]) == set(ANOMALY_CLASSES)
    assert doc["ledger_total_fen"] == 0, "money is neither created nor destroyed"


# -- the stories ----------------------------------------------------------------------------------------


def _run(name: str, extra: dict[str, Any]) -> dict:
    story = STORIES[name]
    scenario = load_scenario(SCENARIOS / f"{name}.toml", {**FAST, **story.scale, **extra})
    return simulate(scenario, progress=False)


@pytest.mark.parametrize("name", [pytest.param(n, marks=marks_for(SCENARIOS / f"{n}.toml")) for n in NAMES])
def test_story_holds(name: str):
    story = STORIES[name]
    base = _run(name, {})
    mitigated = _run(name, story.mitigation) if story.mitigation else None
    if mitigated is not None:  # common random numbers: the same buyers arrive in both
        assert base["orders_per_replication"] == mitigated["orders_per_replication"]
    if story.anomaly:
        a = base["anomalies"][story.anomaly]
        assert a["ci95"][0] > 0, f"{story.anomaly}: {a['count']} in {base['orders']} orders, CI {a['ci95']}"
        m = mitigated["anomalies"][story.anomaly]
        if story.removes:
            assert m["count"] == 0, f"the mitigation leaves {m['count']} {story.anomaly}"
        else:
            assert m["rate"] <= a["rate"] * story.cut, (m["rate"], a["rate"])
    if story.end_state:
        seen = base["end_states"].get(story.end_state, 0)
        assert seen >= base["replications"], f"{story.end_state}: {seen} in {base['orders']} orders"
        assert mitigated["end_states"].get(story.end_state, 0) == 0
    if story.check:
        story.check(base, mitigated)
    for cls in story.absent:
        assert base["anomalies"][cls]["count"] == 0, f"{cls} appears in a story not about it"
        if mitigated is not None:
            assert mitigated["anomalies"][cls]["count"] == 0, f"{cls} appears under the mitigation"
    assert base["ledger_total_fen"] == 0


def test_mitigations_are_the_ones_the_files_name():
    """The test applies exactly the --set lines each file's comment block gives."""
    for name, story in STORIES.items():
        text = (SCENARIOS / f"{name}.toml").read_text(encoding="utf-8")
        block = text[text.find("# Mitigation:"): text.find("description")]
        for key in story.mitigation:
            if name == "reconciliation_hourly":
                continue  # its "mitigation" runs the other way (hourly is the mitigation of daily)
            assert re.search(rf"--set '?{re.escape(key)}=", block), f"{name}: {key} not named in its Mitigation"


def test_mall_pattern_is_a_race_with_payments_in_flight_not_the_pay_delay_tail():
    """mall_pattern's paid_but_closed comes from payments still in flight when the delayed cancel runs:
    on the same seed, with no notification attempt and no debit response lost (nothing stays in flight
    for minutes) almost none remain, while a cashier that outlives the order (buyers paying after the
    cancel, the pay-delay tail) gives many times more."""
    base = _run("mall_pattern", {})
    nothing_lost = _run("mall_pattern", {"gateway.notify_loss": 0.0, "bank.response_loss": 0.0})
    stale = _run("mall_pattern", {"app.cashier_closes_at_expiry": False})
    n = base["anomalies"]["paid_but_closed"]["count"]
    assert base["orders_per_replication"] == nothing_lost["orders_per_replication"] == stale["orders_per_replication"]
    assert n >= 30, base["anomalies"]["paid_but_closed"]
    assert nothing_lost["anomalies"]["paid_but_closed"]["count"] <= n / 10
    assert stale["anomalies"]["paid_but_closed"]["count"] >= 5 * n


# The overload safeguards double11_midnight's comment block names (its second mitigation).
D11_SAFEGUARDS = {"gateway.deadlines": True, "bank.deadlines": True, "order_service.deadlines": True,
                  "gateway.load_shedding": True, "order_service.load_shedding": True,
                  "gateway.shed_limit": 80, "order_service.shed_limit": 24}
D11_RATES = (0.1, 0.25, 0.5, 1.0, 2.0)  # base arrivals/s; the file's spike multiplies them by 30, then 24


def _d11_goodput(tmp_path: Path, extra: dict[str, Any], label: str) -> tuple[list[float], list[float]]:
    """An arrival-rate sweep (sim.sweep, what `checkout-chaos sweep --vary load.arrival_rate=...` runs) of
    double11_midnight as written, measured over its spike only: warmup 5 min (the file's), horizon 10 min
    (the file: 30), so the window is the x30 minute and four minutes at x24; one replication per point."""
    from sim.sweep import plan_sweep, run_sweep

    base = load_scenario(SCENARIOS / "double11_midnight.toml",
                         {"run.replications": 1, "run.horizon": "10m", "run.drain": "30m", **extra})
    plan = plan_sweep(base, [f"load.arrival_rate={','.join(str(r) for r in D11_RATES)}"])
    doc = run_sweep(plan, tmp_path / label, jobs=1, progress=False)
    app = [p["results"]["metrics"]["app"] for p in doc["points"]]
    return [a["goodput_per_s"] for a in app], [a["offered_per_s"] for a in app]


def test_double11_goodput_knee_in_an_arrival_rate_sweep_flattened_by_the_safeguards(tmp_path: Path):
    """Issue 15: a goodput knee appears in a sweep of arrival rate on double11_midnight without deadlines
    and shedding, and is flattened with them. Goodput = pay calls answered 'succeeded' within the app's
    timeout, per second of the window. Without the safeguards it rises with the offered load, peaks, and
    past the peak collapses (held gateway workers fill with queued bank calls, timed-out requests are
    re-sent, the bank debits for callers long gone); with them it stays at or above its peak."""
    text = (SCENARIOS / "double11_midnight.toml").read_text(encoding="utf-8")
    block = text[text.find("# Mitigation:"): text.find("description")]
    for key, value in D11_SAFEGUARDS.items():  # the safeguards are the ones the file names
        assert f"--set {key}={str(value).lower()}" in block, key
    plain, offered = _d11_goodput(tmp_path, {}, "plain")
    safe, offered_safe = _d11_goodput(tmp_path, D11_SAFEGUARDS, "safe")
    assert offered == offered_safe  # common random numbers: the same buyers arrive at every point
    assert all(b > 1.8 * a for a, b in zip(offered, offered[1:])), offered  # the sweep really raises the load
    knee = max(plain)
    k = plain.index(knee)
    assert 0 < k < len(plain) - 1, plain  # a peak inside the sweep, not at either end
    # Below the knee both serve what is offered: the safeguards cost nothing there.
    for a, b in zip(plain[: k + 1], safe[: k + 1]):
        assert b == pytest.approx(a, rel=0.05), (plain, safe)
    # Past it, without the safeguards: collapse, at every rate, to well under the peak.
    assert all(g < 0.6 * knee for g in plain[k + 1:]), (knee, plain)
    # With them: flat or rising at every rate past the knee, and at least twice the unguarded goodput.
    assert all(g >= 0.95 * knee for g in safe[k + 1:]), (knee, safe)
    assert all(s > 2 * p for s, p in zip(safe[k + 1:], plain[k + 1:])), (plain, safe)
