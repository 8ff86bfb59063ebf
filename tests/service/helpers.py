"""Helpers for the service tests: polling with a timeout, and the few calls every test makes."""

from __future__ import annotations

import time
from typing import Any, Callable

import httpx
import pytest

from loadtests.service.runner import Services


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


def new_order(s: Services, amount: int = 1000, method: str = "wallet", user: str = "u1", **extra: Any) -> dict:
    r = httpx.post(f"{s.checkout_url}/orders", json={"user": user, "amount": amount, "method": method, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def start_payment(s: Services, order: str, **body: Any) -> dict:
    r = httpx.post(f"{s.checkout_url}/orders/{order}/pay", json=body or None)
    assert r.status_code == 200, r.text
    return r.json()


def order_state(s: Services, order: str) -> str:
    return httpx.get(f"{s.checkout_url}/orders/{order}").json()["state"]


def events_of(s: Services, order: str) -> list[dict]:
    return [e for e in s.history() if e.get("order") == order]
