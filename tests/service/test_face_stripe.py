"""The Stripe face, driven by the official ``stripe`` SDK (unmodified but for its API base).

The provider runs as a real process on loopback at a high time scale; webhooks go to a real HTTP
receiver in this process and are checked with ``stripe.Webhook.construct_event``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import httpx
import pytest
import stripe

from .conftest import launch


class Receiver:
    """A webhook endpoint on loopback: records every delivery; answers with ``statuses`` in turn."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.delays: list[float] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    delay = receiver.delays.pop(0) if receiver.delays else 0.0
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the provider gave up waiting (the timeout under test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str) -> list[Any]:
        """Every delivery, verified by the SDK's own check (raises on a bad signature)."""
        with self.lock:
            got = list(self.deliveries)
        return [stripe.Webhook.construct_event(body, h["stripe-signature"], secret).to_dict() for h, body in got]

    def wait_for(self, secret: str, predicate: Callable[[list[Any]], bool], timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events(secret)
            if predicate(events):
                return events
            time.sleep(0.05)
        raise AssertionError(f"timed out; events: {[e['type'] for e in self.events(secret)]}")


@pytest.fixture(scope="module")
def psp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    services = launch(tmp_path_factory.mktemp("stripe"), faces=("stripe",))
    yield services
    services.stop()


@pytest.fixture
def env(psp: Any) -> Any:
    psp.set_faults({})
    keys = psp.data_dir / "psp" / "stripe"
    sk = "sk_test_" + (keys / "secret_key").read_text().strip()
    pk = "pk_test_" + (keys / "publishable_key").read_text().strip()
    client = stripe.StripeClient(sk, base_addresses={"api": psp.provider_url}, max_network_retries=0)
    receiver = Receiver()
    endpoint = client.v1.webhook_endpoints.create(params={"url": receiver.url, "enabled_events": ["*"]})
    yield type("Env", (), {"client": client, "sk": sk, "pk": pk, "receiver": receiver, "secret": endpoint.secret,
                           "url": psp.provider_url, "services": psp, "endpoint": endpoint})
    client.v1.webhook_endpoints.delete(endpoint.id)
    receiver.server.shutdown()


def _types(events: list[Any], pi: str) -> list[str]:
    return [e["type"] for e in events if e["data"]["object"].get("id") == pi
            or e["data"]["object"].get("payment_intent") == pi]


def test_payment_intent_happy_path_with_a_verified_webhook(env: Any) -> None:
    """create+confirm with pm_card_visa succeeds; the signed webhook passes construct_event; retrieve agrees."""
    assert env.endpoint.secret.startswith("whsec_")
    pi = env.client.v1.payment_intents.create(params={
        "amount": 8900, "currency": "cny", "payment_method": "pm_card_visa", "confirm": True,
        "payment_method_types": ["card"], "metadata": {"order_id": "o-happy-1", "user": "u1"}})
    assert pi.id.startswith("pi_") and pi.status == "succeeded" and pi.amount_received == 8900
    assert pi.latest_charge.startswith("ch_")
    events = env.receiver.wait_for(env.secret, lambda ev: "payment_intent.succeeded" in _types(ev, pi.id))
    succeeded = next(e for e in events if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] == pi.id)
    assert succeeded["id"].startswith("evt_") and succeeded["data"]["object"]["metadata"]["order_id"] == "o-happy-1"
    assert env.client.v1.payment_intents.retrieve(pi.id).status == "succeeded"
    assert env.client.v1.events.retrieve(succeeded["id"]).type == "payment_intent.succeeded"


def test_a_tampered_webhook_fails_the_sdk_check(env: Any) -> None:
    """The SDK refuses a delivery whose body was changed, or checked with another endpoint's secret."""
    pi = env.client.v1.payment_intents.create(params={"amount": 100, "currency": "cny", "payment_method": "pm_card_visa",
                                                   "confirm": True})
    env.receiver.wait_for(env.secret, lambda ev: "payment_intent.succeeded" in _types(ev, pi.id))
    headers, body = env.receiver.deliveries[-1]
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b'"amount":100', b'"amount":1'), headers["stripe-signature"],
                                       env.secret)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, headers["stripe-signature"], "whsec_other")


@pytest.mark.parametrize("card, decline", [("pm_card_chargeDeclined", "generic_decline"),
                                           ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds")])
def test_declined_cards_raise_card_error_with_decline_code(env: Any, card: str, decline: str) -> None:
    """A declined test card: 402 card_error with its decline_code; the intent asks for another method."""
    with pytest.raises(stripe.CardError) as info:
        env.client.v1.payment_intents.create(params={"amount": 500, "currency": "cny", "payment_method": card,
                                                  "confirm": True})
    err = info.value
    assert err.http_status == 402 and err.code == "card_declined"
    assert err.error.decline_code == decline
    pi = err.error.payment_intent
    assert env.client.v1.payment_intents.retrieve(pi.id).status == "requires_payment_method"
    env.receiver.wait_for(env.secret, lambda ev: "payment_intent.payment_failed" in _types(ev, pi.id))


def test_3d_secure_step_then_success(env: Any) -> None:
    """pm_card_authenticationRequired waits in requires_action until the buyer passes 3-D Secure."""
    pi = env.client.v1.payment_intents.create(params={"amount": 700, "currency": "cny",
                                                   "payment_method": "pm_card_authenticationRequired", "confirm": True})
    assert pi.status == "requires_action" and pi.next_action.type == "redirect_to_url"
    r = httpx.post(env.url + pi.next_action.redirect_to_url.url, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "succeeded"


def test_browser_confirms_with_publishable_key_and_client_secret(env: Any) -> None:
    """As Stripe.js does: pk_ + client_secret may confirm; pk_ alone may not create; a wrong secret is refused."""
    pi = env.client.v1.payment_intents.create(params={"amount": 300, "currency": "cny"})
    assert pi.status == "requires_payment_method"
    browser = stripe.StripeClient(env.pk, base_addresses={"api": env.url}, max_network_retries=0)
    with pytest.raises(stripe.InvalidRequestError):
        browser.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa", "client_secret": "nope"})
    done = browser.v1.payment_intents.confirm(pi.id, params={"payment_method": "pm_card_visa",
                                                          "client_secret": pi.client_secret})
    assert done.status == "succeeded"
    with pytest.raises(stripe.AuthenticationError):
        browser.v1.payment_intents.create(params={"amount": 300, "currency": "cny"})


def test_bad_api_key_moves_no_money(env: Any) -> None:
    """A wrong secret key: 401, and nothing reaches the ledger."""
    before = env.services.admin("provider", "GET", "/admin/ledger").json()
    bad = stripe.StripeClient("sk_test_wrong", base_addresses={"api": env.url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.payment_intents.create(params={"amount": 100, "currency": "cny", "payment_method": "pm_card_visa",
                                           "confirm": True})
    assert env.services.admin("provider", "GET", "/admin/ledger").json() == before


def test_idempotency_key_replays_and_refuses_other_parameters(env: Any) -> None:
    """Same key, same answer (no second charge); other parameters under the key: idempotency_error."""
    params = {"amount": 1200, "currency": "cny", "payment_method": "pm_card_visa", "confirm": True}
    first = env.client.v1.payment_intents.create(params=params, options={"idempotency_key": "idem-1"})
    again = env.client.v1.payment_intents.create(params=params, options={"idempotency_key": "idem-1"})
    assert first.id == again.id
    with pytest.raises(stripe.IdempotencyError):
        env.client.v1.payment_intents.create(params={**params, "amount": 1300}, options={"idempotency_key": "idem-1"})
    # errors are replayed too
    declined = {"amount": 900, "currency": "cny", "payment_method": "pm_card_chargeDeclined", "confirm": True}
    ids = []
    for _ in range(2):
        with pytest.raises(stripe.CardError) as info:
            env.client.v1.payment_intents.create(params=declined, options={"idempotency_key": "idem-2"})
        ids.append(info.value.error.payment_intent.id)
    assert ids[0] == ids[1]


def test_concurrent_requests_with_one_key_do_not_both_act(env: Any) -> None:
    """Two requests at once under one key: one acts, the other is refused (409) or replays it."""
    env.services.set_faults({"bank.latency": "30s"})  # hold the first inside its debit (0.5 s wall)
    params = {"amount": 2100, "currency": "cny", "payment_method": "pm_card_visa", "confirm": True}
    results: list[Any] = []

    def call() -> None:
        try:
            results.append(env.client.v1.payment_intents.create(params=params, options={"idempotency_key": "idem-c"}).id)
        except stripe.StripeError as exc:
            results.append(exc.http_status)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    intents = [r for r in results if isinstance(r, str)]
    assert len(set(intents)) == 1 and (len(intents) == 2 or 409 in results)


def _session(env: Any, **extra: Any) -> Any:
    price = env.client.v1.prices.create(params={"unit_amount": 4500, "currency": "cny",
                                             "product_data": {"name": "tea"}})
    assert env.client.v1.prices.retrieve(price.id).unit_amount == 4500
    return env.client.v1.checkout.sessions.create(params={
        "mode": "payment", "line_items": [{"price": price.id, "quantity": 2}],
        "success_url": "http://127.0.0.1:9/done?session={CHECKOUT_SESSION_ID}", "cancel_url": "http://127.0.0.1:9/c",
        **extra})


def test_checkout_session_happy_path(env: Any) -> None:
    """Session by price id → hosted page → pay → 303 to success_url; complete; checkout.session.completed."""
    cs = _session(env, client_reference_id="o-cs-1")
    assert cs.id.startswith("cs_") and cs.status == "open" and cs.amount_total == 9000
    page = httpx.get(cs.url, timeout=10)
    assert page.status_code == 200 and "90.00 CNY" in page.text
    paid = httpx.post(cs.url + "/pay", data={"payment_method": "pm_card_visa"}, timeout=10)
    assert paid.status_code == 303 and paid.headers["location"].endswith(cs.id)
    done = env.client.v1.checkout.sessions.retrieve(cs.id)
    assert done.status == "complete" and done.payment_status == "paid"
    assert env.client.v1.payment_intents.retrieve(done.payment_intent).status == "succeeded"
    events = env.receiver.wait_for(env.secret, lambda ev: any(
        e["type"] == "checkout.session.completed" and e["data"]["object"]["id"] == cs.id for e in ev))
    assert any(e["type"] == "payment_intent.succeeded" for e in events)


def test_expire_then_complete_exactly_one_wins(env: Any) -> None:
    """Expiring first refuses the buyer's later payment; paying first refuses the expiry."""
    cs = _session(env)
    expired = env.client.v1.checkout.sessions.expire(cs.id)
    assert expired.status == "expired"
    late = httpx.post(f"{env.url}/stripe/checkout/{cs.id}/pay", data={"payment_method": "pm_card_visa"}, timeout=10)
    assert late.status_code == 400
    assert env.client.v1.payment_intents.retrieve(cs.payment_intent).status == "canceled"

    cs2 = _session(env)
    httpx.post(f"{env.url}/stripe/checkout/{cs2.id}/pay", data={"payment_method": "pm_card_visa"}, timeout=10)
    with pytest.raises(stripe.InvalidRequestError):
        env.client.v1.checkout.sessions.expire(cs2.id)
    assert env.client.v1.checkout.sessions.retrieve(cs2.id).status == "complete"


def test_expire_and_complete_at_once(env: Any) -> None:
    """Racing the shop's expiry against the buyer's payment: exactly one of them wins."""
    env.services.set_faults({"bank.latency": "20s"})
    for _ in range(3):
        cs = _session(env)
        httpx.get(cs.url, timeout=10)
        out: dict[str, Any] = {}

        def pay() -> None:
            out["pay"] = httpx.post(cs.url + "/pay", data={"payment_method": "pm_card_visa"}, timeout=20).status_code

        def expire() -> None:
            try:
                out["expire"] = env.client.v1.checkout.sessions.expire(cs.id).status
            except stripe.InvalidRequestError:
                out["expire"] = "refused"

        threads = [threading.Thread(target=pay), threading.Thread(target=expire)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = env.client.v1.checkout.sessions.retrieve(cs.id).status
        paid = out["pay"] == 303
        assert paid != (out["expire"] == "expired"), out
        assert final == ("complete" if paid else "expired")


def test_partial_then_full_refund(env: Any) -> None:
    """A partial refund, then the rest; a third is refused; charge.refunded webhooks are sent."""
    pi = env.client.v1.payment_intents.create(params={"amount": 1000, "currency": "cny", "payment_method": "pm_card_visa",
                                                   "confirm": True})
    part = env.client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 300})
    assert part.id.startswith("re_") and part.amount == 300 and part.status == "succeeded"
    rest = env.client.v1.refunds.create(params={"payment_intent": pi.id})
    assert rest.amount == 700
    with pytest.raises(stripe.InvalidRequestError):
        env.client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1})
    assert env.client.v1.refunds.retrieve(part.id).amount == 300
    env.receiver.wait_for(env.secret, lambda ev: _types(ev, pi.id).count("charge.refunded") >= 2)
    ledger = env.services.admin("provider", "GET", "/admin/ledger").json()
    assert ledger["balanced"]


def test_webhook_retried_after_500_and_after_a_timeout(env: Any) -> None:
    """A 500 and a too-slow answer are not acknowledgements: each event comes again, same id."""
    env.services.set_faults({"gateway.notify_ack_timeout": "5s"})  # 0.25 s wall at the tests' time scale
    env.receiver.statuses = [500]
    env.receiver.delays = [0.0, 1.5]
    pi = env.client.v1.payment_intents.create(params={"amount": 200, "currency": "cny",
                                                      "payment_method": "pm_card_visa", "confirm": True})

    def counts(events: list[Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in events:
            if e["data"]["object"].get("id") == pi.id or e["data"]["object"].get("payment_intent") == pi.id:
                out[e["id"]] = out.get(e["id"], 0) + 1
        return out

    events = env.receiver.wait_for(env.secret, lambda ev: len(counts(ev)) == 2 and min(counts(ev).values()) >= 2,
                                   timeout=40)
    assert sorted(counts(events).values()) == [2, 2]  # each delivered again once acknowledged, not more


def test_unknown_result_resolved_by_retrieve(env: Any) -> None:
    """The bank's answer is lost: the intent is processing (no 5xx); a later retrieve shows the debit."""
    env.services.set_faults({"bank.response_loss": 1.0})
    pi = env.client.v1.payment_intents.create(params={"amount": 400, "currency": "cny", "payment_method": "pm_card_visa",
                                                   "confirm": True})
    assert pi.status == "processing"
    env.services.set_faults({})
    deadline = time.monotonic() + 30
    status = pi.status
    while time.monotonic() < deadline and status == "processing":
        time.sleep(0.2)
        status = env.client.v1.payment_intents.retrieve(pi.id).status
    assert status == "succeeded"


def test_bad_input_gets_stripe_errors_never_5xx(env: Any) -> None:
    """Malformed parameters, unknown routes and objects: Stripe's error envelope with a 4xx."""
    headers = {"Authorization": f"Bearer {env.sk}"}
    cases = [("POST", "/v1/payment_intents", "amount=abc&currency=cny"),
             ("POST", "/v1/payment_intents", "currency=cny"),
             ("POST", "/v1/payment_intents", "amount=100&currency=cny&payment_method=pm_nope&confirm=true"),
             ("POST", "/v1/payment_intents", "amount[x]=1&amount=2"),
             ("POST", "/v1/payment_intents", "a" + "[b]" * 40 + "=1"),
             ("GET", "/v1/payment_intents/pi_missing", ""),
             ("POST", "/v1/checkout/sessions", "mode=payment"),
             ("POST", "/v1/refunds", "payment_intent=pi_missing"),
             ("GET", "/v1/nothing_here", ""),
             ("POST", "/v1/payment_intents", "\xff\xfe")]
    for method, path, body in cases:
        r = httpx.request(method, env.url + path, content=body.encode("latin-1"), headers={
            **headers, "Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error", r.text


def test_mall_pattern_on_stripe(env: Any) -> None:
    """The shop closes its order at its TTL but leaves the Checkout Session open: the buyer still pays
    (paid but closed); expiring the session first makes the late payment fail instead."""
    naive = _session(env, client_reference_id="o-mall-naive")
    # ... the shop's order TTL passes; a naive close job marks the order closed and stops there ...
    late = httpx.post(naive.url + "/pay", data={"payment_method": "pm_card_visa"}, timeout=10)
    assert late.status_code == 303  # the money moved for an order the shop has closed
    history = env.services.history()
    assert any(e["type"] == "trade.succeeded" and e["order"] == "o-mall-naive" for e in history)

    safe = _session(env, client_reference_id="o-mall-safe")
    env.client.v1.checkout.sessions.expire(safe.id)  # the safe close: expire the session, then close the order
    refused = httpx.post(f"{env.url}/stripe/checkout/{safe.id}/pay", data={"payment_method": "pm_card_visa"},
                         timeout=10)
    assert refused.status_code == 400
    history = env.services.history()
    assert not any(e["type"] == "trade.succeeded" and e["order"] == "o-mall-safe" for e in history)
    assert json.loads(json.dumps(env.client.v1.checkout.sessions.retrieve(safe.id).status)) == "expired"


def _refund_events(events: list[Any], re_id: str) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["object"]["status"]) for e in events
            if e["data"]["object"].get("id") == re_id and e["type"].startswith("refund.")]


def test_refund_pending_then_succeeded_with_webhooks(env: Any) -> None:
    """With gateway.refund_latency the refund is created pending: refund.created and charge.refunded at
    once, the money moves only when it lands, then refund.updated says succeeded; retrieve agrees."""
    env.services.set_faults({"gateway.refund_latency": "60s"})  # 1 s wall at the tests' time scale
    pi = env.client.v1.payment_intents.create(params={"amount": 900, "currency": "cny", "payment_method": "pm_card_visa",
                                                   "confirm": True})
    refund = env.client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 400})
    assert refund.status == "pending" and refund.failure_reason is None
    history = env.services.history()
    assert not any(e["type"] == "trade.refunded" and e.get("trade") == pi.id for e in history)  # not landed yet
    with pytest.raises(stripe.InvalidRequestError):  # the pending 400 counts: only 500 are left to refund
        env.client.v1.refunds.create(params={"payment_intent": pi.id, "amount": 501})
    events = env.receiver.wait_for(env.secret, lambda ev: ("refund.updated", "succeeded") in _refund_events(ev, refund.id))
    assert _refund_events(events, refund.id) == [("refund.created", "pending"), ("refund.updated", "succeeded")]
    charge = [e for e in events if e["type"] == "charge.refunded" and e["data"]["object"]["payment_intent"] == pi.id]
    assert charge and charge[0]["data"]["object"]["amount_refunded"] == 400
    assert env.client.v1.refunds.retrieve(refund.id).status == "succeeded"
    landed = [e for e in env.services.history() if e["type"] == "trade.refunded" and e.get("trade") == pi.id]
    assert [e["amount"] for e in landed] == [400]
    assert env.services.admin("provider", "GET", "/admin/ledger").json()["balanced"]


def test_refund_pending_then_failed_gives_failure_reason(env: Any) -> None:
    """gateway.refund_failure: the pending refund fails when it lands (failure_reason, refund.updated and
    refund.failed webhooks), no money moves, and the amount can be refunded again."""
    env.services.set_faults({"gateway.refund_latency": "30s", "gateway.refund_failure": 1.0})
    pi = env.client.v1.payment_intents.create(params={"amount": 700, "currency": "cny", "payment_method": "pm_card_visa",
                                                   "confirm": True})
    refund = env.client.v1.refunds.create(params={"payment_intent": pi.id})
    assert refund.status == "pending" and refund.amount == 700
    # refund.updated and refund.failed are made together and sent concurrently; Stripe does not promise
    # that events arrive in the order they were generated, so only their set is fixed.
    landed = {("refund.updated", "failed"), ("refund.failed", "failed")}
    events = env.receiver.wait_for(env.secret, lambda ev: landed <= set(_refund_events(ev, refund.id)))
    seen = _refund_events(events, refund.id)
    assert seen[0] == ("refund.created", "pending") and sorted(seen[1:]) == sorted(landed)
    failed = env.client.v1.refunds.retrieve(refund.id)
    assert failed.status == "failed" and failed.failure_reason == "declined"
    history = env.services.history()
    assert any(e["type"] == "trade.refund_failed" and e.get("trade") == pi.id for e in history)
    assert not any(e["type"] == "trade.refunded" and e.get("trade") == pi.id for e in history)
    env.services.set_faults({})
    again = env.client.v1.refunds.create(params={"payment_intent": pi.id})  # the money is refundable again
    assert again.status == "succeeded" and again.amount == 700
    assert env.client.v1.payment_intents.retrieve(pi.id).status == "succeeded"
    assert env.services.admin("provider", "GET", "/admin/ledger").json()["balanced"]


@pytest.mark.parametrize("policy, counter", [
    ({"gateway.queue_limit": 0}, "rejected"),  # queue full
    ({"gateway.load_shedding": True, "gateway.shed_limit": 1}, "shed"),  # shedding
], ids=["queue-full", "shed"])
def test_an_overloaded_gateway_answers_stripes_429_rate_limit_through_the_sdk(env: Any, policy: dict,
                                                                              counter: str) -> None:
    """While the only gateway worker is held through a slow card debit, a second create-and-confirm is
    refused with Stripe's 429 ``rate_limit``: the official SDK raises ``RateLimitError`` and no money
    moves for it. stripe-python retries a 429 only when the answer carries ``Stripe-Should-Retry: true``
    (the face sends none), so even a client configured with ``max_network_retries=2`` sees the error
    after one request: the merchant's own code decides when to try again, and its retry then charges once."""
    services = env.services
    services.set_faults({"gateway.workers": 1, "bank.latency": "300s", "gateway.timeout": "600s", **policy})
    held: dict = {}
    t = threading.Thread(target=lambda: held.update(pi=env.client.v1.payment_intents.create(params={
        "amount": 3300, "currency": "cny", "payment_method": "pm_card_visa", "confirm": True})))
    t.start()
    stats = lambda: services.admin("provider", "GET", "/admin/stats").json()["pools"]["gateway"]  # noqa: E731
    deadline = time.monotonic() + 10
    while stats()["busy"] != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats()["busy"] == 1, stats()
    before, refused_before = services.admin("provider", "GET", "/admin/ledger").json(), stats()[counter]
    retrying = stripe.StripeClient(env.sk, base_addresses={"api": env.url}, max_network_retries=2)
    params = {"amount": 4100, "currency": "cny", "payment_method": "pm_card_visa", "confirm": True}
    with pytest.raises(stripe.RateLimitError) as info:
        retrying.v1.payment_intents.create(params=params, options={"idempotency_key": f"peak-{counter}"})
    assert info.value.http_status == 429 and info.value.json_body["error"]["code"] == "rate_limit"
    assert stats()[counter] == refused_before + 1  # one request: the SDK did not retry it
    assert services.admin("provider", "GET", "/admin/ledger").json() == before  # nothing charged for it
    t.join(15)
    services.set_faults({})
    assert held["pi"].status == "succeeded"  # the held payment was served
    done = retrying.v1.payment_intents.create(params=params, options={"idempotency_key": f"peak-{counter}-2"})
    assert done.status == "succeeded" and done.amount_received == 4100
    assert services.admin("provider", "GET", "/admin/ledger").json()["balanced"]
