"""The buyer's story over HTTP, played against a scripted checkout on a fake clock (no gevent, no Locust)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from sim.scenario import FaultWindow, scenario_from_dict

from loadtests.adapter import Adapter, load_adapter
from loadtests.buyer import OK, REFUSED, TIMEOUT, Buyer, Context, Reply

K = 60.0
EPOCH = 1000.0  # wall time of scenario t = 0
CHECKOUT, PROVIDER = "http://checkout", "http://provider"


class FakeTransport:
    """A clock that only moves when the buyer sleeps or a call takes time; answers from ``handler``."""

    def __init__(self, handler: Callable[[str, str, Any], tuple[Reply, float]], now: float = EPOCH) -> None:
        self.now = now
        self.handler = handler
        self.sent: list[tuple[str, str, Any]] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def send(self, method: str, url: str, body: Any, timeout: float, name: str) -> Reply:
        self.sent.append((method, url, body))
        reply, took = self.handler(method, url, body)
        if took >= timeout:
            self.now += timeout
            return Reply(TIMEOUT, error="timeout")
        self.now += took
        return reply


def reference_checkout(pay_state: str | list[str] = "succeeded", order_states: list[str] | None = None,
                       start: Reply | None = None, pay_took: float = 0.001):
    """A scripted reference checkout: orders are created, payment starts, the provider answers
    ``pay_state`` (one per attempt), the order page walks through ``order_states``."""
    pays = [pay_state] if isinstance(pay_state, str) else list(pay_state)
    pages = list(order_states or ["awaiting_payment"])

    def handler(method: str, url: str, body: Any) -> tuple[Reply, float]:
        if url == f"{CHECKOUT}/orders":
            return Reply(OK, 201, {"order": body["order"], "state": "awaiting_payment"}), 0.001
        if url.endswith("/pay") and url.startswith(CHECKOUT):
            if start is not None:
                return start, 0.001
            return Reply(OK, 200, {"trade": body["trade"], "pay_url": f"{PROVIDER}/trades/{body['trade']}/pay",
                                   "state": "authorized"}), 0.001
        if url.startswith(PROVIDER):
            state = pays.pop(0) if len(pays) > 1 else pays[0]
            return Reply(OK, 200, {"state": state}), pay_took
        if url.startswith(f"{CHECKOUT}/orders/") and method == "GET":
            state = pages.pop(0) if len(pages) > 1 else pages[0]
            return Reply(OK, 200, {"state": state}), 0.001
        if url.endswith("/cancel"):
            return Reply(OK, 200, {"state": "closed"}), 0.001
        if url.endswith("/after-sales"):
            return Reply(OK, 202, {"route": "ask_merchant", "answer": "pending"}), 0.001
        raise AssertionError(f"unexpected call {method} {url}")

    return handler


def play(handler, *, scenario: dict | None = None, adapter: Adapter | None = None, lateness: float = 0.0,
         synthesize: bool = False, index: int = 7, faults: tuple[FaultWindow, ...] = ()) -> tuple[list[dict], FakeTransport, str]:
    """Buyer ``index`` due at scenario t = 60, started ``lateness`` wall seconds late."""
    base = {"user": {"abandon_probability": 0.0, "pay_delay": "30s", "payment_methods": {"wallet": 1.0, "card": 0.0,
                                                                                          "bnpl": 0.0}},
            "app": {"network_latency": "0s"}}
    for key, value in (scenario or {}).items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    s = scenario_from_dict(base).model_copy(update={"faults": faults})
    events: list[dict] = []
    due = EPOCH + 60.0 / K
    tr = FakeTransport(handler, now=due + lateness)
    ctx = Context(s, adapter or load_adapter(), tr, events.append, checkout_url=CHECKOUT, provider_url=PROVIDER,
                  time_scale=K, load_epoch=EPOCH, run_id="r1", seed=5, profiles=[("张伟", "13812345678", "上海市")],
                  synthesize_orders=synthesize)
    ending = Buyer(ctx, index, due).run()
    return events, tr, ending


def kinds(events: list[dict]) -> list[str]:
    return [e["type"] if e["type"] != "app.shown" else f"shown:{e['screen']}" for e in events]


def test_a_wallet_buyer_orders_pays_and_sees_success():
    """create -> (pay delay) -> start payment -> confirm at the provider -> "payment succeeded"."""
    events, tr, ending = play(reference_checkout())
    assert ending == "paid"
    assert kinds(events) == ["client.invoke", "client.ok", "user.pay", "client.invoke", "client.ok",
                             "client.invoke", "client.ok", "shown:payment_succeeded"]
    assert {e["order"] for e in events} == {"r1-7"}
    create = tr.sent[0]
    assert create[2]["user"] == "r1-u7" and create[2]["buyer"]["name"] == "张伟" and create[2]["method"] == "wallet"
    assert isinstance(create[2]["amount"], int)
    assert events[2]["trade"] == "r1-7-t0"
    assert tr.sent[2][1] == f"{PROVIDER}/trades/r1-7-t0/pay"
    assert events[3]["t"] == pytest.approx(60.0 + 0.001 * K + 30.0)  # the pay delay, in scenario seconds
    ops = [e["op"] for e in events if e["type"] == "client.ok"]
    assert ops == ["create_order", "start_payment", "confirm_payment"]
    assert len({e["call"] for e in events if e["type"] == "client.invoke"}) == 3


def test_latency_counts_from_when_the_call_was_due():
    """A generator 0.1 wall seconds late: the first call's latency includes those 6 scenario seconds, and
    the lag says how much of it was the generator's."""
    events, _, _ = play(reference_checkout(), lateness=0.1)
    invoke, ok = events[0], events[1]
    assert invoke["start_lag"] == pytest.approx(0.1 * K)
    assert invoke["scheduled"] == pytest.approx(60.0)
    assert ok["latency"] == pytest.approx((0.1 + 0.001) * K)
    assert ok["lag"] == pytest.approx(0.1 * K)
    later = events[4]  # start payment: due after the pay delay, on time
    assert later["type"] == "client.ok" and later["lag"] == pytest.approx(0.0)


def test_a_call_the_generator_reaches_after_the_apps_timeout_is_not_sent():
    """Later than the app's timeout: nothing is sent, the call fails (the buyer's app gave up)."""
    events, tr, ending = play(reference_checkout(), lateness=2.0)
    assert ending == "create_failed" and not tr.sent
    assert kinds(events) == ["client.invoke", "client.fail"]
    assert events[1]["error"].startswith("not sent") and "status" not in events[1]


def test_a_timeout_shows_unknown_and_the_app_polls_until_paid():
    """The provider does not answer within the app's timeout: "payment unknown", then the order page is
    polled every poll_interval until it shows paid."""
    handler = reference_checkout(order_states=["awaiting_payment", "awaiting_payment", "shipped"], pay_took=10.0)
    events, tr, ending = play(handler, scenario={"user": {"poll_interval": "3s", "poll_duration": "60s"}})
    assert ending == "settled_by_poll"
    assert kinds(events)[-10:] == ["client.invoke", "client.unknown", "shown:payment_unknown", "client.invoke",
                                   "client.ok", "client.invoke", "client.ok", "client.invoke", "client.ok",
                                   "shown:order_paid"]
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_unknown", "order_paid"]
    unknown = next(e for e in events if e["type"] == "client.unknown")
    assert unknown["op"] == "confirm_payment" and unknown["latency"] == pytest.approx(15.0)  # app.request_timeout
    polls = [e for e in events if e["type"] == "client.ok" and e["op"] == "order_status"]
    assert len(polls) == 3
    assert polls[1]["t"] - polls[0]["t"] == pytest.approx(3.0)  # a timer: every 3 s, whatever the page took


def test_slow_pages_do_not_stretch_the_polling():
    """The app polls for poll_duration, not poll_duration plus every page's latency: 20 polls in 60 s
    even when each page takes 2 scenario seconds, the last one due 60 s after polling began."""
    def handler(method: str, url: str, body: Any):
        reply, took = reference_checkout(pay_took=10.0)(method, url, body)
        return reply, (2.0 / K if method == "GET" else took)

    events, _, ending = play(handler, scenario={"user": {"poll_interval": "3s", "poll_duration": "60s",
                                                         "retry_probability": 0.0}})
    assert ending == "gave_up"
    shown = next(e for e in events if e["type"] == "app.shown")
    polls = [e for e in events if e["type"] == "client.invoke" and e["op"] == "order_status"]
    assert len(polls) == 20
    assert polls[-1]["t"] - shown["t"] == pytest.approx(60.0, abs=0.01)


@pytest.mark.parametrize("policy, trades", [("reuse", ["r1-7-t0", "r1-7-t0"]), ("new", ["r1-7-t0", "r1-7-t1"])])
def test_a_retry_reuses_or_renews_the_trade_number(policy, trades):
    """A declined payment, a retry: the same out_trade_no (idempotent) or a new one, per app.retry_trade_no."""
    events, _, ending = play(reference_checkout(pay_state=["failed", "succeeded"]),
                             scenario={"user": {"retry_probability": 1.0, "max_retries": 1},
                                       "app": {"retry_trade_no": policy}})
    assert ending == "paid"
    assert [e["trade"] for e in events if e["type"] == "user.pay"] == trades
    assert [e["trade"] for e in events if e["type"] == "user.retry"] == trades[1:]
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_failed", "payment_succeeded"]


def test_an_order_that_can_no_longer_be_paid_ends_the_story():
    """The checkout refuses to start payment (the order closed meanwhile): no payment, no screen."""
    refused = Reply(REFUSED, 409, {"code": "ORDER_NOT_PAYABLE", "order_state": "closed"})
    events, tr, ending = play(reference_checkout(start=refused))
    assert ending == "not_payable"
    assert not [e for e in events if e["type"] == "app.shown"]
    assert events[-1]["type"] == "client.fail" and events[-1]["status"] == 409
    assert not [s for s in tr.sent if s[1].startswith(PROVIDER)]


def test_bnpl_is_paid_by_its_authorization():
    events, tr, ending = play(reference_checkout(),
                              scenario={"user": {"payment_methods": {"wallet": 0.0, "card": 0.0, "bnpl": 1.0}}})
    assert ending == "paid"
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_succeeded"]
    assert not [e for e in events if e["type"] == "user.pay"]
    assert tr.sent[0][2]["method"] == "bnpl" and len(tr.sent) == 2


def test_a_paying_buyer_asks_for_after_sales_after_the_delay_and_draws_nothing_else_differently():
    """user.after_sales_probability: after "payment succeeded" the buyer waits after_sales_delay and sends
    the adapter's [after_sales] call; off, no such call. Every other call is the same either way."""
    on = {"user": {"after_sales_probability": 1.0, "after_sales_delay": "10m"}}
    events, tr, ending = play(reference_checkout(), scenario=on)
    assert ending == "paid"
    assert tr.sent[-1][0] == "POST" and tr.sent[-1][1] == f"{CHECKOUT}/orders/r1-7/after-sales"
    asked = [e for e in events if e["type"] == "client.invoke" and e["op"] == "after_sales"]
    shown = next(e for e in events if e.get("screen") == "payment_succeeded")
    assert len(asked) == 1 and asked[0]["t"] == pytest.approx(shown["t"] + 600, abs=0.5)
    _, off, _ = play(reference_checkout())
    assert [c[:3] for c in off.sent] == [c[:3] for c in tr.sent[:-1]]  # the same calls, bodies included
    without = Adapter({k: v for k, v in load_adapter().data.items() if k != "after_sales"})
    _, tr2, _ = play(reference_checkout(), scenario=on, adapter=without)  # no [after_sales]: the buyer does not ask
    assert [c[:3] for c in tr2.sent] == [c[:3] for c in off.sent]


def test_a_buyer_who_walks_away_may_cancel():
    events, tr, ending = play(reference_checkout(), scenario={"user": {"abandon_probability": 1.0,
                                                                      "cancel_probability": 1.0}})
    assert ending == "cancelled"
    assert "user.cancel" in kinds(events) and tr.sent[-1][1] == f"{CHECKOUT}/orders/r1-7/cancel"
    events, _, ending = play(reference_checkout(), scenario={"user": {"abandon_probability": 1.0}})
    assert ending == "abandoned" and kinds(events)[-1] == "user.abandon"


def test_the_cashier_closes_at_the_order_ttl():
    """Back after the order's TTL with the cashier's countdown on: "order closed", no payment call."""
    events, tr, ending = play(reference_checkout(), scenario={"user": {"pay_delay": "31m"},
                                                              "app": {"cashier_closes_at_expiry": True}})
    assert ending == "expired" and kinds(events)[-1] == "shown:order_closed" and len(tr.sent) == 1


def test_a_server_assigned_order_id_is_read_from_the_answer():
    """With order_id = "server" the create call's events carry the id the checkout gave; with a target,
    the client records the order it created (the target's own history is not read)."""
    data = dict(load_adapter().to_dict())
    data["order_id"] = "server"
    adapter = Adapter(data)

    def handler(method: str, url: str, body: Any):
        if url == f"{CHECKOUT}/orders":
            return Reply(OK, 201, {"order": "SRV-1"}), 0.001
        return reference_checkout()(method, url, body)

    events, tr, _ = play(handler, adapter=adapter, synthesize=True)
    assert {e["order"] for e in events} == {"SRV-1"}
    assert kinds(events)[:3] == ["client.invoke", "client.ok", "order.created"]
    created = events[2]
    assert created["observed_by"] == "client" and created["expires_at"] == pytest.approx(created["t"] + 1800.0)
    assert tr.sent[1][1] == f"{CHECKOUT}/orders/SRV-1/pay"


def test_decisions_do_not_depend_on_who_plays_the_buyer():
    """Buyer i's method, amount and delays come from its own stream: the same in any process."""
    a, _, _ = play(reference_checkout(), scenario={"user": {"pay_delay": {"dist": "exponential", "mean": "60s"}}})
    b, _, _ = play(reference_checkout(), scenario={"user": {"pay_delay": {"dist": "exponential", "mean": "60s"}}})
    assert a == b
    c, _, _ = play(reference_checkout(), scenario={"user": {"pay_delay": {"dist": "exponential", "mean": "60s"}}},
                   index=8)
    assert [e["t"] for e in c] != [e["t"] for e in a]


def test_fault_windows_change_what_the_buyer_does():
    """A window over an app key applies on the client while it is active: a 0.3 s (18 scenario s)
    payment call times out at the default 15 s, not inside a window that allows 30 s."""
    def outcome(start: str, end: str) -> str:
        window = FaultWindow(start=start, end=end, set={"app.request_timeout": "30s"})
        events, _, _ = play(reference_checkout(pay_took=0.3), faults=(window,))
        return next(e["type"] for e in events if e.get("op") == "confirm_payment" and e["type"] != "client.invoke")

    assert outcome("0s", "10m") == "client.ok"
    assert outcome("1h", "2h") == "client.unknown"


def _watched(order_states: list[str]) -> tuple[list[dict], str]:
    """A buyer told "unknown" whose 60 s of polling see nothing, then left to the background refresh."""
    ctx_events: list[dict] = []
    pages = ["awaiting_payment"] * 20 + order_states
    handler = reference_checkout(order_states=pages, pay_took=10.0)
    s = scenario_from_dict({"user": {"abandon_probability": 0.0, "pay_delay": "30s", "retry_probability": 0.0,
                                     "payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0}},
                            "app": {"network_latency": "0s"}})
    due = EPOCH + 60.0 / K
    ctx = Context(s, load_adapter(), FakeTransport(handler, now=due), ctx_events.append, checkout_url=CHECKOUT,
                  provider_url=PROVIDER, time_scale=K, load_epoch=EPOCH, run_id="r1", seed=5, profiles=[])
    buyer = Buyer(ctx, 7, due)
    ending = buyer.run()
    buyer.watch()
    return ctx_events, ending


def test_a_buyer_left_unsettled_hears_when_the_order_is_paid():
    """Told "unknown", polled 60 s in vain: the app keeps refreshing the order in the background (3 s, 6 s,
    12 s ... apart) and shows "order paid" when it is — the simulation's app gets a push."""
    events, ending = _watched(["awaiting_payment", "awaiting_payment", "awaiting_payment", "shipped"])
    assert ending == "gave_up"
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_unknown", "order_paid"]
    watch = [e["t"] for e in events if e["type"] == "client.invoke" and e["op"] == "order_status"][20:]
    gaps = [round(b - a, 1) for a, b in zip(watch, watch[1:])]
    assert len(watch) == 4 and gaps[1:] == [pytest.approx(12.06, abs=0.1), pytest.approx(24.06, abs=0.1)]


def test_the_background_refresh_stops_at_a_closed_order():
    events, _ = _watched(["awaiting_payment", "closed", "shipped"])
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_unknown"]
    assert len([e for e in events if e["type"] == "client.invoke" and e["op"] == "order_status"]) == 22


# -- paying the PSP's way: the adapter's start_payment.handoff ---------------------------------------


class HeaderTransport(FakeTransport):
    """A FakeTransport that also records the headers of each call."""

    def __init__(self, handler, now: float = EPOCH) -> None:
        super().__init__(handler, now)
        self.headers: list[dict[str, str] | None] = []

    def send(self, method: str, url: str, body: Any, timeout: float, name: str,
             headers: dict[str, str] | None = None) -> Reply:
        self.headers.append(headers)
        return super().send(method, url, body, timeout, name)


def handoff_adapter(face: str, **spec: str) -> Adapter:
    data = load_adapter().to_dict()
    data = {**data, "start_payment": {**data["start_payment"], "response": {"trade": "trade"},
                                      "handoff": {face: spec}}}
    return Adapter(data).for_psp((face,))


def play_psp(handler, adapter: Adapter, scenario: dict | None = None) -> tuple[list[dict], HeaderTransport, str]:
    base = {"user": {"abandon_probability": 0.0, "pay_delay": "30s", "retry_probability": 1.0, "max_retries": 1,
                     "retry_delay": "10s", "payment_methods": {"wallet": 1.0, "card": 0.0, "bnpl": 0.0}},
            "app": {"network_latency": "0s"}}
    for key, value in (scenario or {}).items():
        base[key] = {**base.get(key, {}), **value}
    events: list[dict] = []
    due = EPOCH + 60.0 / K
    tr = HeaderTransport(handler, now=due)
    ctx = Context(scenario_from_dict(base), adapter, tr, events.append, checkout_url=CHECKOUT, provider_url=PROVIDER,
                  time_scale=K, load_epoch=EPOCH, run_id="r1", seed=5, profiles=[("张伟", "13812345678", "上海市")])
    return events, tr, Buyer(ctx, 7, due).run()


def shop(start_answer: dict, psp: Callable[[str, str, Any], Reply]):
    def handler(method: str, url: str, body: Any) -> tuple[Reply, float]:
        if url == f"{CHECKOUT}/orders":
            return Reply(OK, 201, {"order": body["order"]}), 0.001
        if url.startswith(CHECKOUT) and url.endswith("/pay"):
            return Reply(OK, 200, start_answer), 0.001
        if url.startswith(f"{CHECKOUT}/orders/"):
            return Reply(OK, 200, {"state": "awaiting_payment"}), 0.001
        return psp(method, url, body), 0.001
    return handler


def test_an_alipay_buyer_scans_the_qr_code_confirms_and_tries_again_at_the_cashier():
    """qr_code: GET the payload (the trade opens), POST .../confirm; declined, the buyer tries again on the
    same cashier 10 s later — without going back to the checkout — and pays."""
    confirms = [{"code": "40004", "sub_code": "ACQ.PAYMENT_FAIL"}, {"code": "10000", "trade_status": "TRADE_SUCCESS"}]

    def psp(method: str, url: str, body: Any) -> Reply:
        if url == f"{PROVIDER}/alipay/qr/2026":
            return Reply(OK, 200, {"code": "10000", "trade_no": "2026", "trade_status": "WAIT_BUYER_PAY"})
        assert (method, url) == ("POST", f"{PROVIDER}/alipay/cashier/2026/confirm")
        return Reply(OK, 200, confirms.pop(0))

    ad = handoff_adapter("alipay", kind="qr_code", field="pay.qr")
    events, tr, ending = play_psp(shop({"trade": "r1-7", "pay": {"qr": f"{PROVIDER}/alipay/qr/2026"}}, psp), ad)
    assert ending == "paid"
    urls = [u for _, u, _ in tr.sent]
    assert sum(u.startswith(CHECKOUT) and u.endswith("/pay") for u in urls) == 1  # the retry stayed at the cashier
    assert urls.count(f"{PROVIDER}/alipay/qr/2026") == 2 and urls.count(f"{PROVIDER}/alipay/cashier/2026/confirm") == 2
    assert tr.headers[urls.index(f"{PROVIDER}/alipay/qr/2026")] == {"Accept": "application/json"}
    screens = [e["screen"] for e in events if e["type"] == "app.shown"]
    assert screens == ["payment_failed", "payment_succeeded"]
    assert [e["attempt"] for e in events if e["type"] == "user.pay"] == [0, 1]


def test_a_wechat_buyer_whose_code_url_is_closed_sees_failure_and_the_refusal_is_the_psps():
    """code_url: scan, then pay. A closed order's code answers 400 ORDER_CLOSED: "payment failed", the call
    recorded with refusal = ORDER_CLOSED (not a request the harness malformed); the next try goes back to
    the checkout, which no longer takes it."""
    calls: list[str] = []

    def psp(method: str, url: str, body: Any) -> Reply:
        calls.append(url)
        assert body == {"code_url": "weixin://wxpay/bizpayurl?pr=42"}
        if url.endswith("/wechat/app/scan"):
            return Reply(REFUSED, 400, {"code": "ORDER_CLOSED", "message": "closed"})
        raise AssertionError(url)

    ad = handoff_adapter("wechat", kind="code_url", field="code_url")
    starts = [Reply(OK, 200, {"trade": "r1-7", "code_url": "weixin://wxpay/bizpayurl?pr=42"}),
              Reply(REFUSED, 409, {"code": "ORDER_NOT_PAYABLE"})]
    handler = shop({}, psp)

    def with_closing_shop(method: str, url: str, body: Any) -> tuple[Reply, float]:
        if url.startswith(CHECKOUT) and url.endswith("/pay"):
            return starts.pop(0), 0.001
        return handler(method, url, body)

    events, tr, ending = play_psp(with_closing_shop, ad)
    assert ending == "not_payable"
    assert calls == [f"{PROVIDER}/wechat/app/scan"]
    fail = [e for e in events if e["type"] == "client.fail" and e["op"] == "open_payment"]
    assert len(fail) == 1 and fail[0]["refusal"] == "ORDER_CLOSED" and fail[0]["status"] == 400
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_failed"]


def test_a_stripe_buyer_confirms_the_payment_intent_with_the_publishable_key():
    """client_secret: POST /v1/payment_intents/{pi}/confirm as Stripe.js does, with the pk the answer names."""
    def psp(method: str, url: str, body: Any) -> Reply:
        assert url == f"{PROVIDER}/v1/payment_intents/pi_123/confirm"
        assert body == "client_secret=pi_123_secret_abc&payment_method=pm_card_visa"
        return Reply(OK, 200, {"id": "pi_123", "status": "succeeded"})

    ad = handoff_adapter("stripe", kind="client_secret", field="cs", publishable_key="keys.pk")
    events, tr, ending = play_psp(shop({"trade": "pi_123", "cs": "pi_123_secret_abc", "keys": {"pk": "pk_test_1"}},
                                       psp), ad)
    assert ending == "paid"
    confirm = [h for (_, u, _), h in zip(tr.sent, tr.headers) if u.startswith(PROVIDER)][0]
    assert confirm["Authorization"] == "Bearer pk_test_1"
    assert confirm["Content-Type"] == "application/x-www-form-urlencoded"


def test_an_answer_without_the_hand_off_is_a_failed_payment_the_app_reports():
    ad = handoff_adapter("alipay", kind="cashier_url", field="cashier_url")
    events, tr, ending = play_psp(shop({"trade": "r1-7"}, lambda *a: pytest.fail("no PSP call expected")), ad,
                                  {"user": {"max_retries": 0}})
    assert ending == "gave_up"
    assert not any(u.startswith(PROVIDER) for _, u, _ in tr.sent)
    assert [e["screen"] for e in events if e["type"] == "app.shown"] == ["payment_failed"]


def test_an_alipay_page_pay_form_is_submitted_as_the_browser_would():
    from loadtests.buyer import parse_form

    markup = ('<form name="punchout_form" method="post" action="http://gw/gateway.do?charset=utf-8">'
              '<input type="hidden" name="biz_content" value="{&quot;a&quot;: 1}">'
              '<input type="hidden" name="sign" value="xyz"><input type="submit" value="立即支付"></form>'
              '<script>document.forms[0].submit();</script>')
    assert parse_form(markup) == ("http://gw/gateway.do?charset=utf-8", "POST",
                                  [("biz_content", '{"a": 1}'), ("sign", "xyz")])
    assert parse_form("<p>no form</p>") is None


def test_a_psps_own_refusal_is_not_counted_as_a_malformed_request():
    """A 400 the PSP's buyer side answers with its own code (``refusal``) was read and refused; a 400
    without one means the harness sent something the server could not read."""
    from loadtests.live import live_section
    from loadtests.plan import LiveWindow

    window = LiveWindow(time_scale=60.0, warmup=10.0, horizon=100.0, end=200.0)
    base = {"t": 1.0, "actor": "client", "order": "o", "call": "c", "latency": 0.1, "status": 400}
    events = [{**base, "type": "client.fail", "op": "open_payment", "refusal": "ORDER_CLOSED"},
              {**base, "type": "client.fail", "op": "create_order"}]
    done = [{"planned": 1, "started": 1, "late": 0, "dropped": 0, "completed": 1, "flow_errors": 0, "lags": [0.0],
             "lag_max": 0.0, "in_flight_at_end": 0}]
    live = live_section(events, done, 1, 1.0, window, 1, "http://shop", "wechat_shop", {}, {}, [], 0.05)
    assert live["malformed_requests"] == 1


def test_a_wechat_h5_buyer_opens_the_page_then_pays_with_the_h5_url():
    h5 = f"{PROVIDER}/wechat/h5/checkmweb?prepay_id=wx42&package=1"

    def psp(method: str, url: str, body: Any) -> Reply:
        if method == "GET":
            assert url == h5
            return Reply(OK, 200, {"trade_state": "NOTPAY", "amount": 100})
        assert (url, body) == (f"{PROVIDER}/wechat/app/pay", {"h5_url": h5})
        return Reply(OK, 200, {"trade_state": "USERPAYING"})

    ad = handoff_adapter("wechat", kind="h5_url", field="h5_url")
    events, tr, ending = play_psp(shop({"trade": "r1-7", "h5_url": h5}, psp), ad, {"user": {"max_retries": 0}})
    assert [e["screen"] for e in events if e["type"] == "app.shown"][0] == "payment_unknown"  # then it polls
    assert tr.headers[[u for _, u, _ in tr.sent].index(h5)] == {"Accept": "application/json"}


def test_with_accounts_live_arrivals_are_the_simulations_returning_buyers():
    """``user.accounts``: live arrival ``i`` orders as ``<run>-a<k>``, the account the simulation's arrival
    ``i + 1`` (replication 0, same seed, same scenario) is — the same population, so a short wallet
    stays short across the buyer's orders."""
    from sim.model.model import run_replication

    cfg = {"user": {"accounts": 4, "payment_methods": {"wallet": 0.5, "card": 0.5, "bnpl": 0.0}, "max_retries": 1},
           "run": {"seed": 77, "horizon": "1m", "warmup": "0s", "drain": "1m"}, "load": {"arrival_rate": 1.0}}
    live = [play(reference_checkout(), scenario=cfg, index=i)[1].sent[0][2]["user"] for i in range(20)]
    # the simulation of the very scenario play() gives the live buyer
    base = {"user": {"abandon_probability": 0.0, "pay_delay": "30s", **cfg["user"]}, "app": {"network_latency": "0s"},
            "run": cfg["run"], "load": cfg["load"]}
    simulated: dict[str, str] = {}
    run_replication(scenario_from_dict(base), 0, examples=False,
                    tap=lambda ev: ev["type"] == "order.created" and simulated.setdefault(ev["order"], ev["user"]))
    assert len(simulated) >= 20
    assert live == [f"r1-{simulated[f'r0-o{i + 1}']}" for i in range(20)]
    assert len(set(live)) <= 4 < len(live)


def test_the_buyer_names_a_merchant_of_the_population_drawn_by_share():
    """The merchant comes from the buyer's own stream, by share (where the simulation's buyer draws it);
    with one merchant nothing more is drawn, so every other draw stays what it was."""
    pop = {"merchant": {"population": [{"name": "big", "share": 0.7}, {"name": "mid", "share": 0.2},
                                       {"name": "tiny", "share": 0.1}]}}
    picked = {}
    for index in range(200):
        _, tr, _ = play(reference_checkout(), scenario=pop, index=index)
        picked[index] = tr.sent[0][2]["merchant"]
    counts = {m: list(picked.values()).count(m) for m in ("big", "mid", "tiny")}
    assert sum(counts.values()) == 200 and counts["big"] > counts["mid"] > counts["tiny"] > 0, counts
    _, again, _ = play(reference_checkout(), scenario=pop, index=17)
    assert again.sent[0][2]["merchant"] == picked[17]  # the same buyer, the same merchant
    one, tr_one, _ = play(reference_checkout(), index=17)
    plain, tr_plain, _ = play(reference_checkout(), index=17, scenario={"merchant": {"population": [
        {"name": "m1", "share": 1.0}]}})
    assert tr_one.sent[0][2]["merchant"] == "m1" and one == plain
