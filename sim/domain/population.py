"""The buyer population: each arrival's own stream and decisions, and the accounts they pay from.

Shared by the simulation's buyers (``sim/model/user.py``), the live load's buyers
(``loadtests/buyer.py``) and the mock provider's bank (``loadtests/service/psp/core.py``), so that with
``user.accounts`` the live run meets the *same* population as the simulation: arrival ``n`` of a run
(counted from 1) is the same returning buyer, account ``aK`` has the same wallet balance, card line,
daily limit and risk flag, and tops up by the same amounts after the same delays.

* :func:`buyer_stream` — buyer number ``n``'s stream, seeded from the root seed, the replication and
  ``n`` only (common random numbers across compared settings);
* :func:`draw_buyer` — what a buyer decides on arrival, in the order the simulation draws it;
* :func:`account_stream` / :func:`draw_account` — an account's own stream and its limits.

Pure: no clock, no I/O.
"""

from __future__ import annotations

import _random
import hashlib
import random
from typing import Any, NamedTuple, Sequence

from sim.domain.entities import BuyerAccount


_Random, _new, _seed = random.Random, random.Random.__new__, _random.Random.seed


def seeded(x: int) -> random.Random:
    """``random.Random(x)`` for a non-negative integer ``x``, the same state (tests/test_model_seeds.py),
    without ``Random.__init__`` and ``Random.seed``'s Python-level checks: ~0.45 µs of the ~4.2 µs a
    seeding costs, twice per order (the buyer's stream and the order's)."""
    r = _new(_Random)
    _seed(r, x)
    r.gauss_next = None
    return r


def buyer_stream(seed: int, replication: int, index: int) -> random.Random:
    """The stream of buyer number ``index`` (the simulation counts arrivals from 1)."""
    key = hashlib.blake2b(b"buyer:%d:%d:%d" % (seed, replication, index), digest_size=16).digest()
    return seeded(int.from_bytes(key, "little"))


def account_stream(seed: int, replication: int, user: str) -> random.Random:
    """The stream of buyer account ``user`` (``a17``): its limits, risk status and top-ups."""
    key = hashlib.blake2b(b"account:%d:%d:%s" % (seed, replication, user.encode()), digest_size=16).digest()
    return random.Random(int.from_bytes(key, "little"))


def credit_limit_stream(seed: int, replication: int, user: str) -> random.Random:
    """The stream of buyer account ``user``'s own BNPL credit limit (``bnpl.buyer_credit_limit``: its
    first draw), apart from the account's other draws."""
    key = hashlib.blake2b(b"bnpl-limit:%d:%d:%s" % (seed, replication, user.encode()), digest_size=16).digest()
    return random.Random(int.from_bytes(key, "little"))


class BuyerDraws(NamedTuple):
    method: str  # wallet, card or bnpl
    amount: int  # fen
    pay_delay: float
    walks_away: bool
    cancels: bool
    retry_draws: list[float]
    merchant: str
    balance: float | None  # CNY: the wallet balance of a one-order buyer (user.wallet_balance)
    partial: float | None  # the delay after which this buyer asks for part of the money back, or None
    account: int | None  # with user.accounts: which account (0 <= account < accounts) the buyer is


def draw_buyer(u: Any, r: random.Random, cum: tuple[float, float], merchants: Sequence[str],
               merchant_cum: Sequence[float]) -> BuyerDraws:
    """What buyer ``r`` decides on arrival, under the scenario's ``user`` section ``u``.

    ``cum`` is ``(wallet, wallet + card)`` of ``user.payment_methods``; ``merchants`` and
    ``merchant_cum`` the merchant population's names and cumulative shares. The order of the draws is
    the simulation's: changing it changes every result.
    """
    m = r.random()
    method = "wallet" if m < cum[0] else ("card" if m < cum[1] else "bnpl")
    amount = max(1, int(round(u.order_amount.draw(r) * 100)))
    pay_delay = u.pay_delay.draw(r)
    walks_away = r.random() < u.abandon_probability
    cancels = r.random() < u.cancel_probability
    retry_draws = [r.random() for _ in range(u.max_retries)]
    merchant = merchants[0]
    if len(merchants) > 1:
        x = r.random()
        merchant = next((n for n, c in zip(merchants, merchant_cum) if x < c), merchants[-1])
    balance = u.wallet_balance.draw(r) if u.wallet_balance is not None else None
    partial = None
    if u.partial_refund_probability > 0 and r.random() < u.partial_refund_probability:
        partial = u.partial_refund_delay.draw(r)
    account = int(r.random() * u.accounts) if u.accounts is not None else None
    return BuyerDraws(method, amount, pay_delay, walks_away, cancels, retry_draws, merchant, balance, partial,
                      account)


def after_sales_stream(seed: int, replication: int, index: int) -> random.Random:
    """The after-sales stream of buyer number ``index``: whether and when they ask, and how their merchant
    (or customer service) answers them. Apart from the buyer's own stream, so turning after-sales on
    changes no other draw of this buyer or of anyone else."""
    key = hashlib.blake2b(b"after-sales:%d:%d:%d" % (seed, replication, index), digest_size=16).digest()
    return random.Random(int.from_bytes(key, "little"))


def support_stream(seed: int, replication: int, trade: str) -> random.Random:
    """The stream of one bank debit's complaint (``support``): when its buyer looks, whether they file a
    ticket, and the agent's time on it. Its own, so turning customer service on changes no other draw."""
    key = hashlib.blake2b(b"support:%d:%d:%s" % (seed, replication, trade.encode()), digest_size=16).digest()
    return random.Random(int.from_bytes(key, "little"))


class AfterSalesDraws(NamedTuple):
    delay: float  # order paid -> the request is sent
    defect: bool  # the goods have a serious quality defect (the merchant's defect_rate)
    agrees: bool  # asked to cancel an unshipped order, the merchant agrees (its cancel_agree)
    answer_time: float  # request -> the merchant's (or customer service's) answer


def draw_after_sales(u: Any, profile: Any, r: random.Random) -> AfterSalesDraws | None:
    """Buyer ``r``'s after-sales request under ``user`` section ``u`` with merchant ``profile``, or None.

    Always the same five draws in the same order, whatever the probabilities: a compared setting (a
    longer answer time, a merchant that agrees less) meets the same requests at the same times.
    """
    asks = r.random() < u.after_sales_probability
    delay = u.after_sales_delay.draw(r)
    defect = r.random() < profile.defect_rate
    agrees = r.random() < profile.cancel_agree
    answer_time = profile.answer_time.draw(r)
    return AfterSalesDraws(delay, defect, agrees, answer_time) if asks else None


def payment_cum(u: Any) -> tuple[float, float]:
    pm = u.payment_methods
    return (pm.wallet, pm.wallet + pm.card)


def merchant_table(scenario: Any) -> tuple[list[str], list[float]]:
    """The merchant population's names and cumulative shares."""
    pop = scenario.merchant.population
    names, cum, acc = [], [], 0.0
    for m in pop:
        acc += m.share
        names.append(m.name)
        cum.append(acc)
    return names, cum


def account_of(scenario: Any, index: int, replication: int = 0) -> str | None:
    """With ``user.accounts``: the account (``a17``) arrival ``index`` (from 1) of ``scenario`` is,
    the one the simulation's buyer of that index is in that replication; None with accounts off."""
    u = scenario.user
    if u.accounts is None:
        return None
    names, cum = merchant_table(scenario)
    d = draw_buyer(u, buyer_stream(scenario.run.seed, replication, index), payment_cum(u), names, cum)
    return f"a{d.account}"


def fen(x: float | None) -> int | None:
    return None if x is None else int(round(x * 100))


def draw_account(u: Any, r: random.Random, *, balance: float | None = None, draw_balance: bool = True):
    """An account's limits from its stream ``r``, in the simulation's order: the wallet balance (drawn
    when ``draw_balance``, else ``balance``), the card line, the daily limit, the risk flag. Fen."""
    if draw_balance:
        balance = u.wallet_balance.draw(r) if u.wallet_balance is not None else None
    return BuyerAccount(
        balance=fen(balance),
        card_left=fen(u.card_limit.draw(r)) if u.card_limit is not None else None,
        daily_limit=fen(u.daily_limit.draw(r)) if u.daily_limit is not None else None,
        flagged=u.risk_flagged > 0 and r.random() < u.risk_flagged)


def account_name(user: str) -> str:
    """The account a live user id names: the part after the run's prefix (``3fa2b1c0-a17`` -> ``a17``),
    so that every run meets the same accounts; an id without a prefix is its own name."""
    return user.rpartition("-")[2]
