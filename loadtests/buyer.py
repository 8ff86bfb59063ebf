"""One buyer and the app in their hand, as the scenario's ``user`` and ``app`` sections say.

The same story as the simulation's buyer (``sim/model/user.py``), told over HTTP: the buyer's
decisions (payment method, amount, pay delay, walking away, cancelling, retrying) are drawn up front
from the buyer's own stream; the order is created when the arrival is due; the buyer pays after the
pay delay, at most ``max_retries`` more times after a failure or a timeout (with the trade number
reused or new, ``app.retry_trade_no``), polls the order page after "unknown", and every screen the
app showed is recorded. A buyer left with "failed" or "unknown" is told later when the order is paid
(:meth:`Buyer.watch`; the simulation's app gets a push). Time-valued parameters are scenario seconds, slept as wall seconds
``/ time_scale``.

The buyer pays the PSP's way when the adapter declares a hand-off for the run's face
(``start_payment.handoff``, :func:`complete_handoff`): scans the Alipay QR code or opens its cashier and
confirms, scans a WeChat ``code_url`` and pays, pays a Stripe Checkout page or confirms a PaymentIntent
with its ``client_secret``. A retry with the trade number reused happens on that cashier, still in
front of the buyer, without going back to the checkout.

Every call is recorded as ``client.invoke`` then ``client.ok`` (2xx), ``client.fail`` (a definite
refusal: 4xx, or the connection was refused so nothing was sent) or ``client.unknown`` (timeout, 5xx,
connection broken after sending: the outcome is not known). ``latency`` is measured from when the call
was *due* — the scheduled arrival for the first call, the end of the previous step plus the buyer's
think time for the others — not from when the generator got round to sending it, so a saturated
generator or a slow checkout cannot hide latency (coordinated omission); ``lag`` is the part of it the
generator itself added.

Nothing here imports gevent or Locust: the flow talks to a :class:`Transport` (``send``, ``sleep``,
``time``). ``loadtests/locustfile.py`` gives it Locust's fast HTTP client and gevent; the tests give it
a fake one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import urlencode

from sim.domain import policies, population
from sim.scenario import Scenario

from loadtests.adapter import Adapter, Handoff, dig
from loadtests.plan import MIN_CLIENT_TIMEOUT

# Reply kinds, and the history event each one becomes.
OK, REFUSED, SERVER_ERROR, TIMEOUT, UNREACHABLE, BROKEN = "ok", "refused", "server_error", "timeout", "unreachable", "broken"
NOT_SENT = "not_sent"  # the generator got round to the call only after the app's timeout: never sent
_EVENT = {OK: "client.ok", REFUSED: "client.fail", UNREACHABLE: "client.fail", NOT_SENT: "client.fail",
          SERVER_ERROR: "client.unknown", TIMEOUT: "client.unknown", BROKEN: "client.unknown"}
ERROR_KINDS = frozenset({SERVER_ERROR, TIMEOUT, UNREACHABLE, BROKEN, NOT_SENT})  # counted in error_rate
MALFORMED_STATUS = frozenset({400, 401, 405, 413, 422})  # the checkout could not read the request: a harness error

# What the app shows for a payment outcome (as the simulation's app does).
SCREEN = {"succeeded": "payment_succeeded", "failed": "payment_failed", "closed": "payment_failed",
          "unknown": "payment_unknown", "in_progress": "payment_unknown", "timeout": "payment_unknown"}
_POLL_SCREEN = {"paid": "order_paid", "closed": "order_closed", "refunded": "refunded"}
_UNSETTLED = frozenset({"payment_failed", "payment_unknown"})
WATCH_CAP = 600.0  # scenario seconds: the longest gap between two background refreshes of the order page
# The provider's trade states (and refusal codes) as payment outcomes.
_TRADE_OUTCOME = {"succeeded": "succeeded", "failed": "failed", "unknown": "unknown", "processing": "in_progress",
                  "created": "in_progress", "closed": "closed", "refunded": "failed"}
_REFUSAL_OUTCOME = {"ACQ.TRADE_HAS_SUCCESS": "succeeded", "ACQ.TRADE_HAS_CLOSE": "closed",
                    "TRADE_IN_PROGRESS": "in_progress"}


@dataclass(slots=True)
class Reply:
    """What one HTTP call came back with."""

    kind: str  # OK, REFUSED, SERVER_ERROR, TIMEOUT, UNREACHABLE, BROKEN
    status: int = 0  # 0 without an answer
    body: Any = None  # the JSON answer, or None
    error: str | None = None


_CONSTANT: dict[Any, float | None] = {}  # Dist -> its value if constant, else None


def _draw(dist: Any, rng: random.Random) -> float:
    """One draw of ``dist`` with ``rng``, as ``dist.sampler(rng)()`` draws it (the same values and the
    same use of ``rng``); a constant one (``app.network_latency`` is ``0s`` by default) without
    building a sampler per call."""
    try:
        value = _CONSTANT[dist]
    except KeyError:
        value = _CONSTANT[dist] = dist.p("value") if dist.kind == "constant" else None
    except TypeError:  # unhashable (an empirical distribution's list of values)
        value = None
    return dist.sampler(rng)() if value is None else value


class Transport(Protocol):
    def send(self, method: str, url: str, body: Any, timeout: float, name: str,
             headers: dict[str, str] | None = None) -> Reply:
        """``body``: JSON (a dict/list), or a str sent as it is (a form, with its Content-Type in ``headers``)."""
        ...
    def sleep(self, seconds: float) -> None: ...
    def time(self) -> float: ...


@dataclass
class Counters:
    """What one Locust process did (written to its ``done`` file, summed by the orchestrator)."""

    planned: int = 0  # arrivals assigned to this process
    started: int = 0  # flows that began
    late: int = 0  # began more than late_tolerance after they were due
    dropped: int = 0  # could not begin at all (too many flows in flight)
    completed: int = 0  # flows that ran to their end before the run ended
    flow_errors: int = 0  # a flow raised: a bug of the harness
    lag_max: float = 0.0  # wall seconds, largest start lag
    lags: list[float] = field(default_factory=list)  # sample of start lags (wall seconds)

    def add_lag(self, lag: float) -> None:
        if lag > self.lag_max:
            self.lag_max = lag
        if len(self.lags) < 20_000:
            self.lags.append(round(lag, 6))


class Context:
    """What every buyer of one Locust process shares: the plan, the clock, the history sink."""

    def __init__(self, scenario: Scenario, adapter: Adapter, transport: Transport, emit: Callable[[dict], None], *,
                 checkout_url: str, provider_url: str, time_scale: float, load_epoch: float, run_id: str,
                 seed: int, profiles: list[tuple[str, str, str]], synthesize_orders: bool = False) -> None:
        self.scenario = scenario
        self.adapter = adapter
        self.transport = transport
        self.emit = emit
        self.checkout_url = checkout_url.rstrip("/")
        self.provider_url = provider_url.rstrip("/")
        self.k = float(time_scale)
        self.epoch = load_epoch
        self.run_id = run_id
        self.seed = seed
        self.profiles = profiles or [("买家", "13800000000", "北京市")]
        self.synthesize_orders = synthesize_orders  # a --target writes no history: the client says what it created
        self.counters = Counters()
        # merchant.population's names and cumulative shares (the scenario's own: faults do not change it)
        self.merchants = population.merchant_table(scenario)
        self._windows = tuple(scenario.faults)
        self._unfaulted = scenario.model_copy(update={"faults": ()})  # what a window's overrides apply to
        self._faulted: dict[tuple[int, ...], Scenario] = {}

    def now(self) -> float:
        """Scenario seconds since the load epoch."""
        return (self.transport.time() - self.epoch) * self.k

    def current(self, t: float) -> Scenario:
        """The scenario in force at scenario time ``t`` (fault windows on ``user``/``app`` apply here)."""
        if not self._windows:
            return self.scenario
        active = tuple(i for i, w in enumerate(self._windows) if w.start <= t < w.end)
        if not active:
            return self.scenario
        s = self._faulted.get(active)
        if s is None:
            merged: dict[str, Any] = {}
            for i in active:
                merged.update(self._windows[i].set)
            s = self._faulted[active] = self._unfaulted.with_overrides(merged, source="faults")
        return s


class Buyer:
    """Arrival ``index``, due at wall time ``due``: one order's story from the buyer's side."""

    def __init__(self, ctx: Context, index: int, due: float) -> None:
        self.ctx = ctx
        self.index = index
        self.due = due  # wall time the next step is due
        self.rng = random.Random(f"{ctx.seed}:live:buyer:{index}")
        self.order = f"{ctx.run_id}-{index}"
        self.user = f"{ctx.run_id}-u{index}"
        self.calls = 0
        self.expires_at = float("inf")  # scenario time the cashier's countdown ends (client's estimate)
        self.values: dict[str, Any] = {}
        self.last_screen: str | None = None
        self.held: tuple[Any, str] | None = None  # the PSP hand-off the app still shows: (start-payment answer, trade)

    # -- recording ----------------------------------------------------------------------------------

    def event(self, type_: str, actor: str, t: float | None = None, **fields: Any) -> None:
        ev = {"t": round(self.ctx.now() if t is None else t, 6), "type": type_, "actor": actor, "order": self.order}
        ev.update(fields)
        self.ctx.emit(ev)

    def show(self, screen: str) -> None:
        self.last_screen = screen
        self.event("app.shown", "app", screen=screen)

    # -- time ---------------------------------------------------------------------------------------

    def sleep(self, scenario_seconds: float) -> None:
        """Think, wait: the next step is due ``scenario_seconds`` after this one ended."""
        self.wait_until(self.due + max(0.0, scenario_seconds) / self.ctx.k)

    def wait_until(self, due: float) -> None:
        """The next step is due at wall time ``due`` (at once if that has passed: it is late, and its
        latency will say so)."""
        self.due = due
        left = due - self.ctx.transport.time()
        if left > 0:
            self.ctx.transport.sleep(left)

    # -- one call -----------------------------------------------------------------------------------

    def call(self, op: str, method: str, url: str, body: Any, name: str, headers: dict[str, str] | None = None,
             refusals: frozenset[str] = frozenset(), **extra: Any) -> Reply:
        """One request through the app: network both ways, at most ``app.request_timeout`` in all.
        ``refusals``: a PSP's own codes for "read, and refused" (a 400 ``ORDER_CLOSED``): such an answer
        is recorded with ``refusal`` = its code, so it is not counted as a request the harness malformed."""
        ctx, tr, k = self.ctx, self.ctx.transport, self.ctx.k
        app = ctx.current(ctx.now()).app
        due = self.due
        deadline = due + max(app.request_timeout / k, MIN_CLIENT_TIMEOUT)
        out_net, back_net = _draw(app.network_latency, self.rng) / k, _draw(app.network_latency, self.rng) / k
        left = due + out_net - tr.time()
        if left > 0:
            tr.sleep(left)
        sent = tr.time()
        self.calls += 1
        call_id = f"{self.order}:{self.calls}"
        invoke = {"t": round((sent - ctx.epoch) * k, 6), "type": "client.invoke", "actor": "client",
                  "order": self.order, "op": op, "call": call_id, **extra}
        if op != "create_order" or ctx.adapter.order_id == "client":
            ctx.emit(invoke)
        remaining = deadline - sent
        if remaining > 0:
            reply = tr.send(method, url, body, remaining, name, headers) if headers else \
                tr.send(method, url, body, remaining, name)
        else:
            reply = Reply(NOT_SENT, error="not sent: the generator was late past the app's timeout")
        if reply.kind not in (TIMEOUT, NOT_SENT) and back_net > 0:
            if tr.time() + back_net >= deadline:
                tr.sleep(max(0.0, deadline - tr.time()))
                reply = Reply(TIMEOUT, error="response arrived after the app's timeout")
            else:
                tr.sleep(back_net)
        end = tr.time()
        if op == "create_order" and ctx.adapter.order_id == "server":
            given = ctx.adapter.field("create_order", "order", reply.body) if reply.kind == OK else None
            if given is not None:
                self.order = str(given)
            invoke["order"] = self.order
            ctx.emit(invoke)
        outcome: dict[str, Any] = {"op": op, "call": call_id, "latency": round((end - due) * k, 6),
                                   "lag": round(max(0.0, sent - due - out_net) * k, 6)}
        if reply.status:
            outcome["status"] = reply.status
        if reply.kind != OK:
            outcome["error"] = reply.error or reply.kind
        if refusals and reply.kind == REFUSED and (code := _psp_code(reply.body)) in refusals:
            outcome["refusal"] = code
        self.event(_EVENT[reply.kind], "client", t=(end - ctx.epoch) * k, **outcome)
        self.due = end
        return reply

    def api(self, op: str, values: dict[str, Any], name: str, **extra: Any) -> Reply:
        method, path, body = self.ctx.adapter.request(op, values)
        return self.call(op, method, self.ctx.checkout_url + path, body, name, **extra)

    # -- the story ----------------------------------------------------------------------------------

    def run(self) -> str:
        """Play the buyer; returns how the story ended (for counting)."""
        ctx = self.ctx
        s = ctx.current(ctx.now())
        u, r = s.user, self.rng
        pm = u.payment_methods
        m = r.random()
        method = "wallet" if m < pm.wallet else ("card" if m < pm.wallet + pm.card else "bnpl")
        amount = max(1, int(round(u.order_amount.sampler(r)() * 100)))
        pay_delay = u.pay_delay.sampler(r)()
        walks_away = r.random() < u.abandon_probability
        cancels = r.random() < u.cancel_probability
        retry_draws = [r.random() for _ in range(u.max_retries)]
        # The merchant, by share, where the simulation's buyer draws it (``population.draw_buyer``: after
        # the retry draws, and only when the population has more than one merchant, so a one-merchant
        # scenario's buyers draw exactly what they drew before merchants were a population).
        names, merchant_cum = ctx.merchants
        merchant = names[0]
        if len(names) > 1:
            x = r.random()
            merchant = next((n for n, c in zip(names, merchant_cum) if x < c), names[-1])
        if u.accounts is not None:
            self.user = returning_buyer(ctx, s, self.index)
        name, phone, address = ctx.profiles[self.index % len(ctx.profiles)]
        values = {"order": self.order, "user": self.user, "amount": amount, "amount_yuan": f"{amount / 100:.2f}",
                  "method": method, "merchant": merchant, "trade": "", "buyer_name": name, "buyer_phone": phone, "buyer_address": address}

        lag = max(0.0, ctx.transport.time() - self.due)
        created = self.api("create_order", values, "create order", scheduled=round((self.due - ctx.epoch) * ctx.k, 6),
                           start_lag=round(lag * ctx.k, 6))
        if created.kind != OK:
            return "create_failed"
        values["order"] = self.order
        self.values = values
        created_t = ctx.now()
        self.expires_at = created_t + s.order_service.order_ttl
        if ctx.synthesize_orders:
            self.event("order.created", "order_service", t=created_t, user=self.user, amount=amount, method=method,
                       expires_at=round(self.expires_at, 6), observed_by="client")

        self.sleep(pay_delay)
        if walks_away:
            if cancels and ctx.adapter.has("cancel"):
                self.event("user.cancel", "user")
                self.api("cancel", values, "cancel order")
                return "cancelled"
            self.event("user.abandon", "user")
            return "abandoned"
        trade: str | None = None
        for attempt in range(u.max_retries + 1):
            if attempt:
                if retry_draws[attempt - 1] >= ctx.current(ctx.now()).user.retry_probability:
                    return "gave_up"
                self.sleep(ctx.current(ctx.now()).user.retry_delay.sampler(r)())
            app = ctx.current(ctx.now()).app
            if app.cashier_closes_at_expiry and ctx.now() >= self.expires_at:
                self.show("order_closed")  # the cashier's countdown ran out
                return "expired"
            outcome, trade = self.pay(method, values, attempt, trade, app.retry_trade_no)
            if outcome is None:
                return "not_payable"
            self.show(SCREEN[outcome])
            if outcome == "succeeded":
                self.after_sales(values)
                return "paid"
            if outcome in ("unknown", "in_progress", "timeout") and self.poll():
                return "settled_by_poll"
        return "gave_up"

    def after_sales(self, values: dict[str, Any]) -> None:
        """A paying buyer (wallet, card or pay after use) asks for after-sales (``user.after_sales_probability``)
        ``user.after_sales_delay`` after paying, from a stream of their own (turning it on changes none of
        their other draws); the checkout routes and answers it (seed 003). Only where the adapter has
        ``[after_sales]``."""
        u = self.ctx.current(self.ctx.now()).user
        if u.after_sales_probability <= 0 or not self.ctx.adapter.has("after_sales"):
            return
        r = random.Random(f"{self.ctx.seed}:live:after_sales:{self.index}")
        if r.random() >= u.after_sales_probability:
            return
        self.sleep(u.after_sales_delay.sampler(r)())
        self.api("after_sales", values, "after-sales request")

    def pay(self, method: str, values: dict[str, Any], attempt: int, previous: str | None,
            retry_trade_no: str) -> tuple[str | None, str | None]:
        """One payment attempt: ``(outcome, trade)``; outcome None when the order can no longer be paid."""
        ad = self.ctx.adapter
        face = ad.handoff is not None and ad.handoff.face != "native"
        if face and attempt and retry_trade_no == "reuse" and self.held is not None and method != "bnpl":
            # the PSP's cashier (QR code, payment page) is still in front of the buyer: they try again
            # there, without going back to the checkout — as on Alipay's, WeChat's or Stripe's own page
            answer, trade = self.held
            self.event("user.retry", "user", trade=trade, attempt=attempt)
            self.event("user.pay", "user", trade=trade, attempt=attempt)
            outcome = complete_handoff(self, ad.handoff, answer, trade)
            if outcome == "closed":
                self.held = None
            return outcome, trade
        trade = policies.retry_trade_no(retry_trade_no, self.order, attempt, previous)
        values = {**values, "trade": trade}
        if method != "bnpl":
            if attempt:
                self.event("user.retry", "user", trade=trade, attempt=attempt)
            self.event("user.pay", "user", trade=trade, attempt=attempt)
        started = self.api("start_payment", values, "start payment", attempt=attempt)
        if started.kind == REFUSED and ad.code(started.body) in ad.not_payable:
            return None, trade
        if started.kind in (TIMEOUT, NOT_SENT):
            return "timeout", trade
        if started.kind != OK:
            return "failed", trade
        if method == "bnpl":
            state = ad.field("start_payment", "bnpl_state", started.body)
            return ("succeeded" if state in ad.bnpl_paid else "failed"), trade
        trade = str(ad.field("start_payment", "trade", started.body) or trade)
        if face:
            assert ad.handoff is not None
            self.held = (started.body, trade)
            outcome = complete_handoff(self, ad.handoff, started.body, trade)
            if outcome == "closed":
                self.held = None
            return outcome, trade
        pay_url = (ad.handoff_value(started.body) or ad.field("start_payment", "pay_url", started.body)
                   or f"{self.ctx.provider_url}/trades/{trade}/pay")
        paid = self.call("confirm_payment", "POST", pay_url, None, "confirm payment (provider)", trade=trade)
        if paid.kind == OK and isinstance(paid.body, dict):
            return _TRADE_OUTCOME.get(paid.body.get("state"), "failed"), trade
        if paid.kind == REFUSED and isinstance(paid.body, dict):
            code = paid.body.get("code")
            if code == "ACQ.TRADE_HAS_SUCCESS" and paid.body.get("trade_state") == "refunded":
                return "failed", trade
            return _REFUSAL_OUTCOME.get(code, "failed"), trade
        return ("timeout" if paid.kind in (TIMEOUT, NOT_SENT) else "failed"), trade

    def watch(self) -> None:
        """After the story, a buyer last told "failed" or "unknown" still hears when the order is paid.

        The simulation's app receives a push ("order paid") when that happens. The reference checkout
        has no push channel, so the app refreshes the order page in the background instead — after
        ``poll_interval``, then twice as long each time, at most every :data:`WATCH_CAP` — until it shows
        paid (the app shows ``order_paid``), closed or refunded, or the run ends.
        """
        if self.last_screen not in _UNSETTLED or not self.values:
            return
        gap = self.ctx.current(self.ctx.now()).user.poll_interval
        while True:
            self.sleep(gap)
            gap = min(2 * gap, WATCH_CAP)
            reply = self.api("order_status", self.values, "order page (watch)")
            if reply.kind != OK:
                continue
            cls = self.ctx.adapter.state_class(self.ctx.adapter.field("order_status", "state", reply.body))
            if cls == "paid":
                self.show("order_paid")
            if cls in _POLL_SCREEN:
                return

    def poll(self) -> bool:
        """After 'unknown', the app polls the order page; True once it shows paid, closed or refunded."""
        u = self.ctx.current(self.ctx.now()).user
        values = self.values
        started = self.due
        waited = 0.0
        while waited < u.poll_duration:
            # a timer, not a loop of sleeps: poll k is due poll_interval × k after polling began, however
            # long the previous page took (a slow page must not stretch the app's 60 s of polling)
            waited += u.poll_interval
            self.wait_until(started + waited / self.ctx.k)
            reply = self.api("order_status", values, "order page")
            if reply.kind != OK:
                continue
            cls = self.ctx.adapter.state_class(self.ctx.adapter.field("order_status", "state", reply.body))
            if cls in _POLL_SCREEN:
                self.show(_POLL_SCREEN[cls])
                return True
        return False


def returning_buyer(ctx: Context, s: Scenario, index: int) -> str:
    """With ``user.accounts``: the account live arrival ``index`` (from 0) pays from, ``<run>-a<k>`` —
    the one the simulation's arrival ``index + 1`` of replication 0 is (``sim.domain.population``), so the
    live run meets the simulation's population; the provider's bank draws that account's balance,
    card line, daily limit and risk flag from the simulation's stream of ``a<k>``."""
    return f"{ctx.run_id}-{population.account_of(s, index + 1)}"


# --------------------------------------------------------------------------------------------------
# The buyer completes the PSP's hand-off at the face's buyer side (docs/psp/<face>.md, "The buyer's side")

_JSON = {"Accept": "application/json"}
_FORM = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
_ALIPAY_REFUSAL = {"ACQ.TRADE_HAS_SUCCESS": "succeeded", "ACQ.TRADE_HAS_CLOSE": "closed", "ACQ.PAYMENT_FAIL": "failed",
                   "ACQ.SYSTEM_ERROR": "unknown", "ACQ.TRADE_NOT_EXIST": "failed"}
_WECHAT_STATE = {"SUCCESS": "succeeded", "PAYERROR": "failed", "USERPAYING": "unknown", "NOTPAY": "failed",
                 "CLOSED": "closed", "REFUND": "failed"}
_WECHAT_REFUSAL = {"ORDER_CLOSED": "closed", "ORDERPAID": "succeeded", "SYSTEM_ERROR": "unknown"}
_WECHAT_CODES = frozenset({"ORDER_CLOSED", "ORDERPAID", "ORDER_NOT_EXIST"})
_STRIPE_STATUS = {"succeeded": "succeeded", "processing": "unknown", "requires_capture": "succeeded",
                  "requires_payment_method": "failed", "requires_action": "failed", "canceled": "closed"}


def _psp_code(body: Any) -> str | None:
    """A PSP's refusal code in an answer: WeChat's ``code``, Alipay's ``sub_code``, Stripe's ``error.code``."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else (body.get("sub_code") or body.get("code"))
    return code if isinstance(code, str) else None


_STRIPE_REFUSAL = frozenset({"checkout_session_expired", "checkout_session_complete", "checkout_session_not_open",
                             "payment_intent_unexpected_state", "card_declined"})


def _no_answer(reply: Reply) -> str:
    """The outcome the app shows when a call to the PSP came back without a usable answer."""
    return "timeout" if reply.kind in (TIMEOUT, NOT_SENT, BROKEN, SERVER_ERROR) else "failed"


def complete_handoff(buyer: Buyer, h: Handoff, answer: Any, trade: str) -> str:
    """Pay what the checkout handed over in its start-payment ``answer``, the way that PSP's buyer
    does; the payment outcome (a key of :data:`SCREEN`)."""
    value = dig(answer, h.field)
    if not isinstance(value, str) or not value:
        return "failed"  # nothing to pay from: the app shows "payment failed", as a real one would
    if h.face == "stripe":
        return _stripe(buyer, h, value, trade, answer)
    return {"alipay": _alipay, "wechat": _wechat}[h.face](buyer, h, value, trade)


def _alipay(buyer: Buyer, h: Handoff, value: str, trade: str) -> str:
    """Open the cashier (the page-pay URL, the submitted page-pay form, or the scanned QR code: the
    gateway sends the browser to ``/alipay/cashier/{trade_no}``), then confirm there."""
    if h.kind == "form":
        form = parse_form(value)
        if form is None:
            return "failed"
        action, method, fields = form
        if method == "GET":
            opened = buyer.call("open_payment", "GET", action + ("&" if "?" in action else "?") + urlencode(fields),
                                None, "open cashier (alipay form)", headers=_JSON, trade=trade)
        else:
            opened = buyer.call("open_payment", "POST", action, urlencode(fields), "open cashier (alipay form)",
                                headers=_FORM, trade=trade)
    else:
        opened = buyer.call("open_payment", "GET", value, None,
                            "scan QR (alipay)" if h.kind == "qr_code" else "open cashier (alipay)", headers=_JSON,
                            trade=trade)
    if opened.kind != OK or not isinstance(opened.body, dict):
        return _no_answer(opened)
    if opened.body.get("code") != "10000":
        return _ALIPAY_REFUSAL.get(opened.body.get("sub_code"), "failed")
    trade_no = opened.body.get("trade_no")
    paid = buyer.call("confirm_payment", "POST", f"{buyer.ctx.provider_url}/alipay/cashier/{trade_no}/confirm", {},
                      "confirm payment (alipay cashier)", trade=trade)
    if paid.kind != OK or not isinstance(paid.body, dict):
        return _no_answer(paid)
    if paid.body.get("code") == "10000":
        return "succeeded" if paid.body.get("trade_status") in ("TRADE_SUCCESS", "TRADE_FINISHED") else "unknown"
    return _ALIPAY_REFUSAL.get(paid.body.get("sub_code"), "failed")


def _wechat(buyer: Buyer, h: Handoff, value: str, trade: str) -> str:
    """Scan the ``code_url`` (or open the ``h5_url``) in the WeChat app, then enter the password."""
    base = buyer.ctx.provider_url
    if h.kind == "h5_url":
        opened = buyer.call("open_payment", "GET", value, None, "open h5 page (wechat)", headers=_JSON,
                            refusals=_WECHAT_CODES, trade=trade)
    else:
        opened = buyer.call("open_payment", "POST", f"{base}/wechat/app/scan", {"code_url": value},
                            "scan code_url (wechat app)", refusals=_WECHAT_CODES, trade=trade)
    if opened.kind == REFUSED and isinstance(opened.body, dict):
        return _WECHAT_REFUSAL.get(opened.body.get("code"), "failed")
    if opened.kind != OK:
        return _no_answer(opened)
    paid = buyer.call("confirm_payment", "POST", f"{base}/wechat/app/pay", {h.kind: value},
                      "pay (wechat app)", refusals=_WECHAT_CODES, trade=trade)
    if paid.kind == OK and isinstance(paid.body, dict):
        return _WECHAT_STATE.get(paid.body.get("trade_state"), "failed")
    if paid.kind == REFUSED and isinstance(paid.body, dict):
        return _WECHAT_REFUSAL.get(paid.body.get("code"), "failed")
    return _no_answer(paid)


def _stripe(buyer: Buyer, h: Handoff, value: str, trade: str, answer: Any) -> str:
    """Pay on the hosted Checkout page (``checkout_url``), or confirm the PaymentIntent from the
    browser with the publishable key and its ``client_secret`` (Stripe.js's ``confirmCardPayment``)."""
    if h.kind == "checkout_url":
        paid = buyer.call("confirm_payment", "POST", value, urlencode({"payment_method": h.payment_method}),
                          "pay checkout session (stripe)", headers=_FORM, refusals=_STRIPE_REFUSAL, trade=trade)
        if paid.kind == OK and isinstance(paid.body, dict):
            return _TRADE_OUTCOME.get(paid.body.get("state"), "failed")
    else:
        key = dig(answer, h.publishable_key or "")
        key = key if isinstance(key, str) else ""
        pi = value.split("_secret_")[0]
        paid = buyer.call("confirm_payment", "POST", f"{buyer.ctx.provider_url}/v1/payment_intents/{pi}/confirm",
                          urlencode({"client_secret": value, "payment_method": h.payment_method}),
                          "confirm payment intent (stripe.js)", headers={**_FORM, "Authorization": f"Bearer {key}"},
                          refusals=_STRIPE_REFUSAL, trade=trade)
        if paid.kind == OK and isinstance(paid.body, dict):
            return _STRIPE_STATUS.get(paid.body.get("status"), "failed")
    if paid.kind == REFUSED and isinstance(paid.body, dict):
        error = paid.body.get("error") if isinstance(paid.body.get("error"), dict) else {}
        if error.get("code") == "checkout_session_complete":
            return "succeeded"  # paid already (an earlier try whose answer was lost)
        if error.get("code") in ("checkout_session_expired", "checkout_session_not_open"):
            return "closed"
        return "failed"
    return _no_answer(paid)


def parse_form(markup: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """``(action, METHOD, fields)`` of the first HTML form in ``markup`` (an Alipay page-pay form), None without
    an action."""
    from html.parser import HTMLParser

    class _Form(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.action: str | None = None
            self.method = "POST"
            self.fields: list[tuple[str, str]] = []
            self.done = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = {k: v or "" for k, v in attrs}
            if tag == "form" and self.action is None and not self.done:
                self.action, self.method = a.get("action", ""), (a.get("method") or "POST").upper()
            elif tag in ("input", "textarea") and self.action is not None and not self.done and a.get("name"):
                self.fields.append((a["name"], a.get("value", "")))

        def handle_endtag(self, tag: str) -> None:
            if tag == "form":
                self.done = True

    f = _Form()
    f.feed(markup)
    if not f.action:
        return None
    return f.action, ("GET" if f.method == "GET" else "POST"), f.fields
