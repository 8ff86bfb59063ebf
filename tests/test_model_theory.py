"""The simulation against queueing theory and a closed form (seeded replications, stated tolerances)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from sim.model.model import run_replication
from sim.scenario import Scenario

# Everything but the part under test is instantaneous, certain and uncongested.
QUIET = {
    "user.payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0},
    "user.abandon_probability": 0.0,
    "user.pay_delay": "0s",
    "user.retry_probability": 0.0,
    "app.network_latency": "0s",
    "bank.latency": "0s",
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "bank.channels": 100000,
    "gateway.notify_latency": "0s",
    "gateway.service_time": "0s",
    "gateway.workers": 100000,
    "order_service.service_time": "0s",
    "order_service.workers": 100000,
    "run.drain": "1h",
}


def scenario(**overrides) -> Scenario:
    merged = dict(QUIET)
    merged.update({k.replace("__", "."): v for k, v in overrides.items()})
    return Scenario().with_overrides(merged)


def erlang_c_wait(lam: float, mu: float, c: int) -> float:
    """Mean wait in queue of an M/M/c queue (Erlang C)."""
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * mu - lam)


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    n = len(xs)
    m = sum(xs) / n
    s = stats.tstd(xs)
    h = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return m, m - h, m + h


@pytest.mark.parametrize("lam, c, mu", [(2.0, 4, 1.0), (3.6, 4, 1.0)])
def test_gateway_wait_matches_erlang_c_and_utilization_the_offered_load(lam, c, mu):
    """M/M/c: the gateway's mean wait in queue lies in the replications' 95% CI around Erlang C, and its
    utilization's CI holds lambda / (c * mu) (the same replications: each costs tens of seconds)."""
    s = scenario(load__arrival_rate=lam, gateway__workers=c,
                 gateway__service_time={"dist": "exponential", "mean": f"{1000 / mu:g}ms"},
                 run__horizon="6000s", run__warmup="500s")
    waits, little, utilization = [], [], []
    for rep in range(6):
        m = run_replication(s, rep, examples=False).metrics["gateway"]
        waits.append(m["wait_mean_s"])
        little.append((m["queue_mean"], m["wait_mean_s"]))
        utilization.append(m["utilization"])
    expected = erlang_c_wait(lam, mu, c)
    mean, lo, hi = t_interval(waits)
    assert lo <= expected <= hi, (expected, mean, lo, hi)
    # Little's law for the queue: L_q = lambda * W_q (same measurement window, same customers).
    for lq, wq in little:
        assert lq == pytest.approx(lam * wq, rel=0.08, abs=1e-3)
    mean, lo, hi = t_interval(utilization)
    assert lo <= lam / (c * mu) <= hi, (lam / (c * mu), mean, lo, hi)


def pbc_closed_form(a: float, b: float, T: float) -> float:
    return a * (math.exp(-b * T) - math.exp(-a * T)) / (a - b)


def test_paid_but_closed_matches_closed_form():
    """Naive close, exponential pay delay and notify latency: P(paid-but-closed) = a(e^-bT - e^-aT)/(a-b)."""
    a, b, T = 1 / 600, 1 / 300, 900.0
    # 5 x 50 min of counted orders (~6,000 a replication): the CI's half-width is 2-3.3% of the closed form
    # (run.seed 20261111, 1, 2, 3 tried; all hold it, the mean within 0.3 half-widths of it).
    s = scenario(load__arrival_rate=2.0, run__horizon="1h", run__warmup="10m", run__drain="12h",
                 user__pay_delay={"dist": "exponential", "mean": "600s"},
                 gateway__notify_latency={"dist": "exponential", "mean": "300s"},
                 order_service__order_ttl="15m", order_service__close_policy="naive",
                 order_service__late_payment="ignore")
    rates = []
    for rep in range(5):
        r = run_replication(s, rep, examples=False)
        rates.append(r.summary.per_class["paid_but_closed"].count / r.summary.orders)
        assert r.ledger_total == 0
    expected = pbc_closed_form(a, b, T)
    mean, lo, hi = t_interval(rates)
    assert lo <= expected <= hi, (expected, mean, lo, hi)
    assert expected == pytest.approx(0.1733, abs=1e-3)
