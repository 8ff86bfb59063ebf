"""Scenario files: TOML, validated once into frozen, typed objects.

A scenario tells one story from the field (Double 11 midnight, a bank brownout, the ``mall`` close
pattern …) as data: load, user behaviour, each actor's latency, capacity and failure, the policies under
review, fault windows and thresholds. Every key has a default taken from ``docs/domain.md``; a
file states only what its story changes. ``docs/scenario.md`` documents every key.

Values are written the way people write them:

* durations: ``"250ms"``, ``"15s"``, ``"15m"``, ``"2h"``, ``"15d"`` (or ``0``);
* distributions: a table ``{dist = "exponential", mean = "60s"}``, ``{dist = "lognormal", median =
  "1s", p99 = "20s"}``, ``{dist = "constant", value = "2s"}``, ``{dist = "uniform", low = "1s", high =
  "5s"}``, ``{dist = "empirical", values = ["1s", "2s", "30s"]}``; a plain duration means a constant;
* retry schedules: ``"alipay"``, ``"wechat"``, ``"stripe"``, ``"adyen"`` or a list of gaps.

A mistake raises :class:`~sim.errors.ConfigError` with one message per problem: the file, the key
path, what was expected, what was found, and a suggestion for a misspelt key.
"""

from __future__ import annotations

import copy
import json
import difflib
import math
import random
import re
import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from sim.domain import arrivals
from sim.domain.schedules import NOTIFY_SCHEDULES
from sim.errors import ConfigError
from sim.vocabulary import ANOMALY_CLASSES  # noqa: F401  (re-exported for older imports)

# --------------------------------------------------------------------------------------------------
# Durations

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(ms|s|min|m|h|d)\s*$")
DURATION_HINT = 'a duration like "250ms", "15s", "15m", "2h" or "15d"'


def parse_duration(value: Any) -> float:
    """Seconds from ``"250ms"``, ``"15s"``, ``"15m"``, ``"2h"``, ``"15d"`` (or a bare ``0``)."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HINT}, found {value!r}")
    if isinstance(value, (int, float)):
        if value == 0:
            return 0.0
        raise ValueError(f"expected {DURATION_HINT} (with a unit), found the bare number {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"expected a non-negative duration, found {value!r}")
        m = _DURATION_RE.match(text)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected {DURATION_HINT}, found {value!r}")


def format_duration(seconds: float) -> str:
    """The shortest exact human form of a duration: 900 -> ``"15m"``, 0.25 -> ``"250ms"``."""
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        n = seconds / size
        if n >= 1 and abs(n - round(n)) < 1e-9:
            return f"{int(round(n))}{unit}"
    ms = seconds * 1000.0
    if abs(ms - round(ms)) < 1e-6:
        return f"{int(round(ms))}ms"
    return f"{seconds:.9g}s"


Duration = Annotated[float, PlainValidator(parse_duration), PlainSerializer(format_duration)]


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a probability between 0 and 1, found {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"expected a probability between 0 and 1, found {value!r}")
    return float(value)


Probability = Annotated[float, PlainValidator(_probability)]

# --------------------------------------------------------------------------------------------------
# Distributions

_Z99 = 2.3263478740408408  # standard normal quantile at 0.99


@dataclass(frozen=True)
class Dist:
    """A distribution of a non-negative quantity (seconds or CNY), sampled with a ``random.Random``.

    ``kind`` is one of ``constant``, ``exponential``, ``lognormal``, ``uniform``, ``empirical``;
    ``params`` holds the values as written (already converted to seconds/CNY).
    """

    kind: str
    params: tuple[tuple[str, Any], ...]
    unit: str = "duration"  # "duration" | "number"

    def p(self, name: str) -> Any:
        return dict(self.params)[name]

    @property
    def mean(self) -> float:
        """The distribution's mean (used for capacity planning and closed forms)."""
        k = self.kind
        if k == "constant":
            return self.p("value")
        if k == "exponential":
            return self.p("mean")
        if k == "lognormal":
            mu, sigma = self.lognormal_mu_sigma()
            return math.exp(mu + sigma * sigma / 2.0)
        if k == "uniform":
            return (self.p("low") + self.p("high")) / 2.0
        values = self.p("values")
        return sum(values) / len(values)

    def lognormal_mu_sigma(self) -> tuple[float, float]:
        median, p99 = self.p("median"), self.p("p99")
        return math.log(median), math.log(p99 / median) / _Z99

    def sampler(self, rng: Any):
        """A zero-argument function drawing from this distribution with ``rng`` (a ``random.Random``).

        Built once per stream so the simulation's hot path is one call, no dispatch.
        """
        k = self.kind
        if k == "constant":
            v = self.p("value")
            return lambda: v
        if k == "exponential":
            mean = self.p("mean")
            if mean == 0:
                return lambda: 0.0
            rate = 1.0 / mean
            expo = rng.expovariate
            return lambda: expo(rate)
        if k == "lognormal":
            mu, sigma = self.lognormal_mu_sigma()
            if rng.__class__ is random.Random:
                return _lognormal_sampler(mu, sigma, rng)
            gauss, exp = rng.gauss, math.exp  # gauss (Box-Muller, cached pair) is ~2x normalvariate
            return lambda: exp(mu + sigma * gauss(0.0, 1.0))
        if k == "uniform":
            lo, hi = self.p("low"), self.p("high")
            uni = rng.uniform
            return lambda: uni(lo, hi)
        values = self.p("values")
        choice = rng.choice
        return lambda: choice(values)

    _f = None  # this object's drawer once it has drawn (not a field: no annotation; never pickled)

    def draw(self, rng: Any) -> float:
        """One value drawn with ``rng`` (for one-off draws; hot paths keep a :meth:`sampler`)."""
        f = self._f
        if f is None:  # first draw of this object (a cache keyed by the frozen dataclass cost ~0.2 µs a draw
            f = self._drawer()  # to hash it, and kept every Dist ever drawn from alive)
            object.__setattr__(self, "_f", f)
        return f(rng)

    def __getstate__(self) -> dict[str, Any]:
        """The fields alone: a drawer is a closure, rebuilt after unpickling (processes, Dask workers)."""
        state = self.__dict__
        return {k: v for k, v in state.items() if k != "_f"} if "_f" in state else state

    def _drawer(self):
        """``rng -> value``: the same calls on ``rng`` as :meth:`sampler`, parameters read once."""
        k = self.kind
        if k == "constant":
            v = self.p("value")
            return lambda rng: v
        if k == "exponential":
            mean = self.p("mean")
            if mean == 0:
                return lambda rng: 0.0
            rate = 1.0 / mean
            return lambda rng: rng.expovariate(rate)
        if k == "lognormal":
            mu, sigma = self.lognormal_mu_sigma()
            exp = math.exp
            plain = _lognormal_draw(mu, sigma)
            return lambda rng: plain(rng) if rng.__class__ is random.Random else exp(mu + sigma * rng.gauss(0.0, 1.0))
        if k == "uniform":
            lo, hi = self.p("low"), self.p("high")
            return lambda rng: rng.uniform(lo, hi)
        values = self.p("values")
        return lambda rng: rng.choice(values)

    def scaled(self, factor: float) -> "Dist":
        """The same shape with every value multiplied by ``factor`` (used by fault windows and time scaling)."""
        params = tuple(
            (n, tuple(x * factor for x in v) if isinstance(v, tuple) else v * factor) for n, v in self.params
        )
        return Dist(self.kind, params, self.unit)


def _lognormal_draw(mu: float, sigma: float):
    """``rng -> exp(mu + sigma * rng.gauss(0.0, 1.0))`` for a ``random.Random``, with CPython's
    ``Random.gauss`` inlined (Box-Muller, the pair's second value kept in ``gauss_next``): the same
    calls on the stream, the same value (``0.0 + z * 1.0`` is ``z``), one Python call fewer."""
    exp, log, sqrt, cos, sin, twopi = math.exp, math.log, math.sqrt, math.cos, math.sin, 2.0 * math.pi

    def draw(rng: random.Random) -> float:
        z = rng.gauss_next
        rng.gauss_next = None
        if z is None:
            rand = rng.random
            x2pi = rand() * twopi
            g2rad = sqrt(-2.0 * log(1.0 - rand()))
            z = cos(x2pi) * g2rad
            rng.gauss_next = sin(x2pi) * g2rad
        return exp(mu + sigma * z)

    return draw


def _lognormal_sampler(mu: float, sigma: float, rng: random.Random):
    """:func:`_lognormal_draw` bound to one stream (a :meth:`Dist.sampler`)."""
    exp, log, sqrt, cos, sin, twopi = math.exp, math.log, math.sqrt, math.cos, math.sin, 2.0 * math.pi
    rand = rng.random

    def draw() -> float:
        z = rng.gauss_next
        rng.gauss_next = None
        if z is None:
            x2pi = rand() * twopi
            g2rad = sqrt(-2.0 * log(1.0 - rand()))
            z = cos(x2pi) * g2rad
            rng.gauss_next = sin(x2pi) * g2rad
        return exp(mu + sigma * z)

    return draw


_DIST_KEYS = {
    "constant": ("value",),
    "exponential": ("mean",),
    "lognormal": ("median", "p99"),
    "uniform": ("low", "high"),
    "empirical": ("values",),
}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a non-negative number, found {value!r}")
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"expected a non-negative number, found {value!r}")
    return float(value)


def _make_dist(value: Any, unit: str) -> Dist:
    parse = parse_duration if unit == "duration" else _number
    what = DURATION_HINT if unit == "duration" else "a number"
    if isinstance(value, Dist):
        return value
    if not isinstance(value, dict):
        if unit == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return Dist("constant", (("value", _number(value)),), unit)
        try:
            return Dist("constant", (("value", parse(value)),), unit)
        except ValueError:
            raise ValueError(
                f"expected {what} or a distribution table such as "
                f'{{dist = "exponential", mean = "60s"}}, found {value!r}'
            ) from None
    kind = value.get("dist")
    if kind not in _DIST_KEYS:
        hint = _suggest(str(kind), _DIST_KEYS) if isinstance(kind, str) else ""
        raise ValueError(f"expected dist = one of {', '.join(_DIST_KEYS)}, found dist = {kind!r}{hint}")
    wanted = _DIST_KEYS[kind]
    for key in value:
        if key != "dist" and key not in wanted:
            raise ValueError(
                f"unknown key {key!r} for a {kind} distribution (expected {', '.join(wanted)})"
                f"{_suggest(key, wanted)}"
            )
    params: list[tuple[str, Any]] = []
    for key in wanted:
        if key not in value:
            raise ValueError(f"missing key {key!r} for a {kind} distribution (expected {', '.join(wanted)})")
        raw = value[key]
        try:
            if key == "values":
                if not isinstance(raw, list) or not raw:
                    raise ValueError(f"expected a non-empty list, found {raw!r}")
                params.append((key, tuple(parse(v) for v in raw)))
            else:
                params.append((key, parse(raw)))
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    d = Dist(kind, tuple(params), unit)
    if kind == "lognormal":
        if d.p("median") <= 0:
            raise ValueError(f"median: expected a positive value, found {value['median']!r}")
        if d.p("p99") <= d.p("median"):
            raise ValueError(f"p99 must be larger than median, found median={value['median']!r}, p99={value['p99']!r}")
    if kind == "uniform" and d.p("high") < d.p("low"):
        raise ValueError(f"high must be >= low, found low={value['low']!r}, high={value['high']!r}")
    return d


def _dump_dist(d: Dist) -> Any:
    fmt = format_duration if d.unit == "duration" else (lambda x: x)
    if d.kind == "constant":
        return fmt(d.p("value"))
    out: dict[str, Any] = {"dist": d.kind}
    for name, v in d.params:
        out[name] = [fmt(x) for x in v] if isinstance(v, tuple) else fmt(v)
    return out


DurationDist = Annotated[Dist, PlainValidator(lambda v: _make_dist(v, "duration")), PlainSerializer(_dump_dist)]
NumberDist = Annotated[Dist, PlainValidator(lambda v: _make_dist(v, "number")), PlainSerializer(_dump_dist)]

# --------------------------------------------------------------------------------------------------
# Retry schedules


@dataclass(frozen=True)
class Schedule:
    """A retry schedule: the gaps (seconds) between attempts; the first attempt is immediate."""

    name: str | None
    gaps: tuple[float, ...]


def _make_schedule(value: Any) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        if value in NOTIFY_SCHEDULES:
            return Schedule(value, NOTIFY_SCHEDULES[value])
        raise ValueError(
            f"expected a named schedule ({', '.join(NOTIFY_SCHEDULES)}) or a list of durations, "
            f"found {value!r}{_suggest(value, NOTIFY_SCHEDULES)}"
        )
    if isinstance(value, list):
        gaps = []
        for i, v in enumerate(value):
            try:
                gaps.append(parse_duration(v))
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return Schedule(None, tuple(gaps))
    raise ValueError(
        f"expected a named schedule ({', '.join(NOTIFY_SCHEDULES)}) or a list of durations, found {value!r}"
    )


def _dump_schedule(s: Schedule) -> Any:
    return s.name if s.name else [format_duration(g) for g in s.gaps]


RetrySchedule = Annotated[Schedule, PlainValidator(_make_schedule), PlainSerializer(_dump_schedule)]


def _duration_or_off(value: Any) -> float | None:
    if value in ("off", None):
        return None
    return parse_duration(value)


DurationOrOff = Annotated[
    float | None,
    PlainValidator(_duration_or_off),
    PlainSerializer(lambda v: "off" if v is None else format_duration(v)),
]

def _dist_or_off(value: Any) -> Dist | None:
    if value in ("off", None):
        return None
    return _make_dist(value, "duration")


DurationOrOffDist = Annotated[
    Dist | None,
    PlainValidator(_dist_or_off),
    PlainSerializer(lambda v: "off" if v is None else _dump_dist(v)),
]

def _count_or_off(value: Any) -> int | None:
    if value in ("off", None):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'expected "off" or a whole number >= 0, found {value!r}')
    return value


CountOrOff = Annotated[int | None, PlainValidator(_count_or_off), PlainSerializer(lambda v: "off" if v is None else v)]


def _number_dist_or_off(value: Any) -> Dist | None:
    if value in ("off", None):
        return None
    return _make_dist(value, "number")


NumberOrOffDist = Annotated[
    Dist | None,
    PlainValidator(_number_dist_or_off),
    PlainSerializer(lambda v: "off" if v is None else _dump_dist(v)),
]


CALENDAR_HINT = 'a local date-time like "2026-11-06T18:00:00" (or a date, "2026-11-06": its midnight)'


def _start_or_off(value: Any) -> datetime | None:
    """The calendar date-time of the simulation's t = 0: a TOML date-time or date, or the ISO text."""
    if value in ("off", None):
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f'expected "off" or {CALENDAR_HINT}, found {value!r}') from None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise ValueError(f"expected {CALENDAR_HINT} without a time zone (working days are local days), "
                             f"found {value.isoformat()!r}")
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    raise ValueError(f'expected "off" or {CALENDAR_HINT}, found {value!r}')


StartOrOff = Annotated[
    datetime | None,
    PlainValidator(_start_or_off),
    PlainSerializer(lambda v: "off" if v is None else v.isoformat()),
]


def _holidays(value: Any) -> tuple[date, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f'expected a list of dates like ["2026-10-01", "2026-10-02"], found {value!r}')
    out = []
    for i, v in enumerate(value):
        if isinstance(v, str):
            try:
                v = date.fromisoformat(v.strip())
            except ValueError:
                raise ValueError(f'[{i}]: expected a date like "2026-10-01", found {v!r}') from None
        if isinstance(v, datetime) or not isinstance(v, date):
            raise ValueError(f'[{i}]: expected a date like "2026-10-01", found {v!r}')
        out.append(v)
    return tuple(sorted(set(out)))


Holidays = Annotated[
    tuple[date, ...],
    PlainValidator(_holidays),
    PlainSerializer(lambda v: [d.isoformat() for d in v]),
]

# --------------------------------------------------------------------------------------------------
# The schema


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _ln(median: str, p99: str) -> dict[str, str]:
    return {"dist": "lognormal", "median": median, "p99": p99}


class RunSection(_Section):
    """How long and how often to run."""

    seed: int = Field(20261111, ge=0, description="root seed; every random stream is derived from it")
    replications: int = Field(5, ge=1, le=10_000, description="independent replications (confidence intervals)")
    horizon: Duration = Field("1h", description="arrivals stop here")
    drain: Duration = Field(
        "26h",
        description="run on after the horizon so in-flight orders can end (Alipay retries notifications for ~25h)",
    )
    warmup: Duration = Field("5m", description="orders created before this are not counted in rates")
    start: StartOrOff = Field(
        "off", description='the calendar date-time (local) at which the simulated run starts, for what counts '
        'in working days (gateway.refund_working_days), or "off": no calendar')
    holidays: Holidays = Field(
        (), description='dates (["2026-10-01", ...]) that are not working days besides Saturdays and Sundays')
    workdays: Holidays = Field(
        (), description='Saturdays and Sundays (["2025-09-28", "2025-10-11"]) that are working days: make-up '
        'working days (调休), as China\'s State Council sets around public holidays')

    @model_validator(mode="after")
    def _calendar(self) -> "RunSection":
        both = sorted(set(self.holidays) & set(self.workdays))
        if both:
            raise ValueError(f"workdays: {both[0].isoformat()} is also in holidays: a day is one or the other")
        weekday = next((d for d in self.workdays if d.weekday() < 5), None)
        if weekday is not None:
            raise ValueError(f"workdays: {weekday.isoformat()} is a {weekday.strftime('%A')}, a working day already: "
                             "workdays lists Saturdays and Sundays that are worked (make-up working days)")
        return self

    @model_validator(mode="after")
    def _warmup_before_horizon(self) -> "RunSection":
        if self.warmup >= self.horizon:
            raise ValueError(
                f"warmup must be shorter than horizon, found warmup={format_duration(self.warmup)}, "
                f"horizon={format_duration(self.horizon)}"
            )
        return self


class ProfileStep(_Section):
    """A profile point: from ``at`` on the rate is ``arrival_rate × multiplier`` (a step), or, with
    ``ramp = true``, the rate moves linearly from the point before (1 at t = 0) to reach it at ``at``."""

    at: Duration = Field(description="from this time on (a ramp: by this time)")
    multiplier: float = Field(ge=0.0, description="the arrival rate is multiplied by this")
    ramp: bool = Field(False, strict=True, description="reach this multiplier linearly from the point before, instead of a step")


class LoadSection(_Section):
    """Arrivals: a Poisson process whose rate is ``arrival_rate × profile multiplier``."""

    arrival_rate: float = Field(20.0, gt=0.0, le=10_000_000, description="orders per second at multiplier 1")
    profile: tuple[ProfileStep, ...] = Field(
        (), description="multipliers over time: steps, or linear ramps between points (`ramp = true`)")

    @field_validator("profile")
    @classmethod
    def _sorted(cls, v: tuple[ProfileStep, ...]) -> tuple[ProfileStep, ...]:
        ats = [s.at for s in v]
        if ats != sorted(ats):
            raise ValueError("profile steps must be in increasing order of `at`")
        return v

    def _points(self) -> list[tuple[float, float, bool]]:
        return [(s.at, s.multiplier, s.ramp) for s in self.profile]

    def multiplier_at(self, t: float) -> float:
        return arrivals.multiplier_at(self._points(), t)

    def rate_pieces(self, horizon: float) -> list[arrivals.Piece]:
        """The arrival rate over ``[0, horizon)`` (``sim.domain.arrivals``: shared by both clocks)."""
        return arrivals.pieces(self.arrival_rate, self._points(), horizon)

    def peak_multiplier(self) -> float:
        return max([1.0] + [s.multiplier for s in self.profile]) if self.profile else 1.0

    def peak_rate(self, horizon: float) -> float:
        """The highest arrival rate (per scenario second) before ``horizon``."""
        return max((max(p.rate0, p.rate1) for p in self.rate_pieces(horizon)), default=self.arrival_rate)


class PaymentMethods(_Section):
    """The buyers' mix of payment methods. A table written in a file (or given whole to ``--set``) is the
    whole mix: a method it leaves out has share 0 (``{wallet = 1.0}`` is wallet only), never a default."""

    wallet: Probability = 0.6
    card: Probability = 0.3
    bnpl: Probability = 0.1

    @model_validator(mode="before")
    @classmethod
    def _written_table_is_the_mix(cls, data: Any) -> Any:
        if isinstance(data, dict) and data:
            return {"wallet": 0.0, "card": 0.0, "bnpl": 0.0, **data}
        return data

    @model_validator(mode="after")
    def _sum_to_one(self) -> "PaymentMethods":
        total = self.wallet + self.card + self.bnpl
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"payment method shares must sum to 1, found {total:g} (wallet {self.wallet:g}, card "
                f"{self.card:g}, bnpl {self.bnpl:g}); write the whole mix, methods left out are 0, e.g. "
                "{wallet = 0.7, card = 0.3} (on the command line: --set 'user.payment_methods={wallet=0.7, card=0.3}')")
        return self


class UserSection(_Section):
    """The buyer: how they pay, wait, give up and try again."""

    payment_methods: PaymentMethods = Field(PaymentMethods(), description="shares of wallet, card and bnpl, summing to 1; a table is the whole mix (methods left out are 0)")
    pay_delay: DurationDist = Field(_ln("20s", "5m"), description="order created -> buyer confirms payment")
    abandon_probability: Probability = Field(0.1, description="the buyer never pays")
    order_amount: NumberDist = Field({"dist": "lognormal", "median": 89, "p99": 2000}, description="CNY")
    retry_probability: Probability = Field(0.5, description="the buyer tries again after a failure or timeout")
    max_retries: int = Field(2, ge=0, le=20, description="payment attempts after the first")
    retry_delay: DurationDist = Field(_ln("10s", "2m"), description="think time before a retry")
    poll_interval: Duration = Field("3s", description="after 'unknown' the app polls the order this often")
    poll_duration: Duration = Field("60s", description="... for this long (Alipay barcode pay: ~60s)")
    cancel_probability: Probability = Field(0.0, description="an unpaid buyer cancels instead of walking away")
    wallet_balance: NumberOrOffDist = Field(
        "off", description='CNY in a wallet buyer\'s balance (a distribution), or "off" (always enough): a debit '
        'larger than the balance is declined, and stays declined on every retry (the balance persists)')
    partial_refund_probability: Probability = Field(
        0.0, description="a buyer whose (wallet or card) order was completed asks for part of the money back (one "
        "item returned, a return the platform's customer service agreed to: seed 003 allows a refund after "
        "completion only that way), decided with their other choices")
    partial_refund_share: float = Field(0.3, gt=0.0, lt=1.0, description="the part of the order's amount a partial refund returns")
    partial_refund_delay: DurationDist = Field("1d", description="order completed -> the buyer asks for the partial refund")
    after_sales_probability: Probability = Field(
        0.0, description="a paying buyer (any method; a pay-after-use order's agreement is cancelled while nothing is collected, its collected amount refunded otherwise: docs/domain.md, 'After-sales of a pay-after-use order') asks, after paying, for the order to be cancelled and refunded "
        "(seed 003's after-sales: what the request becomes depends on the order's state when it is sent), drawn "
        "from an after-sales stream of the buyer's own")
    after_sales_delay: DurationDist = Field("30m", description="order paid -> the buyer sends the after-sales request")
    accounts: CountOrOff = Field(
        "off", description='arrivals are buyers drawn (uniformly) from this many accounts, so a balance, card line, '
        'daily limit, risk status and BNPL debt carry over to the same buyer\'s next order; "off": every arrival '
        'is a new buyer')
    card_limit: NumberOrOffDist = Field(
        "off", description='CNY left on a card buyer\'s credit line (per buyer, a distribution), or "off": approved '
        'card debits use it up, and a debit larger than what is left is declined on every retry and order')
    daily_limit: NumberOrOffDist = Field(
        "off", description='CNY a buyer may pay per day, wallet and card together (per buyer), or "off": a debit '
        'that would pass it is refused (bank outcome limit) until the next day')
    risk_flagged: Probability = Field(
        0.0, description="share of buyers risk control has flagged: every debit of theirs is risk-blocked, on "
        "every retry and every order")
    top_up_delay: DurationOrOffDist = Field(
        "off", description='a wallet buyer whose debit was declined for want of balance tops the wallet up (a fresh '
        'wallet_balance) this long later, or "off" (never): until then every retry and order is declined again')
    refund_restores: bool = Field(
        False, description="a refund that lands (in full, in part, or a reversed debit) gives its amount back to the "
        "buyer's wallet balance or card line (user.wallet_balance, user.card_limit), so a buyer it emptied can pay "
        "again; false: the account does not see refunds")


class AppSection(_Section):
    """The app between the buyer and the servers."""

    network_latency: DurationDist = Field(_ln("30ms", "300ms"), description="one way, app <-> servers")
    request_timeout: Duration = Field("15s", description="Alipay SDK read timeout")
    retry_trade_no: Literal["reuse", "new"] = Field("reuse", description="a retry reuses the trade number, or not")
    cashier_closes_at_expiry: bool = Field(True, description="the cashier countdown stops payment at the order TTL")
    request_retry_schedule: RetrySchedule = Field(
        [], description="the app re-sends a create-order or pay request that timed out or was refused (503, queue "
        "full) after these gaps (the same request: same trade number); [] = never")
    order_page_request: bool = Field(
        False, description="before a retry the app reloads the order page: a request (network both ways, "
        "request_timeout, order_service.read_time) answered from the read replica (order_service.read_lag), so a "
        "stale page can offer to pay an order already paid; a page that does not load shows 'payment_unknown'. "
        "false: the app knows the order's state at once")


class OrderServiceSection(_Section):
    """The platform's order service: TTL, the close job and its policy, late payments, capacity."""

    order_ttl: Duration = Field("30m", description="unpaid orders close after this (litemall 30m, Taobao flash sale 15m)")
    close_policy: Literal["naive", "query_then_close", "close_trade_then_order"] = Field(
        "naive", description="naive: close on the timer; query_then_close: ask the gateway first; "
        "close_trade_then_order: close the gateway trade first, keep the order if it is already paid")
    late_payment: Literal["ignore", "auto_refund", "reopen"] = Field(
        "ignore", description="a payment for a closed order: acknowledge and ignore (mall), refund it, or reopen (litemall)")
    close_mode: Literal["timer", "sweep"] = Field("timer", description="per-order timer, or a periodic sweep")
    sweep_interval: Duration = Field("10m", description="macrozheng/mall sweeps every 10 minutes")
    release_stock_on_close: bool = Field(True, description="closing an order returns its stock")
    read_lag: DurationDist = Field(
        "0s", description="the app's order-status reads are served by a replica this far behind the primary "
        "(per read): the buyer can see 'awaiting payment' after the order was paid")
    read_time: DurationOrOffDist = Field(
        "off", description='an order-status read (the app\'s poll, its order page) takes an order-service worker '
        'this long, queueing with creates and notifications (queue_limit, deadlines, load_shedding apply); a read '
        'refused or unanswered within app.request_timeout leaves the app polling on \'payment_unknown\'. "off": '
        'reads cost the pool nothing')
    order_lock: bool = Field(
        True, description="the notification handler and the close job lock the order (row lock or version check) "
        "between reading and writing it; false: a write decided on a stale read overwrites what another wrote "
        "meanwhile (the close job's lost update of a 'paid', two handlers of one notification both fulfilling)")
    pass_time_expire: bool = Field(
        False, description="trades are created with time_expire = the order's expiry, so a pay link opened "
        "later cannot outlive the order (else they live gateway.trade_ttl)")
    close_write_delay: DurationDist = Field(
        "0s", description="close job: it read the expired order, it writes it closed this long after "
        "(the rest of its transaction: stock, coupons); a notification handled inside it races the close")
    notify_outage_every: DurationOrOffDist = Field(
        "off", description='the endpoint the gateway posts its notifications to (notify_url) goes down: time from '
        'the end of one outage to the start of the next (a distribution, e.g. {dist = "exponential", mean = "30m"}), '
        'or "off". While it is down every delivery attempt fails and waits for the next one on '
        'gateway.notify_schedule; the close job and the app\'s reads go on. Drawn once per run from a stream of '
        'its own (a fault window does not change them); live, the mock provider meets the same outages')
    notify_outage_duration: DurationDist = Field(
        _ln("3m", "20m"), description="how long one outage of the notification endpoint lasts (a deploy, pods "
        "restarted at the peak, an ingress or certificate change)")
    workers: int = Field(16, ge=1, le=100_000, description="concurrent requests (create order, notifications); a "
                         "create holds its worker while its prepay call to the gateway is in flight")
    service_time: DurationDist = Field({"dist": "exponential", "mean": "5ms"}, description="per notification or query")
    create_time: DurationOrOffDist = Field(
        "off", description='creating an order is a request from the app taking a worker this long (then, with '
        'gateway.create_time on, the worker waits for the gateway\'s prepay), or "off" (instant at the buyer\'s '
        'arrival, no worker, no prepay request)')
    gateway_timeout: Duration = Field(
        "10s", description="the create handler waits this long for the gateway's prepay answer (its worker held); "
        "past it the order is answered without a trade, created when the buyer pays")
    queue_limit: CountOrOff = Field("off", description='requests waiting for a worker beyond which a new one is refused, or "off" (unbounded)')
    deadlines: bool = Field(
        False, description="server-side deadlines: a request (create order, notification) whose caller has given "
        "up by the time a worker takes it is dropped, not executed")
    job_calls_take_worker: bool = Field(
        False, description="the close job's and the refunds' calls to the gateway (query, close, refund) hold one of "
        "the workers for their round trip, as the jobs run in the service's own pool: they then compete with "
        "notifications and order creation (a job that finds the queue full or is shed tries again 1 min later); "
        "false: they take no worker")
    load_shedding: bool = Field(False, description="answer 503 at once while shed_limit requests are in flight")
    shed_limit: int = Field(32, ge=1, description="load shedding: requests in flight (running and queued) at which new ones get 503")
    stuck_grace: Duration = Field("1h", description="an order or trade undecided this long past its deadline is stuck")
    refund_retry_schedule: RetrySchedule = Field(
        ["10s", "30s", "1m", "2m", "5m", "10m", "30m", "1h", "2h", "6h", "12h", "24h"],
        description="gaps between refund attempts while the gateway fails, refuses or does not answer (simulation "
        "and live checkout); once spent the order is refund_failed (a person must act)")


class GatewaySection(_Section):
    """The payment gateway: worker pool, bank-call timeout, trade lifetime, the notifier."""

    workers: int = Field(64, ge=1, le=1_000_000, description="requests served at once (pay, query, close, refund, "
                         "prepay); a pay holds its worker while its bank call is in flight (up to timeout)")
    service_time: DurationDist = Field({"dist": "exponential", "mean": "20ms"}, description="per request, excluding the bank call")
    create_time: DurationOrOffDist = Field(
        "off", description='trade creation (prepay, trade_creation = on_order): a request from the order service\'s '
        'create handler (order_service.create_time on) taking a worker this long, or "off" (instant, no worker)')
    queue_limit: CountOrOff = Field("off", description='requests waiting for a worker beyond which a new one is refused, or "off" (unbounded)')
    deadlines: bool = Field(
        False, description="server-side deadlines: a request whose caller has given up (app.request_timeout, "
        "order_service.gateway_timeout) by the time a worker takes it is dropped, not executed")
    load_shedding: bool = Field(False, description="answer 503 at once while shed_limit requests are in flight")
    shed_limit: int = Field(128, ge=1, description="load shedding: requests in flight (running and queued) at which new ones get 503")
    timeout: Duration = Field("8s", description="bank call timeout; the trade becomes 'unknown' (WeChat read 8s)")
    trade_ttl: Duration = Field("15d", description="Alipay timeout_express default")
    notify_schedule: RetrySchedule = Field("alipay", description="gaps between notification attempts until acknowledged")
    notify_latency: DurationDist = Field(_ln("200ms", "5s"), description="gateway -> order service, per attempt")
    notify_loss: Probability = Field(0.0, description="chance one delivery attempt is lost")
    notify_duplicate: Probability = Field(0.0, description="chance one attempt is delivered twice")
    notify_ack_timeout: Duration = Field("5s", description="an attempt not acknowledged within this counts as failed")
    refund_latency: DurationDist = Field(
        "0s", description="a refund accepted -> the money is back with the buyer (2-7 working days by method)")
    refund_working_days: NumberOrOffDist = Field(
        "off", description='a refund accepted -> the money is back after this many working days (a number or a '
        'distribution, e.g. {dist = "uniform", low = 2, high = 7}), counted on the calendar from run.start: '
        'Saturdays, Sundays and run.holidays do not count (run.workdays do); replaces refund_latency. "off": refund_latency. '
        'Live: where the mock provider applies refund_latency (its native API, Stripe refunds)')
    refund_failure: Probability = Field(0.0, description="chance one refund attempt fails (WeChat ABNORMAL)")
    trade_creation: Literal["on_order", "on_open"] = Field(
        "on_order", description="on_order: the trade exists from order creation (prepay); on_open: a page-pay "
        "or QR trade is created when the buyer opens or scans it (a close before that answers 'does not exist' "
        "and the link stays payable)")
    min_close_age: Duration = Field("0s", description="a trade younger than this cannot be closed (WeChat Pay: 5m)")
    late_approval: Literal["ignore", "reverse"] = Field(
        "ignore", description="a debit the bank approves after its trade was closed: left to reconciliation "
        "(ignore), or reversed by the gateway at once (reverse)")
    bank_query_schedule: RetrySchedule = Field(
        ["60s", "5m", "5m", "5m", "5m"], description="the gateway re-queries an 'unknown' debit (Hyperswitch)"
    )
    late_response: Literal["heard", "dropped"] = Field(
        "heard", description="a bank answer that comes after the gateway's timeout: still heard (heard), or lost "
        "with the connection the timeout closed (dropped: only the gateway's query learns what the bank did)")


class BankSection(_Section):
    """Banks and wallet balances: channels, latency, declines, risk control, lost responses."""

    channels: int = Field(200, ge=1, le=1_000_000, description="concurrent debits; queueing beyond adds latency")
    latency: DurationDist = Field(_ln("150ms", "2s"), description="one debit or query, once a channel is free")
    decline_probability: Probability = Field(0.08, description="card-not-present approval is ~85-92%")
    risk_block_probability: Probability = Field(0.005, description="risk control refuses the debit")
    risk_hold_probability: Probability = Field(0.0, description="risk control holds a debit, then releases it")
    risk_hold_duration: DurationDist = Field(_ln("10m", "2h"), description="how long a held debit waits before it goes through")
    single_payment_limit: float = Field(50_000.0, gt=0, description="CNY; larger payments are declined")
    risk_freeze_after: CountOrOff = Field(
        "off", description='risk control freezes a buyer after this many refused debits in one day (declined, '
        'blocked, over a limit): their later debits that day are risk-blocked, or "off"')
    risk_hold_after: CountOrOff = Field(
        "off", description='risk control holds a buyer\'s debit for review (risk_hold_duration, then it goes '
        'through) once this many of their debits were refused that day (a velocity rule: retries after declines '
        'trip it), or "off"')
    response_loss: Probability = Field(0.0, description="the debit completes but its response never reaches the gateway")
    queue_limit: CountOrOff = Field("off", description='debits and queries waiting for a channel beyond which a new one is refused, or "off"')
    deadlines: bool = Field(
        False, description="server-side deadlines: a debit whose caller (the gateway) has given up (gateway.timeout) "
        "by the time a channel takes it is not executed; a later query learns it expired")
    deadline_margin: Duration = Field(
        "0s", description="with deadlines: a debit reaching a channel with less than this left before the gateway "
        "gives up is not executed either (it could not answer in time: set it near the latency's p99)")


class MerchantProfile(_Section):
    """One merchant of the population: its share of orders and how its integration sends BNPL finish."""

    name: str = Field(min_length=1, description="the merchant's id (``merchant:<name>`` in the ledger)")
    share: float = Field(gt=0.0, le=1.0, description="share of orders; the population's shares sum to 1")
    finish: Literal["sync", "batch", "queue"] = Field(
        "sync", description="sync: finish from the delivery event; batch: a job every batch_interval, "
        "skipped while the previous run still runs; queue: a message queue whose worker loses what it "
        "holds in memory when it restarts")
    batch_interval: Duration = Field("6h", description="batch: how often the finish job runs")
    batch_item_time: DurationDist = Field("2s", description="batch: one finish call of a run (the run is sequential)")
    restart_every: DurationOrOffDist = Field(
        "off", description='queue: time between the worker\'s restarts (a distribution), or "off"')
    cancel_agree: Probability = Field(
        1.0, description="after-sales: asked to cancel a paid, unshipped order, the merchant agrees (cancels and "
        "refunds); else it refuses")
    defect_rate: Probability = Field(
        0.0, description="after-sales: share of this merchant's goods with a serious quality defect; a refund "
        "asked for a shipped order is granted (by customer service) only for these")
    answer_time: DurationDist = Field(
        "1h", description="after-sales: the buyer's request -> the merchant's (or customer service's) answer")
    cancel_check: Literal["at_answer", "at_request"] = Field(
        "at_answer", description="after-sales: the order state the merchant's cancel answer is based on: read when "
        "it answers (a shipment meanwhile: refused), or the one read when the request came in (a stale read: a "
        "request that raced the shipment is refunded and the goods are gone)")

    @model_validator(mode="after")
    def _gt_zero_interval(self) -> "MerchantProfile":
        if self.batch_interval <= 0:
            raise ValueError("batch_interval must be longer than 0s")
        return self


class MerchantSection(_Section):
    """Merchants: the population, delivery and the BNPL finish call."""

    population: tuple[MerchantProfile, ...] = Field(
        (MerchantProfile(name="m1", share=1.0),),
        description="the merchants, each with its share, finish integration (finish, batch_interval, "
        "batch_item_time, restart_every) and after-sales answers (cancel_agree, defect_rate, answer_time, "
        "cancel_check = at_answer | at_request) (a list of tables)")
    ship_time: DurationDist = Field("0s", description="paid -> shipped (待发货 -> 待收货): the window in which a paid "
                                    "order is cancelled by asking the merchant")
    delivery_time: DurationDist = Field(_ln("2h", "24h"), description="shipped -> goods delivered (every order)")
    bnpl_finish_delay: DurationDist = Field(_ln("10m", "6h"), description="delivered -> merchant calls finish (sync), or the queue worker sends it (queue)")
    bnpl_finish_failure: Probability = Field(0.01, description="chance one finish call fails")
    bnpl_finish_forget: Probability = Field(
        0.0, description="deprecated, ignored by the simulation and by the live reference checkout (finish "
        "losses come from the population's integrations: queue restarts, skipped batch runs, spent retries)")
    bnpl_finish_retries: int = Field(3, ge=0, le=100, description="retries of a failed finish call")
    bnpl_finish_retry_delay: DurationDist = Field("10m", description="between finish retries")
    finish_outbox: bool = Field(False, description="queue merchants write finish messages to a durable outbox: a restarted worker sends again what it held")
    batch_paused: bool = Field(
        False, description="the big-promotion plan (大促预案) pauses lower-priority jobs: a batch merchant's finish "
        "run due while this is true is skipped and its orders wait for the next run; set it in a [[faults]] window "
        "for the peak (simulation and live)")

    @field_validator("population")
    @classmethod
    def _shares(cls, v: tuple[MerchantProfile, ...]) -> tuple[MerchantProfile, ...]:
        if not v:
            raise ValueError("expected at least one merchant")
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"merchant names must be unique, found {names}")
        total = sum(m.share for m in v)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"merchant shares must sum to 1, found {total:g}")
        return v


class BnplSection(_Section):
    """The BNPL (pay after use) provider: credit, sync lag, deductions, compensation."""

    credit_limit: float = Field(
        3000.0, gt=0, description="CNY per buyer: an authorization is declined when it and what the buyer still "
        "owes on earlier agreements (authorized, not yet paid back) pass it")
    buyer_credit_limit: NumberOrOffDist = Field(
        "off", description='CNY: a credit limit of each buyer\'s own (a distribution drawn once per buyer account, '
        'from a stream of its own), used instead of credit_limit, or "off": every buyer has credit_limit. '
        'Live too: the mock provider draws the same limit per account')
    authorization_ttl: Duration = Field("28d", description="Klarna: 28 days")
    sync_lag: DurationDist = Field(_ln("2s", "1m"), description="provider payment side -> credit side")
    finish_limit: Duration = Field("24h", description="delivered but not finished after this = stuck")
    deduction_failure: Probability = Field(
        0.05, description='chance one deduction fails (low balance), drawn per attempt; read only with '
        'deduction_source = "draw"')
    deduction_source: Literal["draw", "wallet", "wallet_then_card"] = Field(
        "draw", description='where a deduction (代扣) takes the money from: "draw" = each attempt fails with '
        'deduction_failure, independently; "wallet" = from the buyer\'s wallet balance (user.wallet_balance, '
        'which must be on): it fails when the balance is short of the amount — spent on the buyer\'s other '
        'orders, or never enough — and stays short on every retry until the buyer tops up (user.top_up_delay); '
        '"wallet_then_card" = the wallet, and when it is short the buyer\'s card line (user.card_limit, which '
        'must be on too), as WeChat Pay polls a buyer\'s other payment methods in turn: it fails only when '
        'both are short. deduction_failure is read only with "draw". Live too: the mock provider deducts from '
        'the same account')
    deduction_retry_schedule: RetrySchedule = Field(["1h", "6h", "24h"], description="gaps between deduction attempts")
    compensation_after: Duration = Field("48h", description="Alipay compensates the merchant after 24-72h")
    user_repay_delay: DurationDist = Field(_ln("12h", "3d"), description="failed deduction -> buyer repays by hand")


class ReconciliationSection(_Section):
    """Reconciliation against the bank statement: how often, how stale, what it repairs."""

    interval: DurationOrOff = Field("off", description='"off", or how often the reconciler runs ("1h", "1d")')
    statement_delay: Duration = Field("0s", description="the statement covers payments up to this long ago (T+1: 10h)")
    repair: Literal["refund", "fill_order", "report"] = Field(
        "refund", description="what a 长款 (money, no paid order) gets: refund, fill in (reopen) the order, or a report only")


class SupportSection(_Section):
    """The platform's customer service (平台客服): buyers charged for an order they do not have complain, and
    agents repair what they find (seeds 000 and 002: the buyer who paid and sees "closed" goes to customer
    service, and waits for it)."""

    agents: CountOrOff = Field(
        "off", description='agents handling tickets at once (one FIFO queue of tickets), or "off": no customer '
        'service (nobody complains; every other result is as without this section)')
    complaint_probability: Probability = Field(
        0.8, description="a buyer whose bank debit the order does not account for (order closed or unpaid, a "
        "second charge for one order, a debit on a closed trade) when they look files a ticket")
    complaint_delay: DurationDist = Field(
        _ln("2h", "2d"), description="the bank's debit (its SMS) -> the buyer looks at the order and, if it does "
        "not account for the debit, files a ticket")
    handle_time: DurationDist = Field(
        _ln("15m", "2h"), description="an agent's time per ticket; the agent checks the order, the trade and the "
        "bank's record when it finishes, and refunds (or fills in the order) what still does not agree")
    repair: Literal["refund", "fill_order"] = Field(
        "refund", description="what an agent does with a debit for an order that is not paid: refund it, or "
        "fill the order in (mark it paid, reopening a closed one); a second charge is refunded either way")

    escalate_probability: Probability = Field(
        0.0, description="after-sales (seed 003): a buyer whose merchant refused to cancel an unshipped order "
        "(refused_declined) takes it to customer service, escalation_delay later; the ticket waits in the same "
        "queue as the charged buyers' (read only with agents on)")
    escalation_delay: DurationDist = Field(
        _ln("30m", "1d"), description="the merchant's refusal -> the buyer files the escalation ticket")
    escalation_upheld: Probability = Field(
        0.5, description="the agent finds the buyer's reason valid (goods not as described, a merchant acting in "
        "bad faith: seed 003) and cancels and refunds the order, if it is still unshipped when the agent acts "
        "(an order shipped while the ticket waited can no longer be cancelled)")

    @field_validator("agents")
    @classmethod
    def _some_agents(cls, v: int | None) -> int | None:
        if v == 0:
            raise ValueError('expected "off" (no customer service) or 1 agent or more, found 0 '
                             "(a desk without agents would queue every ticket for ever)")
        return v


class FaultWindow(_Section):
    """Between ``start`` and ``end`` the keys in ``set`` take other values (a brownout, a storm)."""

    start: Duration
    end: Duration
    label: str = ""
    set: dict[str, Any]
    # end > start is checked with the window's other problems (_fault_window_problems), so that one
    # message lists them all


class LiveSection(_Section):
    """Defaults for the live harness (``serve`` / ``load``), and the limits a valid live run stays within."""

    time_scale: float = Field(60.0, gt=0, description="scenario seconds per wall second")
    run_time: Duration = Field("2m", description="wall time of the load phase")
    drain: Duration = Field("30s", description="wall time to let timers and notifications finish")
    max_in_flight: int = Field(256, ge=1, description="requests a service accepts at once before answering 503")
    min_achieved_ratio: Probability = Field(
        0.95, description="valid run: at least this share of the planned arrivals started on time")
    max_harness_error_rate: Probability = Field(
        0.01, description="valid run: harness errors (buyers raised, arrivals dropped, malformed requests) per planned arrival")
    max_transport_error_rate: Probability = Field(
        0.05, description="valid run: calls neither answered nor refused (timeouts, 5xx, broken or refused connections)")
    max_start_lag: Duration = Field(
        "10s", description="valid run: p99 of the arrivals' start lag, in scenario time (wall lag × time scale)")
    max_unfinished_share: Probability = Field(
        0.05, description="valid run: share of started buyers whose story had not ended at the end of observation")
    capacity: float | None = Field(
        None, gt=0, description="flows per wall second this machine sustains (default: the capacity benchmark's "
        "stored figure, else 100)")
    order_sample_interval: DurationOrOff = Field(
        "1m", description='a --target run reads each open order\'s page (through the adapter) this often, in '
        'scenario time, so a window starts when the state first showed from outside (a closed order: after twice '
        'the previous gap each time); "off" or 0: only the read after the drain')
    order_sample_rate: float = Field(
        20.0, gt=0, description="at most this many order-page samples per wall second in the whole run (split "
        "between the Locust processes); a sample over it waits, and a slow answer makes the next ones wait longer")
    order_sample_max: int = Field(
        30, ge=1, description="at most this many samples of one order (then only the final read)")
    order_sample_reference: bool = Field(
        False, description="sample the reference checkout's pages too (by default only a --target's: the "
        "reference checkout's own events already give exact windows)")


_THRESHOLD_RE = re.compile(r"^\s*([a-z0-9_]+(?:\.[a-z0-9_]+)?)\s*(<=|<|>=|>)\s*(.+?)\s*$")
_THRESHOLD_METRICS = ("p99_latency", "p50_latency", "error_rate", "achieved_ratio")
# <class>.<field>: rate/count/amount are the unresolved ones (as before); occurred_/repaired_/unresolved_ name which
_THRESHOLD_FIELDS = ("rate", "count", "amount") + tuple(
    f"{m}_{f}" for m in ("occurred", "repaired", "unresolved") for f in ("rate", "orders", "count"))


@dataclass(frozen=True)
class Threshold:
    metric: str  # "paid_but_closed.rate", "p99_latency", ...
    op: str
    value: float
    text: str

    def holds(self, observed: float) -> bool:
        return {"<": observed < self.value, "<=": observed <= self.value,
                ">": observed > self.value, ">=": observed >= self.value}[self.op]


def _make_threshold(value: Any) -> Threshold:
    if isinstance(value, Threshold):
        return value
    if not isinstance(value, str):
        raise ValueError(f'expected a rule like "paid_but_closed.rate < 1e-4", found {value!r}')
    m = _THRESHOLD_RE.match(value)
    if not m:
        raise ValueError(f'expected a rule like "paid_but_closed.rate < 1e-4" or "p99_latency < 800ms", found {value!r}')
    metric, op, raw = m.groups()
    if "." in metric:
        cls, field = metric.split(".")
        if cls not in ANOMALY_CLASSES:
            raise ValueError(f"unknown anomaly class {cls!r} in {value!r}{_suggest(cls, ANOMALY_CLASSES)}")
        if field not in _THRESHOLD_FIELDS:
            raise ValueError(f"expected one of .{', .'.join(_THRESHOLD_FIELDS)} after {cls!r}, found .{field}"
                             f"{_suggest(field, _THRESHOLD_FIELDS)}")
        num = float(raw)
    else:
        if metric not in _THRESHOLD_METRICS:
            raise ValueError(f"unknown metric {metric!r} (expected <class>.rate|count|amount or one of "
                             f"{', '.join(_THRESHOLD_METRICS)}){_suggest(metric, _THRESHOLD_METRICS)}")
        raw = raw.strip().strip('"')
        num = parse_duration(raw) if metric.endswith("latency") else float(raw)
    return Threshold(metric, op, num, value.strip())


ThresholdRule = Annotated[Threshold, PlainValidator(_make_threshold), PlainSerializer(lambda t: t.text)]


class Scenario(_Section):
    """A validated scenario: frozen, hashable by value, and dumpable back to TOML-shaped data."""

    name: str | None = None
    description: str = ""
    run: RunSection = RunSection()
    load: LoadSection = LoadSection()
    user: UserSection = UserSection()
    app: AppSection = AppSection()
    order_service: OrderServiceSection = OrderServiceSection()
    gateway: GatewaySection = GatewaySection()
    bank: BankSection = BankSection()
    merchant: MerchantSection = MerchantSection()
    bnpl: BnplSection = BnplSection()
    reconciliation: ReconciliationSection = ReconciliationSection()
    support: SupportSection = SupportSection()
    faults: tuple[FaultWindow, ...] = ()
    thresholds: tuple[ThresholdRule, ...] = ()
    live: LiveSection = LiveSection()

    def resolved(self) -> dict[str, Any]:
        """The scenario as plain data, defaults included (what every result echoes)."""
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: dict[str, Any], source: str = "--set") -> "Scenario":
        """A new scenario with dotted-key overrides applied, validated like a file."""
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_path(raw, key, value, source)
        return scenario_from_dict(raw, source)

    def set_by_a_fault(self, key: str) -> bool:
        """Whether any ``[[faults]]`` window sets ``key`` (a dotted key, as in its ``set`` table)."""
        return any(key in f.set for f in self.faults)

    def faulted(self, window: FaultWindow) -> "Scenario":
        """This scenario as it is inside a fault window (without fault windows of its own)."""
        source = f"faults[{window.label or format_duration(window.start)}]"
        raw = self.model_dump(mode="json")
        raw["faults"] = []
        for key, value in window.set.items():
            _set_path(raw, key, value, source)
        return scenario_from_dict(raw, source)


def _changed(section: BaseModel, name: str) -> bool:
    """Whether ``section.name`` differs from the schema's default (both as validated)."""
    return getattr(section, name) != getattr(type(section)(), name)


def inert_settings(s: Scenario) -> list[str]:
    """Settings that differ from their defaults but cannot act in this scenario, each as one sentence naming
    the key and what it waits for (``simulate``, ``validate``, ``load`` and ``compare`` print them as notes;
    a sweep does not, since its points may turn the missing piece on)."""
    notes = []
    sp = s.support
    if sp.agents is None:
        keys = [f"support.{n}" for n in type(sp).model_fields if n != "agents" and _changed(sp, n)]
        if keys:
            notes.append(f"{', '.join(keys)} {'has' if len(keys) == 1 else 'have'} no effect: support.agents is off "
                         f"(no customer-service desk; set support.agents to a number of agents)")
    else:
        if (sp.escalate_probability > 0 and s.user.after_sales_probability == 0
                and not s.set_by_a_fault("user.after_sales_probability")):
            notes.append("support.escalate_probability has no effect: no buyer asks for after-sales "
                         "(user.after_sales_probability = 0), so no merchant refuses a cancel to escalate")
        keys = [f"support.{n}" for n in ("escalation_delay", "escalation_upheld") if _changed(sp, n)]
        if keys and sp.escalate_probability == 0:
            notes.append(f"{', '.join(keys)} {'has' if len(keys) == 1 else 'have'} no effect: "
                         f"support.escalate_probability is 0")
    if s.order_service.notify_outage_every is None and _changed(s.order_service, "notify_outage_duration"):
        notes.append("order_service.notify_outage_duration has no effect: order_service.notify_outage_every is "
                     "\"off\" (no outages)")
    batching = any(m.finish == "batch" for m in s.merchant.population)
    if (s.merchant.batch_paused or s.set_by_a_fault("merchant.batch_paused")) and not batching:
        notes.append("merchant.batch_paused has no effect: no merchant of merchant.population sends its finish "
                     "from a batch job (finish = \"batch\")")
    if s.bnpl.deduction_source != "draw" and _changed(s.bnpl, "deduction_failure"):
        notes.append(f"bnpl.deduction_failure has no effect: bnpl.deduction_source is \"{s.bnpl.deduction_source}\" "
                     f"(deductions take the buyer's balance; the coin is read only with \"draw\")")
    return notes


# Sections a fault window may change (run, load, live, reconciliation and support are fixed for a run).
FAULTABLE_SECTIONS = ("user", "app", "order_service", "gateway", "bank", "merchant", "bnpl")

# --------------------------------------------------------------------------------------------------
# Loading and error reporting


def _suggest(word: str, choices: Any) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: Any = Scenario
    for part in path:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return None
        ann = fields[part].annotation
        args = getattr(ann, "__args__", ()) or ()
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if p not in ("function-plain[_make_dist()]",))
    key = _format_loc(loc)
    kind = err["type"]
    found = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        choices = list(parent.model_fields) if parent else []
        hint = _suggest(str(loc[-1]), choices)
        expected = f"one of: {', '.join(choices)}" if choices else "no such key"
        return f"{key}: unknown key{hint}; expected {expected}"
    if kind == "missing":
        return f"{key}: missing required key"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        return f"{key}: {msg}"
    if kind == "literal_error":
        choices = err.get("ctx", {}).get("expected", "")
        options = re.findall(r"'([^']*)'", choices)
        hint = _suggest(str(found), options) if isinstance(found, str) else ""
        return f"{key}: {msg.replace('Input should be', 'expected')}, found {found!r}{hint}"
    return f"{key}: expected {msg.replace('Input should be ', '').replace('Input should ', '')}, found {found!r}"


def scenario_from_dict(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate plain data into a :class:`Scenario`, or raise one :class:`ConfigError`."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    problems: list[str] = _calendar_problems(scenario, source) + _deduction_problems(scenario, source)
    for i, window in enumerate(scenario.faults):
        problems.extend(_fault_window_problems(scenario, i, window, source))
    if problems:
        raise ConfigError("\n".join(problems))
    return scenario


def _calendar_problems(scenario: Scenario, source: str) -> list[str]:
    """Working days need a calendar: ``gateway.refund_working_days`` without ``run.start`` is an error."""
    if scenario.gateway.refund_working_days is not None and scenario.run.start is None:
        return [f'{source}: gateway.refund_working_days: counts working days on a calendar, but run.start is "off"; '
                f'set run.start to {CALENDAR_HINT}, e.g. run.start = 2026-11-06T18:00:00']
    return []


def _deduction_problems(scenario: Scenario, source: str) -> list[str]:
    """Deductions from the wallet need a wallet, and a fall-back on the card a card line:
    ``bnpl.deduction_source = "wallet"`` or ``"wallet_then_card"`` without ``user.wallet_balance``, or
    ``"wallet_then_card"`` without ``user.card_limit``, is an error."""
    src = scenario.bnpl.deduction_source
    problems = []
    if src != "draw" and scenario.user.wallet_balance is None:
        problems.append(f'{source}: bnpl.deduction_source: "{src}" deducts from the buyer\'s wallet balance, but '
                        f'user.wallet_balance is "off"; set it to a distribution, e.g. user.wallet_balance = '
                        f'{{ dist = "lognormal", median = 300, p99 = 5000 }}, or use deduction_source = "draw"')
    if src == "wallet_then_card" and scenario.user.card_limit is None:
        problems.append(f'{source}: bnpl.deduction_source: "wallet_then_card" falls back on the buyer\'s card '
                        f'line, but user.card_limit is "off" (a card without a line pays whatever is owed, so no '
                        f'deduction could fail); set it to a distribution, e.g. user.card_limit = '
                        f'{{ dist = "lognormal", median = 2000, p99 = 20000 }}, or use deduction_source = "wallet"')
    return problems


def _fault_window_problems(scenario: Scenario, i: int, window: FaultWindow, source: str) -> list[str]:
    """Every problem of one fault window's ``set`` (not only the first): keys outside the faultable
    sections, unknown keys, and values the section refuses."""
    where = f"{source}: faults[{i}].set"
    problems: list[str] = []
    if window.end <= window.start:
        problems.append(f"{source}: faults[{i}]: end must be after start, found start={format_duration(window.start)}, "
                        f"end={format_duration(window.end)}")
    raw = scenario.model_dump(mode="json")
    raw["faults"] = []
    for key, value in window.set.items():
        section = key.split(".", 1)[0]
        if section not in FAULTABLE_SECTIONS or "." not in key:
            problems.append(f"{where}.{key}: expected a key in one of the sections {', '.join(FAULTABLE_SECTIONS)} "
                            f"(like \"gateway.service_time\"), found {key!r}")
            continue
        try:
            _set_path(raw, key, value, f"{where}:")
        except ConfigError as exc:
            problems.append(str(exc))
    try:
        windowed = Scenario.model_validate(raw)
        problems.extend(_calendar_problems(windowed, where) + _deduction_problems(windowed, where))
    except ValidationError as exc:
        problems.extend(f"{where}: {_describe(e)}" for e in exc.errors())
    return problems


def parse_override(text: str) -> tuple[str, Any]:
    """``"gateway.timeout=8s"`` -> ``("gateway.timeout", "8s")``; values are TOML, bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value, for example --set order_service.order_ttl=15m")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: the key before '=' is empty")
    return key, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    """A command-line value as TOML (numbers, booleans, lists, inline tables), else a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _set_path(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            model = _model_at(tuple(parts[:i]))
            choices = list(model.model_fields) if model else []
            raise ConfigError(
                f"{source} {key}: unknown key {'.'.join(parts[: i + 1])!r}{_suggest(part, choices)}"
            )
        node = node[part]
    leaf = parts[-1]
    if not isinstance(node, dict) or leaf not in node:
        model = _model_at(tuple(parts[:-1]))
        choices = list(model.model_fields) if model else []
        raise ConfigError(f"{source} {key}: unknown key{_suggest(leaf, choices)}")
    node[leaf] = copy.deepcopy(value)


def load_scenario(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Scenario:
    """Read, validate and apply ``--set`` overrides; raise :class:`ConfigError` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such scenario file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read scenario file ({exc.__class__.__name__})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    data.setdefault("name", p.stem)
    pairs = (dict(parse_override(o) for o in overrides) if isinstance(overrides, list) else overrides) or {}
    try:
        scenario = scenario_from_dict(data, str(p))
    except ConfigError as file_error:
        # A file that is only valid with its overrides (run.start given by --set for the file's working-day
        # refunds): accept the two together; otherwise the file's own error is the one to read.
        if not pairs:
            raise
        raw = Scenario().model_dump(mode="json")
        for section, value in data.items():
            if isinstance(value, dict) and isinstance(raw.get(section), dict):
                raw[section].update(value)
            else:
                raw[section] = value
        try:
            for key, value in pairs.items():
                _set_path(raw, key, value, "--set")
            return scenario_from_dict(raw, f"{p} with --set")
        except ConfigError:
            raise file_error from None
    return scenario.with_overrides(pairs) if pairs else scenario


def default_scenario() -> Scenario:
    return Scenario()


def schema_markdown() -> str:
    """Every scenario key with its default and meaning, as Markdown (docs/scenario.md is generated from it)."""
    defaults = Scenario().model_dump(mode="json")
    lines = ["# Scenario keys", "",
             "Generated from `sim/scenario.py` by `python -m sim.scenario > docs/scenario.md`; a test keeps it current.",
             "Durations: `\"250ms\"`, `\"15s\"`, `\"15m\"`, `\"2h\"`, `\"15d\"`. Distributions: a duration (constant) or a",
             "table `{dist = \"exponential\", mean = ...}`, `{dist = \"lognormal\", median = ..., p99 = ...}`,",
             "`{dist = \"uniform\", low = ..., high = ...}`, `{dist = \"constant\", value = ...}`,",
             "`{dist = \"empirical\", values = [...]}`. Schedules: `\"alipay\"`, `\"wechat\"`, `\"stripe\"`, `\"adyen\"` or a",
             "list of gaps. Probabilities are numbers in [0, 1]. Unknown keys are errors.", ""]
    for section, model in Scenario.model_fields.items():
        ann = model.annotation
        sub = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None or section in ("faults", "thresholds"):
            continue
        lines += [f"## [{section}]", "", (sub.__doc__ or "").strip().split("\n")[0], "",
                  "| key | default | meaning |", "| --- | --- | --- |"]
        for key, f in sub.model_fields.items():
            value = defaults[section][key]
            shown = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else f'"{value}"'
            lines.append(f"| `{section}.{key}` | `{shown}` | {f.description or ''} |")
        lines.append("")
    lines += [
        "## [[faults]]", "",
        "Fault windows: between `start` and `end` (durations from the run's start) the keys in `set` take other",
        "values, for example a gateway brownout:", "",
        "```toml", "[[faults]]", "start = \"20m\"", "end = \"30m\"", "label = \"gateway brownout\"",
        "set = { \"gateway.service_time\" = { dist = \"exponential\", mean = \"2s\" }, \"gateway.workers\" = 8 }", "```", "",
        f"Keys in `set` must belong to one of: {', '.join(FAULTABLE_SECTIONS)}.", "",
        "## thresholds", "",
        "A list of rules checked after a live run (`load` exits 1 when one fails):",
        "`\"<class>.rate < 1e-4\"`, `\"<class>.count <= 0\"`, `\"<class>.amount < 100\"`, `\"p99_latency < 800ms\"`,",
        "`\"error_rate < 0.01\"`, `\"achieved_ratio >= 0.95\"`.", "",
        "## top level", "", "`name` (defaults to the file name), `description` (the one-line story shown by `checkout-chaos scenarios`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # python -m sim.scenario > docs/scenario.md
    print(schema_markdown())


def fault_spans(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's fault windows as the timeline draws them (scenario seconds)."""
    return [{"from": f.start, "to": f.end, "label": f.label or ", ".join(f.set)} for f in scenario.faults]
