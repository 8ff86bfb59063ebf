"""Refunds as they are: latency, failures and retries; refund_pending / refunded on the order."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from sim.model.model import run_replication
from sim.scenario import Scenario

# Late payments on a naive close, refunded automatically.
LATE = {
    "user.payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0},
    "user.abandon_probability": 0.0,
    "user.retry_probability": 0.0,
    "user.pay_delay": {"dist": "exponential", "mean": "600s"},
    "app.network_latency": "0s",
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "gateway.notify_latency": {"dist": "exponential", "mean": "300s"},
    "order_service.order_ttl": "15m",
    "order_service.late_payment": "auto_refund",
    "load.arrival_rate": 1.0,
    "run.horizon": "20m",
    "run.warmup": "2m",
}


def _run(**extra):
    s = Scenario().with_overrides({**LATE, **{k.replace("__", "."): v for k, v in extra.items()}})
    seq: dict[str, list[str]] = defaultdict(list)

    def tap(ev: dict) -> None:
        if ev["type"] in ("order.refund_pending", "order.refunded", "trade.refund_failed", "order.refund_failed"):
            seq[ev["order"]].append(ev["type"])
        elif ev["type"] == "app.shown":
            seq[ev["order"]].append(ev["screen"])

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return r, seq


def test_refunds_take_days_and_the_order_shows_refund_pending_meanwhile():
    r, seq = _run(gateway__refund_latency={"dist": "lognormal", "median": "3d", "p99": "7d"}, run__drain="12d")
    pbc = r.summary.per_class["paid_but_closed"]
    assert pbc.count == 0 and pbc.repaired >= 30, (pbc.count, pbc.repaired)
    assert sorted(pbc.windows)[len(pbc.windows) // 2] > 86400  # the money is away for days
    refunds = {o: [e for e in evs if e.startswith("order.")] for o, evs in seq.items()}
    refunds = {o: evs for o, evs in refunds.items() if evs}
    assert refunds and all(evs == ["order.refund_pending", "order.refunded"] for evs in refunds.values())


def test_the_buyers_screen_follows_the_refund():
    """A buyer whose payment reached a closed order (shown 'payment succeeded', then the order closed) is
    shown 'refund pending' while the money is away, then 'refunded' (the app's pushes)."""
    _r, seq = _run(gateway__refund_latency={"dist": "lognormal", "median": "3d", "p99": "7d"}, run__drain="12d")
    refunded = [evs for evs in seq.values() if "order.refunded" in evs]
    assert len(refunded) >= 30
    for evs in refunded:
        assert "refund_pending" in evs and "refunded" in evs, evs
        assert evs.index("order.refund_pending") < evs.index("refund_pending") < evs.index("order.refunded") \
            < evs.index("refunded"), evs


def test_failed_refunds_are_retried_and_marked_refund_failed_when_the_retries_run_out():
    few, few_seq = _run(gateway__refund_failure=0.6, order_service__refund_retry_schedule=["1h"], run__drain="1d")
    many, _ = _run(gateway__refund_failure=0.6,
                   order_service__refund_retry_schedule=["1h"] * 20, run__drain="2d")
    assert few.summary.per_class["paid_but_closed"].count >= 5
    assert few.summary.end_states.get("paid_closed_refund_failed", 0) >= 5  # a person must act
    gave_up = [evs for evs in few_seq.values() if "order.refund_failed" in evs]
    assert gave_up and all(evs.count("trade.refund_failed") == 2 for evs in gave_up)
    assert any("refund_failed" in evs for evs in gave_up)  # and the buyer's screen says so
    assert many.summary.per_class["paid_but_closed"].count == 0


def test_a_partial_refund_returns_part_of_a_completed_order_and_the_screen_follows_it():
    """user.partial_refund_probability: buyers return part of a completed order; the gateway refunds that
    part days later, the trade stays succeeded, the order completed, the ledger balanced, and the
    buyer's screen says 'refund pending' until the money is back."""
    s = Scenario().with_overrides({
        "user.payment_methods": {"wallet": 0.5, "card": 0.5}, "user.abandon_probability": 0.0,
        "bank.decline_probability": 0.0, "bank.risk_block_probability": 0.0,
        "merchant.delivery_time": "1h", "load.arrival_rate": 0.5, "run.horizon": "30m", "run.warmup": "1m",
        "run.drain": "12d", "user.partial_refund_probability": 0.3, "user.partial_refund_delay": "2h",
        "user.partial_refund_share": 0.25,
        "gateway.refund_latency": {"dist": "lognormal", "median": "3d", "p99": "7d"}})
    amount: dict[str, int] = {}
    refunded: dict[str, list] = defaultdict(list)
    screens: dict[str, list] = defaultdict(list)
    other: list[str] = []

    def tap(ev: dict) -> None:
        t = ev["type"]
        if t == "order.created":
            amount[ev["order"]] = ev["amount"]
        elif t == "ledger.txn" and ev["kind"] == "refund":
            refunded[ev["order"]].append((ev["t"], -sum(p["amount"] for p in ev["postings"] if p["amount"] < 0)))
        elif t == "app.shown" and ev["screen"].startswith("refund"):
            screens[ev["order"]].append((ev["t"], ev["screen"]))
        elif t in ("trade.refunded", "order.refund_pending", "order.refunded"):
            other.append(t)

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    assert 0.2 * len(amount) < len(refunded) < 0.4 * len(amount)
    for o, txns in refunded.items():
        assert [a for _, a in txns] == [max(1, int(amount[o] * 0.25))]
        (t_back, _), = txns
        (t_ask, first), (t_shown, last) = screens[o]
        assert (first, last) == ("refund_pending", "refunded") and t_ask < t_back <= t_shown
    assert other == []  # a part returned: neither the trade nor the order is refunded as a whole
    assert not any(v.count for v in r.summary.per_class.values())


# -- refund latency in working days (gateway.refund_working_days on the run.start calendar) ---------------

def test_working_days_skip_weekends_and_holidays():
    from datetime import date, datetime

    from sim.domain.calendar import add_working_days, working_days_delay

    friday = datetime(2026, 11, 6, 18, 0)
    assert add_working_days(friday, 1) == datetime(2026, 11, 9, 18, 0)  # Monday, same time
    assert add_working_days(friday, 0.2) == datetime(2026, 11, 6, 22, 48)
    assert add_working_days(friday, 0.5) == datetime(2026, 11, 9, 6, 0)  # Friday's last 6h, then Monday's first
    assert add_working_days(datetime(2026, 11, 7, 10, 0), 1) == datetime(2026, 11, 10, 0, 0)  # asked on Saturday
    assert add_working_days(friday, 1, frozenset({date(2026, 11, 9)})) == datetime(2026, 11, 10, 18, 0)
    assert add_working_days(datetime(2026, 11, 10, 9, 0), 7) == datetime(2026, 11, 19, 9, 0)  # Tue + 7 = Thu next week
    assert add_working_days(friday, 0) == friday
    # on the simulation clock: 6h after a Thursday-noon start is Thursday 18:00; 2 working days = Monday 18:00
    assert working_days_delay(datetime(2026, 11, 5, 12, 0), 6 * 3600.0, 2) == 4 * 86400.0


def _refund_delays(**extra):
    """(asked, landed) scenario times of every refund of the LATE scenario, and its ledger total."""
    s = Scenario().with_overrides({**LATE, "run.drain": "8d", **{k.replace("__", "."): v for k, v in extra.items()}})
    asked: dict[str, float] = {}
    spans: list[tuple[float, float]] = []

    def tap(ev: dict) -> None:
        if ev["type"] == "order.refund_pending":
            asked[ev["order"]] = ev["t"]
        elif ev["type"] == "order.refunded":
            spans.append((asked[ev["order"]], ev["t"]))

    r = run_replication(s, 0, examples=False, tap=tap)
    assert r.ledger_total == 0
    return spans


def test_a_refund_asked_on_a_friday_lands_after_the_weekend():
    """One working day: asked on a Friday evening (run.start), the money is back on Monday evening, 3
    calendar days later; asked on a Tuesday, the next day; with the Monday a holiday, on Tuesday."""
    one = {"gateway__refund_working_days": 1}
    friday = _refund_delays(run__start="2026-11-06T18:00:00", **one)
    tuesday = _refund_delays(run__start="2026-11-10T18:00:00", **one)
    holiday = _refund_delays(run__start="2026-11-06T18:00:00", run__holidays=["2026-11-09"], **one)
    assert len(friday) >= 30 and len(friday) == len(tuesday) == len(holiday)
    slack = 60.0  # the refund request's own way through the order service and the gateway
    for spans, days in ((friday, 3), (tuesday, 1), (holiday, 4)):
        for asked, landed in spans:
            assert days * 86400 <= landed - asked <= days * 86400 + slack, (days, asked, landed)


def test_two_to_seven_working_days_never_land_on_a_weekend():
    from datetime import datetime, timedelta

    start = datetime(2026, 11, 6, 18, 0)
    spans = _refund_delays(run__start=start.isoformat(), run__drain="12d",
                           gateway__refund_working_days={"dist": "uniform", "low": 2, "high": 7})
    assert len(spans) >= 30
    assert all(asked < 6 * 3600 for asked, _l in spans)  # every refund was asked on the Friday evening
    landed_on = [(start + timedelta(seconds=landed)).weekday() for _a, landed in spans]
    assert all(d < 5 for d in landed_on), landed_on
    waits = [landed - asked for asked, landed in spans]
    assert min(waits) >= 4 * 86400  # 2 working days from a Friday evening: Tuesday evening at the earliest
    assert max(waits) <= 11 * 86400 + 60  # 7 working days: the Monday after next plus a weekend


def test_working_days_are_validated_with_the_key_named():
    import pytest

    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"gateway\.refund_working_days: .*run\.start is \"off\""):
        Scenario().with_overrides({"gateway.refund_working_days": 3})
    with pytest.raises(ConfigError, match=r"run\.start: expected .*local date-time.*found 'friday'"):
        Scenario().with_overrides({"run.start": "friday"})
    with pytest.raises(ConfigError, match=r"run\.holidays: \[1\]: expected a date"):
        Scenario().with_overrides({"run.holidays": ["2026-10-01", "Oct 2"]})
    with pytest.raises(ConfigError, match=r"gateway\.refund_working_days: expected dist = one of"):
        Scenario().with_overrides({"run.start": "2026-11-06", "gateway.refund_working_days": {"dist": "normal"}})
    s = Scenario().with_overrides({"run.start": "2026-11-06", "gateway.refund_working_days": {"dist": "uniform",
                                   "low": 2, "high": 7}, "run.holidays": ["2026-11-09"]})
    from sim.scenario import scenario_from_dict

    assert s.resolved()["run"]["start"] == "2026-11-06T00:00:00"
    assert scenario_from_dict(s.resolved()) == s
    # off, the keys are echoed as off (every result records its whole resolved scenario)
    plain = Scenario().resolved()
    assert plain["run"]["start"] == "off" and plain["gateway"]["refund_working_days"] == "off"
    assert scenario_from_dict(plain) == Scenario()


def test_a_file_needing_run_start_loads_when_set_gives_it(tmp_path):
    """A file with working-day refunds and no calendar is refused on its own, and loads when --set gives
    run.start; a --set that does not repair it leaves the file's own error."""
    import pytest

    from sim.errors import ConfigError
    from sim.scenario import load_scenario

    f = tmp_path / "wd.toml"
    f.write_text('[gateway]\nrefund_working_days = { dist = "uniform", low = 2, high = 7 }\n[load]\narrival_rate = 3.0\n')
    with pytest.raises(ConfigError, match=r"wd\.toml: gateway\.refund_working_days: .*run\.start is \"off\""):
        load_scenario(f)
    with pytest.raises(ConfigError, match=r"wd\.toml: gateway\.refund_working_days: .*run\.start is \"off\""):
        load_scenario(f, ["run.seed=3"])
    s = load_scenario(f, ["run.start=2026-11-06"])
    assert s.run.start is not None and s.run.start.day == 6
    assert s.load.arrival_rate == 3.0 and s.name == "wd"


# -- make-up working days (run.workdays, 调休) ------------------------------------------------------
# The State Council's 2025 holiday notice (国办发明电〔2024〕12号): National Day and Mid-Autumn, 1-8 October
# 2025 off; Sunday 28 September and Saturday 11 October worked.
NATIONAL_DAY_OFF = frozenset(date(2025, 10, d) for d in range(1, 9))
NATIONAL_DAY_WORKED = frozenset({date(2025, 9, 28), date(2025, 10, 11)})


def test_make_up_working_days_count_and_holidays_do_not():
    from datetime import datetime

    from sim.domain.calendar import add_working_days, is_working_day

    assert is_working_day(date(2025, 9, 28), NATIONAL_DAY_OFF, NATIONAL_DAY_WORKED)  # a Sunday, worked
    assert not is_working_day(date(2025, 9, 28), NATIONAL_DAY_OFF)
    assert not is_working_day(date(2025, 10, 1), NATIONAL_DAY_OFF, NATIONAL_DAY_WORKED)
    friday = datetime(2025, 9, 26, 18, 0)
    assert add_working_days(friday, 1, NATIONAL_DAY_OFF, NATIONAL_DAY_WORKED) == datetime(2025, 9, 28, 18, 0)
    assert add_working_days(friday, 1, NATIONAL_DAY_OFF) == datetime(2025, 9, 29, 18, 0)  # no make-up day: Monday
    tuesday = datetime(2025, 9, 30, 18, 0)  # the eve of the holiday
    assert add_working_days(tuesday, 1, NATIONAL_DAY_OFF, NATIONAL_DAY_WORKED) == datetime(2025, 10, 9, 18, 0)
    assert add_working_days(tuesday, 2, NATIONAL_DAY_OFF, NATIONAL_DAY_WORKED) == datetime(2025, 10, 10, 18, 0)
    assert add_working_days(tuesday, 3, NATIONAL_DAY_OFF, NATIONAL_DAY_WORKED) == datetime(2025, 10, 11, 18, 0)
    assert add_working_days(tuesday, 3, NATIONAL_DAY_OFF) == datetime(2025, 10, 13, 18, 0)


def test_a_refund_asked_before_a_make_up_sunday_lands_on_it():
    """One working day asked on Friday 26 September 2025 evening: Sunday 28th is worked (调休), so the
    money is back on the Sunday evening, 2 days later; without run.workdays, on the Monday."""
    one = {"gateway__refund_working_days": 1, "run__start": "2025-09-26T18:00:00"}
    worked = _refund_delays(run__workdays=["2025-09-28", "2025-10-11"], **one)
    plain = _refund_delays(**one)
    assert len(worked) >= 30 and len(worked) == len(plain)
    for spans, days in ((worked, 2), (plain, 3)):
        for asked, landed in spans:
            assert days * 86400 <= landed - asked <= days * 86400 + 60.0, (days, asked, landed)


def test_workdays_are_validated_with_the_key_named():
    import pytest

    from sim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"run.*workdays: 2025-09-29 is a Monday, a working day already"):
        Scenario().with_overrides({"run.workdays": ["2025-09-29"]})
    with pytest.raises(ConfigError, match=r"run.*workdays: 2025-09-28 is also in holidays"):
        Scenario().with_overrides({"run.workdays": ["2025-09-28"], "run.holidays": ["2025-09-28"]})
    with pytest.raises(ConfigError, match=r"run\.workdays: \[0\]: expected a date"):
        Scenario().with_overrides({"run.workdays": ["Sunday"]})
    assert Scenario().resolved()["run"]["workdays"] == []
