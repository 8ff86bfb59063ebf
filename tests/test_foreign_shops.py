"""Foreign checkouts as the system under test: shops written on a PSP's official SDK, unaware of this
project but for their configuration, load-tested black box through ``checkout-chaos load --target``.

Each run is the compressed mall scenario (``tests/fixtures/live_mall.toml``: a 2-minute order TTL,
buyers who pay late in the order's life, notifications that take 20 s to 2 min), at half its load and
with buyers who try again at the PSP's cashier after a declined payment (:data:`LATE_RETRIES`),
against a shop whose close job is naive or safe. The buyers pay the PSP's way (the adapter's
``start_payment.handoff``). The checker judges from the buyers' client histories, the PSP's history
and ledger, and the order pages read through the adapter. Seeds are the fixture's (7): the same run
each time, but for the machine's timing.
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
from live_load import load, side_by_side

ROOT = Path(__file__).parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "live_mall.toml"
SHOPS = Path(__file__).parent / "shops"
ADAPTERS = ROOT / "loadtests" / "adapters"
STRIPE_SHOP = SHOPS / "stripe_shop.py"
STRIPE_ADAPTER = ADAPTERS / "stripe_shop.toml"
# The fixture's 4 + 4 minutes at x20 (not its x60): a Flask dev server and an SDK that signs every call
# keep up with the buyers on a busy machine (at x60 the app's 1 s of wall timeout is too short there).
SCALE = 20
# Buyers whose first payment may be declined and who try again at the PSP's cashier (the QR code or
# payment page still in front of them) 40 s to 2 minutes later — after the 2-minute order TTL for most
# (they paid 60 to 110 s after ordering): late payers, paying through the face after the shop's close
# job ran. The last of them is done before the 8 minutes of observation end.
LATE_RETRIES = ["load.arrival_rate=0.25", "user.payment_methods={wallet = 1.0, card = 0.0, bnpl = 0.0}",
                "bank.decline_probability=0.3", "user.retry_probability=1.0", "user.max_retries=1",
                'user.retry_delay={dist = "uniform", low = "40s", high = "120s"}']

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_shop(tmp_path: Path, shop: Path, adapter: Path, psp: str, env: dict[str, str],
              sets: list[str]) -> tuple[int, dict]:
    """Start ``shop`` (its own process, SQLite in ``tmp_path``), then ``load --target`` it black box."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    provider_port, shop_port = _free_port(), _free_port()
    out = tmp_path / "run"
    shop_url = f"http://127.0.0.1:{shop_port}"
    provider = f"http://127.0.0.1:{provider_port}"
    keys = out / "services" / "psp" / psp
    full_env = {**os.environ, "SHOP_ORDER_TTL": str(120 / SCALE), "SHOP_CLOSE_EVERY": str(15 / SCALE),  # 2 min / 15 s
                "SHOP_DB": str(tmp_path / "shop.db"), "SHOP_PORT": str(shop_port), "SHOP_PUBLIC_URL": shop_url}
    full_env.update({k: v.format(provider=provider, keys=keys) for k, v in env.items()})
    with open(tmp_path / "shop.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, str(shop)], env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(shop_url + "/orders/none", timeout=1).status_code == 404:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "shop.log").read_text()
            time.sleep(0.1)
        argv = ["load", str(FIXTURE), "--out", str(out), "-q", "--psp", psp, "--target", shop_url,
                "--target-config", str(adapter), "--provider-port", str(provider_port), "--time-scale", str(SCALE),
                "--run-time", f"{240 / SCALE:g}s", "--drain", f"{240 / SCALE:g}s"]
        for item in sets:
            argv += ["--set", item]
        rc = load(argv, tmp_path / "load.log")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    results = out / "results.json"
    assert results.exists(), (rc, (tmp_path / "load.log").read_text()[-3000:])
    return rc, json.loads(results.read_text())


def _assert_exit(rc: int, results: dict) -> None:
    """The fixture's threshold (paid_but_closed.count <= 0) fails: exit 1 — or 3 when a busy machine made
    the run not valid (it says why), which outranks a threshold."""
    assert rc == (1 if results["valid"] else 3), (rc, results["validity"]["reasons"])


def _late_payers(results_dir: Path) -> int:
    """Buyers whose app showed "payment succeeded" after their order's TTL, as their own history says."""
    expires: dict[str, float] = {}
    events = [json.loads(line) for f in sorted((results_dir / "client").glob("*.jsonl"))
              for line in f.read_text().splitlines()]
    for ev in events:
        if ev.get("type") == "order.created" and "expires_at" in ev:
            expires[ev["order"]] = ev["expires_at"]
    return sum(1 for ev in events if ev.get("type") == "app.shown" and ev.get("screen") == "payment_succeeded"
               and ev["t"] > expires.get(ev["order"], float("inf")))


def _assert_naive_loses(run: tuple[int, dict], run_dir: Path, adapter: str | None = None) -> None:
    """A naive run: buyers paid after their order's TTL, paid_but_closed counted them, the threshold failed."""
    rc, doc = run
    if adapter is not None:
        assert doc["live"]["adapter"] == adapter
    assert _late_payers(run_dir) >= 1
    assert doc["anomalies"]["paid_but_closed"]["count"] >= 1, doc["anomalies"]["paid_but_closed"]
    _assert_exit(rc, doc)


def _assert_safe_keeps(run: tuple[int, dict]) -> None:
    """A safe run: no paid_but_closed, and payments did go through."""
    _, doc = run
    assert doc["anomalies"]["paid_but_closed"]["count"] == 0, doc["anomalies"]["paid_but_closed"]
    assert sum(v for k, v in doc["end_states"].items() if k.startswith("paid")) > 0


def _client_ok_ops(run_dir: Path) -> set[str]:
    """The operations the buyers' clients completed (``client.ok`` events), as their histories say."""
    return {e.get("op") for f in (run_dir / "client").glob("*.jsonl") for line in f.read_text().splitlines()
            for e in [json.loads(line)] if e["type"] == "client.ok"}


ALIPAY_ENV = {"ALIPAY_GATEWAY": "{provider}/gateway.do", "ALIPAY_KEY_DIR": "{keys}", "SHOP_TIMEOUT_EXPRESS": "3m"}


def _alipay_form_naive(tmp_path: Path) -> tuple[int, dict]:
    """The Alipay shop answering page pay as the HTML form Alipay's SDKs render (``SHOP_PAY_MODE=form``),
    the adapter declaring ``kind = "form"``, closing naively; the run in ``tmp_path / "naive"``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    adapter = tmp_path / "alipay_form.toml"
    adapter.write_text((ADAPTERS / "alipay_shop.toml").read_text()
                       .replace('kind = "qr_code"', 'kind = "form"').replace('field = "qr_code"', 'field = "pay_form"'))
    return _run_shop(tmp_path / "naive", SHOPS / "alipay_shop.py", adapter, "alipay",
                     {**ALIPAY_ENV, "SHOP_CLOSE": "naive", "SHOP_PAY_MODE": "form"}, LATE_RETRIES)


def test_alipay_shop_with_a_naive_close_loses_money_and_the_safe_one_does_not(tmp_path):
    """QR-code trades (precreate) on python-alipay-sdk. Naive: the order is closed, the QR code stays
    payable; buyers who try again after the TTL pay a closed order (paid_but_closed). Safe: the trade
    is queried and closed at Alipay first; the late tries are refused: none.

    Beside them (a third run at the same time), page pay by form: the same shop answering the HTML form
    Alipay's SDKs render, the buyers submit it (the gateway sends them to the cashier) and confirm; the
    naive close still loses money."""
    adapter = ADAPTERS / "alipay_shop.toml"
    runs = side_by_side(
        naive=lambda: _run_shop(tmp_path / "naive", SHOPS / "alipay_shop.py", adapter, "alipay",
                                {**ALIPAY_ENV, "SHOP_CLOSE": "naive"}, LATE_RETRIES),
        safe=lambda: _run_shop(tmp_path / "safe", SHOPS / "alipay_shop.py", adapter, "alipay",
                               {**ALIPAY_ENV, "SHOP_CLOSE": "safe"}, LATE_RETRIES),
        form=lambda: _alipay_form_naive(tmp_path / "form"))
    _assert_naive_loses(runs["naive"], tmp_path / "naive" / "run", "alipay_shop")
    _assert_safe_keeps(runs["safe"])
    # page pay by form
    assert "open_payment" in _client_ok_ops(tmp_path / "form" / "naive" / "run"), "no buyer submitted the page-pay form"
    _assert_naive_loses(runs["form"], tmp_path / "form" / "naive" / "run")


def _wechat_env(tmp_path: Path) -> dict[str, str]:
    """What ``serve --psp wechat`` prints for the merchant's configuration (its ids; the key files are
    the run's, ``{keys}``)."""
    from loadtests.service.psp.faces import face_class

    face = face_class("wechat")(None, tmp_path / "wechat-config", None)
    config = face.merchant_config("http://127.0.0.1")
    return {"WECHAT_GATEWAY": "{provider}", "WECHAT_KEY_DIR": "{keys}", "WECHAT_MCHID": config["mchid"],
            "WECHAT_APPID": config["appid"], "WECHAT_SERIAL_NO": config["cert_serial_no"],
            "WECHAT_PUBLIC_KEY_ID": config["public_key_id"]}


def test_wechat_shop_with_a_naive_close_loses_money_and_the_safe_one_does_not(tmp_path):
    """Native pay (code_url) on wechatpayv3. Naive: the order is closed, the code_url stays payable;
    buyers who try again after the TTL pay a closed order (paid_but_closed). Safe: the WeChat order
    expires with ours (time_expire) and is queried, and closed once WeChat's 5 minutes allow; the late
    tries are refused or find the order still open: none."""
    adapter = ADAPTERS / "wechat_shop.toml"
    shop = SHOPS / "wechat_shop.py"
    envs = {arm: {**_wechat_env(tmp_path / arm), "SHOP_CLOSE": arm} for arm in ("naive", "safe")}
    runs = side_by_side(naive=lambda: _run_shop(tmp_path / "naive", shop, adapter, "wechat", envs["naive"], LATE_RETRIES),
                        safe=lambda: _run_shop(tmp_path / "safe", shop, adapter, "wechat", envs["safe"], LATE_RETRIES))
    _assert_naive_loses(runs["naive"], tmp_path / "naive" / "run", "wechat_shop")
    _assert_safe_keeps(runs["safe"])


def _stripe_intent_naive(tmp_path: Path) -> tuple[int, dict]:
    """The Stripe shop on PaymentIntents (``SHOP_PAY_MODE=intent``): it answers the ``client_secret`` and its
    publishable key, the adapter declares ``kind = "client_secret"``; closing naively; the run in
    ``tmp_path / "naive"``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    adapter = tmp_path / "stripe_intent.toml"
    adapter.write_text((STRIPE_ADAPTER).read_text()
                       .replace('response = { trade = "session" }', 'response = { trade = "intent" }')
                       .replace('kind = "checkout_url"', 'kind = "client_secret"\npublishable_key = "publishable_key"')
                       .replace('field = "checkout_url"', 'field = "client_secret"'))
    env = {"STRIPE_API_BASE": "{provider}", "STRIPE_KEY_FILE": "{keys}/secret_key", "SHOP_PAY_MODE": "intent",
           "STRIPE_PUBLISHABLE_KEY_FILE": "{keys}/publishable_key", "SHOP_CLOSE": "naive"}
    return _run_shop(tmp_path / "naive", STRIPE_SHOP, adapter, "stripe", env, CARD_RETRIES)


CARD_RETRIES = [x.replace("wallet = 1.0, card = 0.0", "wallet = 0.0, card = 1.0") for x in LATE_RETRIES]


def test_stripe_shop_with_a_naive_close_loses_money_and_the_safe_one_does_not(tmp_path):
    """Checkout Sessions on the stripe SDK, paid by card. Naive: the shop closes orders whose Checkout
    Session stays open; buyers who try again after the TTL, and payments whose webhook lands after the
    close, are charged for closed orders (paid_but_closed). Safe: it expires the session first and
    keeps the paid ones: none.

    Beside them (a third run at the same time), PaymentIntents: the buyers confirm the ``client_secret``
    as Stripe.js does; the naive close still loses money."""
    card = CARD_RETRIES
    env = {"STRIPE_API_BASE": "{provider}", "STRIPE_KEY_FILE": "{keys}/secret_key"}
    runs = side_by_side(
        naive=lambda: _run_shop(tmp_path / "naive", STRIPE_SHOP, STRIPE_ADAPTER, "stripe", {**env, "SHOP_CLOSE": "naive"}, card),
        safe=lambda: _run_shop(tmp_path / "safe", STRIPE_SHOP, STRIPE_ADAPTER, "stripe", {**env, "SHOP_CLOSE": "safe"}, card),
        intent=lambda: _stripe_intent_naive(tmp_path / "intent"))
    _assert_naive_loses(runs["naive"], tmp_path / "naive" / "run", "stripe_shop")
    _assert_safe_keeps(runs["safe"])
    # PaymentIntents confirmed by the buyer's browser
    assert "confirm_payment" in _client_ok_ops(tmp_path / "intent" / "naive" / "run")
    _assert_naive_loses(runs["intent"], tmp_path / "intent" / "naive" / "run")
