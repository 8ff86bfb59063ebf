"""Helpers for the service tests: polling with a timeout, unique ids, and the calls every test makes."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from loadtests.service.runner import Services

_ids = itertools.count()
http = httpx.Client(timeout=30)  # one client: building one per call costs ~50 ms (TLS context)


def uid(prefix: str) -> str:
    """An id no other test in this session uses."""
    return f"{prefix}{os.getpid()}x{next(_ids)}"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def new_order(s: Services, amount: int = 1000, method: str = "wallet", user: str | None = None, **extra: Any) -> dict:
    body = {"user": user or uid("u"), "amount": amount, "method": method, **extra}
    r = http.post(f"{s.checkout_url}/orders", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def new_trade(s: Services, amount: int = 500, **extra: Any) -> dict:
    body = {"trade": uid("t"), "order": uid("o"), "user": uid("u"), "amount": amount, **extra}
    r = http.post(f"{s.provider_url}/trades", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def start_payment(s: Services, order: str, **body: Any) -> dict:
    r = http.post(f"{s.checkout_url}/orders/{order}/pay", json=body or None)
    assert r.status_code == 200, r.text
    return r.json()


def order_state(s: Services, order: str) -> str:
    return http.get(f"{s.checkout_url}/orders/{order}").json()["state"]


def events_of(s: Services, order: str) -> list[dict]:
    return [e for e in s.history() if e.get("order") == order]


def balance(s: Services, account: str) -> int:
    return s.admin("provider", "GET", "/admin/ledger").json()["balances"].get(account, 0)


LIVE_MALL = Path(__file__).parents[1] / "fixtures" / "live_mall.toml"


def mall_runs(tmp_path: Path, psp: str, **arms: list[str]) -> dict[str, dict]:
    """``load`` of the compressed mall scenario through the reference checkout on ``psp``, once per arm (its
    extra arguments), each in ``tmp_path / <arm>``; their results documents. The arms run one after the
    other: at time scale 60 a run's few seconds of load keep a core busy (two at once, on a shared
    two-core machine under load, made an Alipay arm invalid: 38% of the buyers' calls timed out)."""
    from sim.cli import main

    docs = {}
    for name, extra in arms.items():
        out = tmp_path / name
        main(["load", str(LIVE_MALL), "--psp", psp, "--out", str(out), "-q", *extra])
        docs[name] = json.loads((out / "results.json").read_text())
    return docs
