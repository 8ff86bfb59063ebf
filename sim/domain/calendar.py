"""Working days on a calendar: what "the refund arrives in 2–7 working days" means on a clock.

The simulation's clock counts seconds from the run's start; a PSP's refund promise counts working
days (Monday to Friday, not public holidays, and the weekend days worked instead: China's make-up
working days, 调休). :func:`working_days_delay` maps one onto the other from
the calendar date-time at which the simulated run starts: the seconds from a moment until ``days``
working days of time have passed, where only time on working days counts. A whole number of days
asked on a working day lands at the same time of day that many working days later (a refund asked
on a Friday at 18:00 for 1 working day lands on Monday at 18:00); asked on a weekend or a holiday,
the count starts at the next working day's midnight. Fractions count as that share of a day.

Pure: no clock, no I/O; the live services can share it.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

DAY = 86400.0


def is_working_day(d: date, holidays: frozenset[date] = frozenset(), workdays: frozenset[date] = frozenset()) -> bool:
    """Monday to Friday and not one of ``holidays``, or one of ``workdays`` (a Saturday or Sunday worked)."""
    return (d.weekday() < 5 or d in workdays) and d not in holidays


def add_working_days(at: datetime, days: float, holidays: frozenset[date] = frozenset(),
                     workdays: frozenset[date] = frozenset()) -> datetime:
    """The moment ``days`` working days of time after ``at`` (weekends and ``holidays`` do not count,
    ``workdays`` do).

    ``at`` is a local (naive) date-time. ``days`` must be a finite number >= 0; 0 is ``at`` itself.
    """
    if not days >= 0 or days == float("inf"):
        raise ValueError(f"expected a finite number of working days >= 0, found {days!r}")
    if days == 0:
        return at
    left = days * DAY  # working seconds still to pass
    t = at
    while True:
        midnight = datetime(t.year, t.month, t.day)
        next_midnight = midnight + timedelta(days=1)
        if is_working_day(t.date(), holidays, workdays):
            room = (next_midnight - t).total_seconds()
            if left <= room:
                return t + timedelta(seconds=left)
            left -= room
        t = next_midnight


def working_days_delay(start: datetime, now: float, days: float, holidays: frozenset[date] = frozenset(),
                       workdays: frozenset[date] = frozenset()) -> float:
    """Seconds on the simulation clock from ``now`` (seconds since ``start``, the run's calendar
    start) until ``days`` working days have passed."""
    at = start + timedelta(seconds=now)
    return (add_working_days(at, days, holidays, workdays) - at).total_seconds()
