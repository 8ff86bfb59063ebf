"""Foreign checkouts as the system under test: shops written on a PSP's official SDK, unaware of this
project but for their configuration, load-tested black box through ``checkout-chaos load --target``.

Each run is the compressed mall scenario (``tests/fixtures/live_mall.toml``: buyers who pay late in
the order's life, notifications that take 20 s to 2 min, time scale 60) against a shop whose close job
is naive or safe. The checker judges from the buyers' client histories, the PSP's history and ledger,
and the order pages read through the adapter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sim.cli import main

ROOT = Path(__file__).parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "live_mall.toml"
STRIPE_SHOP = Path(__file__).parent / "shops" / "stripe_shop.py"
STRIPE_ADAPTER = ROOT / "loadtests" / "adapters" / "stripe_shop.toml"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_against_stripe_shop(tmp_path: Path, close: str) -> tuple[int, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    provider_port, shop_port = _free_port(), _free_port()
    out = tmp_path / "run"
    shop_url = f"http://127.0.0.1:{shop_port}"
    env = {**os.environ, "STRIPE_API_BASE": f"http://127.0.0.1:{provider_port}",
           "STRIPE_KEY_FILE": str(out / "services" / "psp" / "stripe" / "secret_key"),
           "SHOP_CLOSE": close, "SHOP_ORDER_TTL": "2", "SHOP_CLOSE_EVERY": "0.25",  # 2 min / 15 s at x60
           "SHOP_DB": str(tmp_path / "shop.db"), "SHOP_PORT": str(shop_port), "SHOP_PUBLIC_URL": shop_url}
    with open(tmp_path / "shop.log", "wb") as log:
        shop = subprocess.Popen([sys.executable, str(STRIPE_SHOP)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(shop_url + "/orders/none", timeout=1).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            assert shop.poll() is None and time.monotonic() < deadline, (tmp_path / "shop.log").read_text()
            time.sleep(0.1)
        rc = main(["load", str(FIXTURE), "--out", str(out), "-q", "--psp", "stripe", "--target", shop_url,
                   "--target-config", str(STRIPE_ADAPTER), "--provider-port", str(provider_port),
                   "--set", "user.payment_methods={wallet = 0.0, card = 1.0, bnpl = 0.0}"])
    finally:
        shop.terminate()
        shop.wait(timeout=10)
    return rc, json.loads((out / "results.json").read_text())


def test_stripe_shop_with_a_naive_close_loses_money_and_the_safe_one_does_not(tmp_path):
    """Naive: the shop closes orders whose Checkout Session stays open; late payments land on closed
    orders (paid_but_closed). Safe: it expires the session first and keeps the paid ones: none."""
    rc, naive = _run_against_stripe_shop(tmp_path / "naive", "naive")
    assert naive["live"]["adapter"] == "stripe_shop"
    assert naive["anomalies"]["paid_but_closed"]["count"] >= 1, naive["anomalies"]["paid_but_closed"]
    assert rc == 1  # the fixture's threshold paid_but_closed.count <= 0 fails
    rc, safe = _run_against_stripe_shop(tmp_path / "safe", "safe")
    assert safe["anomalies"]["paid_but_closed"]["count"] == 0, safe["anomalies"]["paid_but_closed"]
    assert sum(v for k, v in safe["end_states"].items() if k.startswith("paid")) > 0  # payments did go through
