"""The simulation's calendar and per-buyer credit at the live provider: ``gateway.refund_working_days``
(a refund lands after that many working days counted on the calendar from ``run.start``, weekends and
``run.holidays`` skipped: ``sim.domain.calendar``) and ``bnpl.buyer_credit_limit`` (each buyer account's
own limit, the first draw of the simulation's stream of that account). Real processes on loopback."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta

from sim.domain.calendar import working_days_delay
from sim.domain.population import credit_limit_stream
from sim.scenario import Scenario

from .helpers import events_of, http, new_order, start_payment, uid, wait_for


def test_refunds_land_working_days_later_skipping_the_weekend_and_holidays(start):
    """``run.start`` is a Friday 18:00, the Sunday a make-up working day (``run.workdays``) and the
    Monday a holiday: a refund of 2 working days asked on the Friday evening is due on Tuesday at the
    same time of day (Friday's last 6 h, the Sunday, Tuesday's first 18 h: 4 calendar days; without the
    Sunday it would be 5); one of 0.0002 working days (17.28 s) asked on the Friday lands that much
    later — observed."""
    s = start({"run.start": "2026-11-06T18:00:00", "run.holidays": ["2026-11-09"], "run.workdays": ["2026-11-08"],
               "gateway.refund_working_days": 2})
    friday = datetime(2026, 11, 6, 18, 0, 0)
    # `load` tells the services where the scenario's t = 0 is (the load epoch, after their own start):
    # run.start is that moment's date-time, so the services' clock origin moves back by the lead
    told = s.admin("provider", "PUT", "/admin/calendar", json={"epoch": s.start_epoch + 2.0})
    assert told.json()["origin"] == (friday - timedelta(seconds=2.0 * 60)).isoformat(), told.text
    assert s.admin("provider", "PUT", "/admin/calendar", json={"epoch": -1}).status_code == 422
    assert s.admin("provider", "PUT", "/admin/calendar", json={"epoch": s.start_epoch}).json()["origin"] == \
        friday.isoformat()

    def paid() -> tuple[str, str]:
        order = new_order(s, amount=700)["order"]
        trade = start_payment(s, order)["trade"]
        assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
        refund = http.post(f"{s.provider_url}/trades/{trade}/refund").json()
        assert refund["refund_state"] == "pending", refund
        return order, trade

    _order, trade = paid()
    with sqlite3.connect(s.data_dir / "provider.db") as db:
        asked = db.execute("SELECT created_t FROM refunds WHERE trade = ?", (trade,)).fetchone()[0]
        due = db.execute("SELECT due FROM jobs WHERE kind = 'refund_land' AND key = ?", (f"{trade}\nfull",)).fetchone()[0]
    assert (friday + timedelta(seconds=asked)).weekday() == 4  # still the Friday
    off, worked = frozenset({date(2026, 11, 9)}), frozenset({date(2026, 11, 8)})
    assert due - asked == working_days_delay(friday, asked, 2, off, worked) == 4 * 86400.0
    assert working_days_delay(friday, asked, 2, off) == 5 * 86400.0

    s.set_faults({"gateway.refund_working_days": 0.0002})
    order, trade = paid()
    with sqlite3.connect(s.data_dir / "provider.db") as db:
        asked = db.execute("SELECT created_t FROM refunds WHERE trade = ?", (trade,)).fetchone()[0]
    wait_for(lambda: any(e["type"] == "trade.refunded" for e in events_of(s, order)), timeout=5,
             what="the refund landing")
    landed = next(e for e in events_of(s, order) if e["type"] == "trade.refunded")
    assert asked + 17.28 <= landed["t"] < asked + 17.28 + 6, (landed["t"], asked)


def test_each_buyer_has_the_simulations_own_credit_limit(services):
    s = services
    over = {"bnpl.buyer_credit_limit": {"dist": "uniform", "low": 40, "high": 160}}
    s.set_faults(over)
    dist = Scenario().with_overrides(over).bnpl.buyer_credit_limit
    for account in ("a1", "a2", "a3"):
        limit = round(dist.draw(credit_limit_stream(Scenario().run.seed, 0, account)) * 100)
        buyer = uid("run") + "-" + account
        over_by_one = new_order(s, amount=limit + 1, method="bnpl", user=buyer)["order"]
        assert start_payment(s, over_by_one)["state"] == "declined", (account, limit)
        exactly = new_order(s, amount=limit, method="bnpl", user=buyer)["order"]
        assert start_payment(s, exactly)["state"] == "authorized", (account, limit)
