"""The WeChat Pay v3 face, driven by the official ``wechatpayv3`` SDK (unmodified but for
``_core._gate_way``), with a loopback merchant that checks notifications with the SDK's ``callback()``.

The provider runs at time scale 600 (10 scenario minutes per wall second): WeChat's 5-minute close
rule takes half a wall second, its 15 s first retry 25 ms.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

wechatpayv3 = pytest.importorskip("wechatpayv3")
from wechatpayv3 import WeChatPay, WeChatPayType  # noqa: E402
from wechatpayv3.utils import build_authorization  # noqa: E402

from loadtests.service.psp.faces import face_class  # noqa: E402

from .conftest import launch  # noqa: E402
from .helpers import http, uid, wait_for  # noqa: E402

SCALE = 600.0
# (timeouts in wall seconds: the bank call 0.1 s, the merchant's acknowledgement 5 s)
OVERRIDES = {"gateway.timeout": "60s", "gateway.notify_ack_timeout": "3000s"}


class Merchant:
    """A stand-in staging checkout: its notify URL runs ``wxpay.callback()`` and answers per ``answers``
    (one status per delivery, then 200); it records every delivery and what ``callback()`` made of it."""

    def __init__(self, wxpay: WeChatPay) -> None:
        self.wxpay = wxpay
        self.answers: dict[str, list[int]] = {}  # out_trade_no -> statuses for its next deliveries
        self.deliveries: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items()}
                result = outer.wxpay.callback(headers, raw)
                no = result["resource"]["out_trade_no"] if result else None
                queue = outer.answers.get(no) if no else None
                status = (queue.pop(0) if queue else 200) if result else 401
                outer.deliveries.append({"headers": headers, "body": raw, "result": result, "status": status,
                                         "out_trade_no": no})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/wxpay/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, out_trade_no: str, event: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if d["out_trade_no"] == out_trade_no
                and (event is None or d["result"]["event_type"] == event)]


def sdk_for(services: Any) -> tuple[WeChatPay, dict, Path]:
    """The official SDK configured from what ``serve --psp wechat`` prints: ``(wxpay, config, key dir)``."""
    face = face_class("wechat")(None, services.data_dir, None)
    config = face.merchant_config(services.provider_url)
    d = face.dir
    wxpay = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=config["mchid"],
                      private_key=(d / "merchant_private_key.pem").read_text(),
                      cert_serial_no=config["cert_serial_no"], appid=config["appid"],
                      apiv3_key=(d / "apiv3_key").read_text().strip(), notify_url="http://placeholder/",
                      public_key=(d / "platform_public_key.pem").read_text(), public_key_id=config["public_key_id"])
    wxpay._core._gate_way = services.provider_url  # the SDK's only change: its base URL
    return wxpay, config, d


@pytest.fixture(scope="module")
def wx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    services = launch(tmp_path_factory.mktemp("wechat"), OVERRIDES, SCALE, faces=("wechat",))
    wxpay, config, d = sdk_for(services)
    private_pem = (d / "merchant_private_key.pem").read_text()
    merchant = Merchant(wxpay)
    wxpay._notify_url = merchant.url

    class Ctx:
        pass

    ctx = Ctx()
    ctx.s, ctx.wxpay, ctx.merchant, ctx.config, ctx.dir, ctx.private_pem = (services, wxpay, merchant, config, d,
                                                                            private_pem)
    yield ctx
    merchant.server.shutdown()
    services.stop()


@pytest.fixture
def w(wx: Any) -> Any:
    wx.s.set_faults({})
    return wx


def _json(resp: tuple[int, Any]) -> tuple[int, dict]:
    code, text = resp
    return code, (json.loads(text) if text else {})


def native_order(w: Any, amount: int = 880) -> tuple[str, str]:
    no = uid("wxn")
    code, body = _json(w.wxpay.pay(description="测试商品", out_trade_no=no, amount={"total": amount},
                                   pay_type=WeChatPayType.NATIVE))
    assert code == 200, body
    return no, body["code_url"]


def app(w: Any, action: str, **body: Any) -> Any:
    return http.post(f"{w.s.provider_url}/wechat/app/{action}", json=body)


def query(w: Any, no: str) -> dict:
    code, body = _json(w.wxpay.query(out_trade_no=no))
    assert code == 200, body
    return body


def ledger(w: Any) -> dict:
    return w.s.admin("provider", "GET", "/admin/ledger").json()


def test_native_order_paid_notified_queried_refunded(w: Any) -> None:
    """The whole story with the SDK: order, scan, pay, TRANSACTION.SUCCESS accepted by callback(), query,
    close refused (paid), an asynchronous refund, REFUND.SUCCESS accepted by callback(), refund query."""
    no, code_url = native_order(w, 880)
    assert code_url.startswith("weixin://wxpay/bizpayurl?pr=")
    assert query(w, no)["trade_state"] == "NOTPAY"
    cashier = app(w, "scan", code_url=code_url)
    assert cashier.status_code == 200 and cashier.json()["amount"] == 880 and cashier.json()["trade_state"] == "NOTPAY"
    paid = app(w, "pay", code_url=code_url)
    assert paid.status_code == 200 and paid.json()["trade_state"] == "SUCCESS", paid.text

    note = wait_for(lambda: w.merchant.of(no, "TRANSACTION.SUCCESS"), what="TRANSACTION.SUCCESS")[0]
    assert note["status"] == 200
    headers = note["headers"]
    assert headers["Wechatpay-Serial"] == w.config["public_key_id"].strip()
    assert headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    res = note["result"]["resource"]
    assert note["result"]["resource_type"] == "encrypt-resource"
    assert res["trade_state"] == "SUCCESS" and res["amount"]["total"] == 880 and res["mchid"] == w.config["mchid"]

    q = query(w, no)
    assert q["trade_state"] == "SUCCESS" and q["transaction_id"] == res["transaction_id"]
    code, by_id = _json(w.wxpay.query(transaction_id=q["transaction_id"]))
    assert code == 200 and by_id["out_trade_no"] == no

    code, body = _json(w.wxpay.close(out_trade_no=no))
    assert (code, body["code"]) == (400, "ORDERPAID")

    before = ledger(w)["txns"].get("refund", 0)
    rno = uid("r")
    code, refund = _json(w.wxpay.refund(out_refund_no=rno, amount={"refund": 300, "total": 880, "currency": "CNY"},
                                        out_trade_no=no, notify_url=w.merchant.url))
    assert code == 200 and refund["status"] == "PROCESSING", refund
    rnote = wait_for(lambda: w.merchant.of(no, "REFUND.SUCCESS"), what="REFUND.SUCCESS")[0]
    assert rnote["result"]["resource"]["refund_status"] == "SUCCESS"
    assert rnote["result"]["resource"]["out_refund_no"] == rno and rnote["result"]["resource"]["amount"]["refund"] == 300
    code, rq = _json(w.wxpay.query_refund(out_refund_no=rno))
    assert code == 200 and rq["status"] == "SUCCESS" and rq["amount"]["refund"] == 300
    assert query(w, no)["trade_state"] == "REFUND"
    # the same out_refund_no again answers the same refund; another amount under it is refused
    code, again = _json(w.wxpay.refund(out_refund_no=rno, amount={"refund": 300, "total": 880, "currency": "CNY"},
                                       out_trade_no=no))
    assert code == 200 and again["refund_id"] == refund["refund_id"]
    code, body = _json(w.wxpay.refund(out_refund_no=rno, amount={"refund": 200, "total": 880, "currency": "CNY"},
                                      out_trade_no=no))
    assert (code, body["code"]) == (400, "INVALID_REQUEST")
    after = ledger(w)
    assert after["balanced"] and after["txns"].get("refund", 0) == before + 1


def test_close_refused_in_first_five_minutes_then_code_url_dead(w: Any) -> None:
    no, code_url = native_order(w)
    code, body = _json(w.wxpay.close(out_trade_no=no))
    assert (code, body["code"]) == (400, "INVALID_REQUEST") and "5" in body["message"]
    assert query(w, no)["trade_state"] == "NOTPAY"
    time.sleep(300 / SCALE + 0.1)  # five scenario minutes
    code, body = w.wxpay.close(out_trade_no=no)
    assert code == 204 and not body
    assert query(w, no)["trade_state"] == "CLOSED"
    for action in ("scan", "pay"):
        r = app(w, action, code_url=code_url)
        assert (r.status_code, r.json()["code"]) == (400, "ORDER_CLOSED")
    code, body = _json(w.wxpay.pay(description="测试商品", out_trade_no=no, amount={"total": 880},
                                   pay_type=WeChatPayType.NATIVE))
    assert (code, body["code"]) == (400, "ORDER_CLOSED")


def test_unknown_result_is_userpaying_then_resolved_by_query(w: Any) -> None:
    """The bank's answer is lost: the buyer's app shows 'paying', the merchant's query USERPAYING and a
    refund SYSTEM_ERROR (result unknown); the gateway's own bank query then finds the debit: SUCCESS."""
    w.s.set_faults({"bank.response_loss": 1.0, "gateway.bank_query_schedule": ["900s"]})  # 1.5 s wall
    no, code_url = native_order(w, 990)
    r = app(w, "pay", code_url=code_url)
    assert r.status_code == 200 and r.json()["trade_state"] == "USERPAYING"
    assert query(w, no)["trade_state"] == "USERPAYING"
    code, body = _json(w.wxpay.refund(out_refund_no=uid("r"), amount={"refund": 990, "total": 990, "currency": "CNY"},
                                      out_trade_no=no))
    assert (code, body["code"]) == (500, "SYSTEM_ERROR")
    state = wait_for(lambda: query(w, no)["trade_state"] == "SUCCESS", what="SUCCESS by query")
    assert state
    assert wait_for(lambda: w.merchant.of(no, "TRANSACTION.SUCCESS"), what="late notification")


def test_userpaying_while_debit_in_flight_and_jsapi_h5(w: Any) -> None:
    """JSAPI: the app confirms the prepay_id with the merchant's paySign (a bad one is refused); while the
    bank works the order is USERPAYING. H5: the h5_url opens the cashier and pays."""
    no, openid = uid("wxj"), uid("o")
    code, body = _json(w.wxpay.pay(description="小程序订单", out_trade_no=no, amount={"total": 500},
                                   payer={"openid": openid}, pay_type=WeChatPayType.JSAPI))
    assert code == 200, body
    prepay_id = body["prepay_id"]
    ts, nonce, package = str(int(time.time())), secrets.token_hex(8), f"prepay_id={prepay_id}"
    fields = {"appId": w.config["appid"], "timeStamp": ts, "nonceStr": nonce, "package": package, "signType": "RSA"}
    bad = app(w, "pay", **fields, paySign=base64.b64encode(b"x" * 256).decode())
    assert (bad.status_code, bad.json()["code"]) == (401, "SIGN_ERROR")
    assert query(w, no)["trade_state"] == "NOTPAY"

    w.s.set_faults({"bank.latency": "300s", "gateway.timeout": "900s"})  # half a wall second at the bank
    sign = w.wxpay.sign([w.config["appid"], ts, nonce, package])
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=app(w, "pay", **fields, paySign=sign)))
    t.start()
    assert wait_for(lambda: query(w, no)["trade_state"] == "USERPAYING", what="USERPAYING")
    again = app(w, "pay", **fields, paySign=sign)  # a second confirmation while the first is at the bank
    assert again.status_code == 200 and again.json()["trade_state"] == "USERPAYING"
    t.join(10)
    assert result["r"].json()["trade_state"] == "SUCCESS"
    assert query(w, no)["payer"]["openid"] == openid
    w.s.set_faults({})

    h5 = uid("wxh")
    code, body = _json(w.wxpay.pay(description="H5订单", out_trade_no=h5, amount={"total": 200},
                                   scene_info={"payer_client_ip": "127.0.0.1", "h5_info": {"type": "Wap"}},
                                   pay_type=WeChatPayType.H5))
    assert code == 200, body
    page = http.get(body["h5_url"])
    assert page.status_code == 200 and page.json()["amount"] == 200
    assert app(w, "pay", h5_url=body["h5_url"]).json()["trade_state"] == "SUCCESS"
    assert query(w, h5)["trade_type"] == "MWEB"


def test_handler_answering_204_acknowledges_and_failures_retry_on_wechat_schedule(w: Any) -> None:
    """A 500 is retried (15 s later: WeChat's schedule, the scenario's being the default); a 204 without
    a body acknowledges: no third delivery."""
    no, code_url = native_order(w, 120)
    w.merchant.answers[no] = [500, 204]
    assert app(w, "pay", code_url=code_url).json()["trade_state"] == "SUCCESS"
    wait_for(lambda: len(w.merchant.of(no)) >= 2, what="a retried delivery")
    time.sleep(0.3)  # well past the next gap (30 s = 50 ms) had the 204 not counted
    got = w.merchant.of(no)
    assert [d["status"] for d in got] == [500, 204]
    assert got[0]["result"]["id"] == got[1]["result"]["id"]  # the same notification, retried
    sent = [e for e in w.s.history() if e["type"] == "notify.sent" and e.get("trade") == no]
    assert [e["attempt"] for e in sent] == [1, 2]
    assert 15.0 <= sent[1]["t"] - sent[0]["t"] < 20.0  # Alipay's first gap would be 240 s


def test_tampered_or_misencrypted_notification_rejected_by_callback(w: Any) -> None:
    no, code_url = native_order(w, 330)
    app(w, "pay", code_url=code_url)
    note = wait_for(lambda: w.merchant.of(no, "TRANSACTION.SUCCESS"), what="notification")[0]
    headers, body = note["headers"], note["body"]
    assert w.wxpay.callback(headers, body) is not None  # the genuine one
    assert w.wxpay.callback(headers, body.replace(b"TRANSACTION.SUCCESS", b"TRANSACTION.SUCCES2")) is None

    platform = serialization.load_pem_private_key((w.dir / "platform_private_key.pem").read_bytes(), None)

    def signed(raw: bytes, key: Any = platform) -> dict:
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        sig = key.sign(f"{ts}\n{nonce}\n".encode() + raw + b"\n", padding.PKCS1v15(), hashes.SHA256())
        return {**headers, "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": base64.b64encode(sig).decode()}

    doc = json.loads(body)
    wrong = AESGCM(b"k" * 32).encrypt(b"0123456789ab", json.dumps({"out_trade_no": no}).encode(), b"transaction")
    doc["resource"].update(nonce="0123456789ab", ciphertext=base64.b64encode(wrong).decode())
    misencrypted = json.dumps(doc).encode()
    assert w.wxpay.callback(signed(misencrypted), misencrypted) is None  # signature fine, key wrong
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert w.wxpay.callback(signed(body, other), body) is None  # signed by someone else
    assert w.wxpay.callback(signed(body), body) is not None  # (the re-signing itself is sound)


def _signed_request(w: Any, method: str, path: str, raw: str, key_pem: str | None = None) -> Any:
    """``raw`` sent as is, signed as the SDK signs (with the merchant's key unless ``key_pem``)."""
    from wechatpayv3.utils import load_private_key

    key = load_private_key(key_pem) if key_pem else w.wxpay._core._private_key
    auth = build_authorization(path, method, w.config["mchid"], w.config["cert_serial_no"], key, data=raw)
    return http.request(method, w.s.provider_url + path, content=raw.encode(),
                        headers={"Authorization": auth, "Content-Type": "application/json", "Accept": "application/json"})


def test_bad_request_signature_is_401_and_moves_no_money(w: Any) -> None:
    no, code_url = native_order(w, 700)
    app(w, "pay", code_url=code_url)
    assert query(w, no)["trade_state"] == "SUCCESS"
    before = ledger(w)
    body = json.dumps({"out_refund_no": uid("r"), "out_trade_no": no,
                       "amount": {"refund": 700, "total": 700, "currency": "CNY"}})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path = "/v3/refund/domestic/refunds"
    r = _signed_request(w, "POST", path, body, stranger)
    assert (r.status_code, r.json()["code"]) == (401, "SIGN_ERROR")
    # a genuine signature over another body
    good = build_authorization(path, "POST", w.config["mchid"], w.config["cert_serial_no"],
                               w.wxpay._core._private_key, data=body)
    tampered = body.replace('"refund": 700', '"refund": 699')
    r = http.post(w.s.provider_url + path, content=tampered.encode(),
                  headers={"Authorization": good, "Content-Type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (401, "SIGN_ERROR")
    r = http.post(w.s.provider_url + path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["code"]) == (401, "SIGN_ERROR")
    # an SDK configured with a stranger's key
    wrong = WeChatPay(wechatpay_type=WeChatPayType.NATIVE, mchid=w.config["mchid"], private_key=stranger,
                      cert_serial_no=w.config["cert_serial_no"], appid=w.config["appid"],
                      apiv3_key=(w.dir / "apiv3_key").read_text().strip(), notify_url=w.merchant.url,
                      public_key=(w.dir / "platform_public_key.pem").read_text(),
                      public_key_id=w.config["public_key_id"])
    wrong._core._gate_way = w.s.provider_url
    code, err = _json(wrong.refund(out_refund_no=uid("r"), amount={"refund": 700, "total": 700, "currency": "CNY"},
                                   out_trade_no=no))
    assert (code, err["code"]) == (401, "SIGN_ERROR")
    after = ledger(w)
    assert after["txns"] == before["txns"] and after["balances"] == before["balances"]
    assert query(w, no)["trade_state"] == "SUCCESS"


def test_malformed_bodies_get_wechat_errors_never_5xx(w: Any) -> None:
    """Signed requests with broken bodies, on every merchant route, and junk on the buyer's routes:
    4xx with WeChat's {code, message}, signed; never a 5xx."""
    from wechatpayv3.utils import load_public_key, rsa_verify

    platform_public = load_public_key((w.dir / "platform_public_key.pem").read_text())
    no, _ = native_order(w)
    bodies = ["", "{", "[]", "null", "123", '"x"', '{"amount": "ten"}', '{"appid": 1}',
              json.dumps({"appid": w.config["appid"], "mchid": w.config["mchid"], "description": "x" * 500,
                          "out_trade_no": "short", "notify_url": "ftp://x", "amount": {"total": -1}}),
              json.dumps({"appid": w.config["appid"], "mchid": w.config["mchid"], "description": "d",
                          "out_trade_no": uid("wxm"), "notify_url": "http://x/", "amount": {"total": 10 ** 30}}),
              json.dumps({"appid": w.config["appid"], "mchid": w.config["mchid"], "description": "d",
                          "out_trade_no": uid("wxm"), "notify_url": "http://x/", "amount": {"total": 5},
                          "time_expire": "tomorrow"}),
              json.dumps({"appid": "wx0000000000000000", "mchid": w.config["mchid"], "description": "d",
                          "out_trade_no": uid("wxm"), "notify_url": "http://x/", "amount": {"total": 5},
                          "payer": {"openid": "o1"}, "scene_info": {"payer_client_ip": "1.2.3.4"}}),
              json.dumps({"mchid": None, "out_refund_no": "\u0000", "amount": {"refund": 1, "total": 2}}),
              json.dumps({"out_refund_no": "r1", "out_trade_no": no, "amount": {"refund": 1, "total": 1}}),
              '{"a": ' * 50 + "1" + "}" * 50]
    routes = [("POST", "/v3/pay/transactions/native"), ("POST", "/v3/pay/transactions/jsapi"),
              ("POST", "/v3/pay/transactions/h5"), ("POST", f"/v3/pay/transactions/out-trade-no/{no}x/close"),
              ("POST", "/v3/refund/domestic/refunds")]
    seen = set()
    for method, path in routes:
        for raw in bodies:
            r = _signed_request(w, method, path, raw)
            assert 400 <= r.status_code < 500, (path, raw, r.status_code, r.text)
            seen.add(r.json()["code"])
            assert rsa_verify(r.headers["Wechatpay-Timestamp"], r.headers["Wechatpay-Nonce"], r.text,
                              r.headers["Wechatpay-Signature"], platform_public)
    for path in (f"/v3/pay/transactions/out-trade-no/{no}", f"/v3/pay/transactions/out-trade-no/{no}?mchid=other",
                 "/v3/pay/transactions/id/42?mchid=" + w.config["mchid"], "/v3/pay/transactions/out-trade-no/nope"
                 "?mchid=" + w.config["mchid"], "/v3/refund/domestic/refunds/nope"):
        r = _signed_request(w, "GET", path, "")
        assert 400 <= r.status_code < 500, (path, r.text)
        seen.add(r.json()["code"])
    for action in ("scan", "pay"):
        for raw in bodies + ['{"code_url": "weixin://wxpay/bizpayurl?pr=999"}', '{"h5_url": 5}',
                             '{"package": "prepay_id=wx1"}', '{"code_url": "http://evil/"}']:
            r = http.post(f"{w.s.provider_url}/wechat/app/{action}", content=raw.encode(),
                          headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (action, raw, r.status_code, r.text)
            assert "code" in r.json()
    assert http.get(f"{w.s.provider_url}/wechat/h5/checkmweb?prepay_id=bogus").status_code == 400
    assert {"PARAM_ERROR", "ORDER_NOT_EXIST", "APPID_MCHID_NOT_MATCH"} <= seen


def test_merchant_config_names_paths_and_override_without_keys(w: Any) -> None:
    cfg = w.config
    assert cfg["wechatpayv3 override"] == f'wxpay._core._gate_way = "{w.s.provider_url}"'
    assert cfg["public_key_id"].startswith("PUB_KEY_ID_")
    for key, value in cfg.items():
        if "(file)" in key or "PEM" in key:
            assert Path(value).exists(), key
    secret = (w.dir / "apiv3_key").read_text().strip()
    printed = json.dumps(cfg)
    assert secret not in printed and "PRIVATE KEY" not in printed


def _core_story(services: Any) -> list[tuple]:
    """The provider's money events, without ids and times (notification delivery differs by face)."""
    keep = ("type", "amount", "reason", "refunded_total")
    return [tuple(e.get(k) for k in keep) for e in services.history()
            if e["actor"] != "checkout" and not e["type"].startswith("notify.")]


@pytest.mark.slow
def test_same_seed_same_core_history_through_native_and_wechat(start: Any) -> None:
    """Eight payments with a 40% decline rate and a refund of each paid one, once through the native
    API and once through the WeChat face (fresh providers, the same seed): the same core history."""
    overrides = {**OVERRIDES, "bank.decline_probability": 0.4}
    native, wechat = start(overrides, SCALE, name="native"), start(overrides, SCALE, name="wechat", faces=("wechat",))
    for i in range(8):
        r = http.post(f"{native.provider_url}/trades", json={"trade": f"t{i}", "order": f"t{i}", "user": "u",
                                                            "amount": 100 + i})
        assert r.status_code == 201, r.text
        if http.post(f"{native.provider_url}/trades/t{i}/pay").json()["state"] == "succeeded":
            assert http.post(f"{native.provider_url}/trades/t{i}/refund").status_code == 200
    wxpay, _, _ = sdk_for(wechat)
    for i in range(8):
        code, body = _json(wxpay.pay(description="d", out_trade_no=f"wxt{i:04d}", amount={"total": 100 + i},
                                     notify_url="http://127.0.0.1:9/none", pay_type=WeChatPayType.NATIVE))
        assert code == 200, body
        paid = http.post(f"{wechat.provider_url}/wechat/app/pay", json={"code_url": body["code_url"]}).json()
        if paid["trade_state"] == "SUCCESS":
            code, _ = wxpay.refund(out_refund_no=f"r{i}", out_trade_no=f"wxt{i:04d}",
                                   amount={"refund": 100 + i, "total": 100 + i, "currency": "CNY"})
            assert code == 200
    story = _core_story(native)
    assert [e[0] for e in story].count("trade.failed") > 0 and [e[0] for e in story].count("trade.refunded") > 0
    assert _core_story(wechat) == story


def _hold_the_only_gateway_worker(w: Any, extra: dict[str, Any]) -> tuple[threading.Thread, dict]:
    """One gateway worker, held by a buyer's pay whose bank call takes 5 wall seconds; returns the
    paying thread and where its answer lands."""
    no, code_url = native_order(w, 300)  # created while the worker is free
    w.s.set_faults({"gateway.workers": 1, "bank.latency": "3000s", "gateway.timeout": "6000s", **extra})
    answer: dict = {}
    t = threading.Thread(target=lambda: answer.update(r=app(w, "pay", code_url=code_url), no=no))
    t.start()
    wait_for(lambda: w.s.admin("provider", "GET", "/admin/stats").json()["pools"]["gateway"]["busy"] == 1,
             timeout=10, what="the first pay holding the only gateway worker")
    return t, answer


@pytest.mark.parametrize("policy, status, code", [
    ({"gateway.queue_limit": 0}, 500, "SYSTEM_ERROR"),  # queue full: 系统繁忙
    ({"gateway.load_shedding": True, "gateway.shed_limit": 1}, 429, "FREQUENCY_LIMITED"),  # shed: 频率超限
], ids=["queue-full", "shed"])
def test_an_overloaded_gateway_answers_wechats_own_codes_through_the_sdk(w: Any, policy: dict, status: int,
                                                                        code: str) -> None:
    """While the only gateway worker is held through a slow bank call, the merchant's SDK order
    (``/v3/pay/transactions/native``, which takes a gateway worker) is refused with the code WeChat Pay
    defines for it — 500 SYSTEM_ERROR for a full queue, 429 FREQUENCY_LIMITED when shedding — and
    nothing is created or moved for it: the order does not exist, the ledger is unchanged."""
    t, first = _hold_the_only_gateway_worker(w, policy)
    before = ledger(w)
    no = uid("wxo")
    got, body = _json(w.wxpay.pay(description="高峰订单", out_trade_no=no, amount={"total": 410},
                                  pay_type=WeChatPayType.NATIVE))
    assert (got, body.get("code")) == (status, code), body
    assert ledger(w) == before  # refused before any trade or posting
    t.join(15)
    w.s.set_faults({})
    assert first["r"].json()["trade_state"] == "SUCCESS"  # the held pay was served
    assert _json(w.wxpay.query(out_trade_no=no))[1]["code"] == "ORDER_NOT_EXIST"
    pool = w.s.admin("provider", "GET", "/admin/stats").json()["pools"]["gateway"]
    assert pool["rejected" if status == 500 else "shed"] >= 1
    # the merchant retries as WeChat asks (系统繁忙/频率超限: retry later): the same order is created once
    again, body = _json(w.wxpay.pay(description="高峰订单", out_trade_no=no, amount={"total": 410},
                                    pay_type=WeChatPayType.NATIVE))
    assert again == 200 and body["code_url"], body
    assert query(w, no)["trade_state"] == "NOTPAY"
    assert ledger(w)["balanced"]
