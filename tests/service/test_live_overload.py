"""Overload that cascades, live, in the mock provider (issue 15 item 9, item 1's mechanisms): the
gateway's worker held for the whole bank call, its bounded queue, and the bank's channels — through
the native face, on real services. No timing assertions: counts from /admin/stats and the ledger."""

from __future__ import annotations

import concurrent.futures as cf

import httpx

from .helpers import new_trade, wait_for


def _pools(s) -> dict:
    return s.admin("provider", "GET", "/admin/stats").json()["pools"]


def _pay(s, trade: str) -> httpx.Response:
    return httpx.post(f"{s.provider_url}/trades/{trade}/pay", timeout=30)


def test_one_worker_is_held_through_the_bank_call_and_a_full_queue_refuses(services):
    """1 gateway worker, a slow bank (30 s model = 0.5 s wall), queue_limit 1: of three concurrent pays
    one is at the bank, one waits for the worker, the third is refused 503 SYSTEM_BUSY at once with
    Retry-After and no money moves for it."""
    s = services
    s.set_faults({"gateway.workers": 1, "gateway.queue_limit": 1, "bank.latency": "30s",
                  "gateway.timeout": "60s"})
    trades = [new_trade(s)["trade"] for _ in range(3)]
    before = _pools(s)["gateway"]
    with cf.ThreadPoolExecutor(3) as ex:
        first = ex.submit(_pay, s, trades[0])
        wait_for(lambda: _pools(s)["gateway"]["busy"] == 1, what="first pay holds the worker")
        second = ex.submit(_pay, s, trades[1])
        wait_for(lambda: _pools(s)["gateway"]["queued"] == 1, what="second pay queued")
        # the worker is still held by the first pay, whose bank call is in flight
        assert _pools(s)["gateway"]["busy"] == 1
        third = _pay(s, trades[2])
        r1, r2 = first.result(), second.result()
    assert third.status_code == 503, third.text
    assert third.json()["code"] == "SYSTEM_BUSY" and third.headers.get("retry-after")
    assert r1.status_code == 200 and r1.json()["state"] == "succeeded"
    assert r2.status_code == 200 and r2.json()["state"] == "succeeded"
    after = _pools(s)["gateway"]
    assert after["rejected"] - before["rejected"] == 1
    q = httpx.get(f"{s.provider_url}/trades/{trades[2]}", timeout=5).json()
    assert q["state"] == "created"


def test_gateway_deadlines_drop_a_pay_queued_past_its_callers_timeout(services):
    """With gateway.deadlines a pay whose X-Request-Timeout has passed when the worker takes it is not
    executed (dropped, no debit); the first pay, holding the worker, succeeds."""
    s = services
    s.set_faults({"gateway.workers": 1, "gateway.deadlines": True, "bank.latency": "30s",
                  "gateway.timeout": "60s"})
    a, b = new_trade(s)["trade"], new_trade(s)["trade"]
    before = _pools(s)["gateway"]
    with cf.ThreadPoolExecutor(2) as ex:
        first = ex.submit(_pay, s, a)
        wait_for(lambda: _pools(s)["gateway"]["busy"] == 1, what="first pay holds the worker")
        # the caller waits 0.05 s wall = 3 s model, far less than the first pay's 30 s bank call
        second = ex.submit(lambda: httpx.post(f"{s.provider_url}/trades/{b}/pay",
                                              headers={"X-Request-Timeout": "0.05"}, timeout=30))
        r1, r2 = first.result(), second.result()
    assert r1.json()["state"] == "succeeded"
    assert r2.status_code == 504 and r2.json()["code"] == "DEADLINE_EXCEEDED"
    assert _pools(s)["gateway"]["dropped"] - before["dropped"] == 1
    assert httpx.get(f"{s.provider_url}/trades/{b}", timeout=5).json()["state"] == "created"


def test_load_shedding_answers_at_once(services):
    s = services
    s.set_faults({"gateway.workers": 1, "gateway.load_shedding": True, "gateway.shed_limit": 1,
                  "bank.latency": "30s", "gateway.timeout": "60s"})
    a, b = new_trade(s)["trade"], new_trade(s)["trade"]
    with cf.ThreadPoolExecutor(1) as ex:
        first = ex.submit(_pay, s, a)
        wait_for(lambda: _pools(s)["gateway"]["busy"] == 1, what="first pay holds the worker")
        r2 = _pay(s, b)
        r1 = first.result()
    assert r1.json()["state"] == "succeeded"
    assert r2.status_code == 503 and r2.json()["code"] == "SYSTEM_BUSY" and r2.json()["overload"] == "shed"


def test_a_full_bank_queue_fails_the_debit_at_once_and_moves_no_money(services):
    """bank.channels 1 and bank.queue_limit 1: with one debit at the bank and one waiting, a third is
    refused at the bank's door: its trade fails (reason error, the simulation's busy), no debit."""
    s = services
    s.set_faults({"gateway.workers": 8, "bank.channels": 1, "bank.queue_limit": 1, "bank.latency": "30s",
                  "gateway.timeout": "120s"})
    trades = [new_trade(s)["trade"] for _ in range(3)]
    before = _pools(s)["bank"]
    charges = s.admin("provider", "GET", "/admin/ledger").json()["txns"].get("charge", 0)
    with cf.ThreadPoolExecutor(2) as ex:
        first = ex.submit(_pay, s, trades[0])
        wait_for(lambda: _pools(s)["bank"]["busy"] == 1, what="first debit at the bank")
        second = ex.submit(_pay, s, trades[1])
        wait_for(lambda: _pools(s)["bank"]["queued"] == 1, what="second debit waiting for a channel")
        third = _pay(s, trades[2])
        r1, r2 = first.result(), second.result()
    assert r1.json()["state"] == "succeeded" and r2.json()["state"] == "succeeded"
    assert third.status_code == 200 and third.json()["state"] == "failed", third.text
    assert _pools(s)["bank"]["rejected"] - before["rejected"] == 1
    ledger = s.admin("provider", "GET", "/admin/ledger").json()
    assert ledger["balanced"] and ledger["txns"].get("charge", 0) - charges == 2  # the two debits made, not the third


def test_without_gateway_deadlines_a_pay_is_executed_after_its_caller_gave_up(services):
    """The cascade: gateway.deadlines off, the second pay's caller gives up (its client times out)
    while it waits for the one worker; the gateway still executes it later — a debit nobody awaits."""
    s = services
    s.set_faults({"gateway.workers": 1, "bank.latency": "30s", "gateway.timeout": "60s"})
    a, b = new_trade(s)["trade"], new_trade(s)["trade"]
    with cf.ThreadPoolExecutor(1) as ex:
        first = ex.submit(_pay, s, a)
        wait_for(lambda: _pools(s)["gateway"]["busy"] == 1, what="first pay holds the worker")
        try:
            httpx.post(f"{s.provider_url}/trades/{b}/pay", headers={"X-Request-Timeout": "0.05"}, timeout=0.05)
            gave_up = False
        except httpx.TimeoutException:
            gave_up = True
        first.result()
    assert gave_up
    wait_for(lambda: httpx.get(f"{s.provider_url}/trades/{b}", timeout=5).json()["state"] == "succeeded",
             what="the abandoned pay executed")


def test_bank_deadlines_do_not_execute_a_debit_whose_gateway_stopped_waiting(services):
    """bank.channels 1, a slow bank (30 s model) and a gateway that waits 6 s for it: a second debit
    queues behind the first; its gateway gives up (the trade is unknown) long before a channel is free.
    With bank.deadlines the bank then drops it — no money moves, the gateway's query learns it expired
    and the trade fails; without them the bank executes it anyway (the cascade: a debit nobody awaits)."""
    s = services
    results = {}
    for deadlines in (True, False):
        second, *rest = _second_debit_behind_the_first(
            s, {"gateway.workers": 8, "bank.channels": 1, "bank.deadlines": deadlines, "bank.latency": "30s",
                "gateway.timeout": "6s", "gateway.bank_query_schedule": ["40s", "40s", "40s"]})
        assert second.status_code == 200 and second.json()["state"] == "unknown", second.text
        results[deadlines] = tuple(rest)
    assert results[True] == ("failed", 1, 1)  # only the first debit made; the second dropped at the bank
    assert results[False] == ("succeeded", 2, 0)  # executed after its gateway had given up


def test_a_bank_deadline_margin_drops_a_debit_that_could_not_answer_in_time(services):
    """bank.channels 1, debits of 25 s, a gateway that waits 30 s: the second debit reaches the channel
    with ~5 s of its gateway's wait left (up to 10 s more, 170 ms at the tests' time scale, if a busy machine
    sends it late: the margin still drops it). Without a margin the bank starts it, answers after the
    gateway gave up (unknown, then found by the query: charged while the buyer was told 'unknown');
    with bank.deadline_margin 15 s it is not started — no money moves and the query finds it expired."""
    s = services
    results = {}
    for margin in ("15s", "0s"):
        second, *rest = _second_debit_behind_the_first(
            s, {"gateway.workers": 8, "bank.channels": 1, "bank.deadlines": True, "bank.deadline_margin": margin,
                "bank.latency": "25s", "gateway.timeout": "30s", "gateway.bank_query_schedule": ["40s", "40s"]})
        results[margin] = (second.json()["state"], *rest)
    assert results["15s"][1:] == ("failed", 1, 1), results  # dropped at the channel: one charge
    assert results["0s"][1:] == ("succeeded", 2, 0), results  # started with too little time: answered late
    assert results["0s"][0] == "unknown", results


def _second_debit_behind_the_first(s, faults: dict) -> tuple:
    """With ``faults`` (one bank channel): pay a first trade, and while its debit holds the channel pay a
    second one; wait until the gateway's query resolves the second. ``(the second pay's response, its
    final state, charges made, debits the bank dropped)``; the ledger stays balanced."""
    s.set_faults(faults)
    a, b = new_trade(s)["trade"], new_trade(s)["trade"]
    before = _pools(s)["bank"]
    charges = s.admin("provider", "GET", "/admin/ledger").json()["txns"].get("charge", 0)
    with cf.ThreadPoolExecutor(1) as ex:
        first = ex.submit(_pay, s, a)
        wait_for(lambda: _pools(s)["bank"]["busy"] == 1, what="first debit at the bank")
        second = _pay(s, b)  # queued at the bank behind the first
        first.result()

    def resolved():
        view = httpx.get(f"{s.provider_url}/trades/{b}", timeout=5).json()
        return view if view["state"] in ("failed", "succeeded") else None

    final = wait_for(resolved, timeout=20, what="the second trade resolved by the gateway's query")
    ledger = s.admin("provider", "GET", "/admin/ledger").json()
    assert ledger["balanced"]
    return (second, final["state"], ledger["txns"].get("charge", 0) - charges,
            _pools(s)["bank"]["dropped"] - before["dropped"])
