"""The WeChat Pay API v3 face: JSON REST, signed requests and responses, encrypted notifications.

Merchant side (every request carries ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid=..,nonce_str=..,
signature=..,timestamp=..,serial_no=..``: SHA256withRSA over ``METHOD\\nPATH?QUERY\\ntimestamp\\nnonce\\n
body\\n`` with the merchant's private key, verified here with its public key before anything is read):

* ``POST /v3/pay/transactions/native|jsapi|h5`` -> ``code_url`` / ``prepay_id`` / ``h5_url``;
* ``GET /v3/pay/transactions/out-trade-no/{no}?mchid=`` and ``GET /v3/pay/transactions/id/{id}?mchid=``;
* ``POST /v3/pay/transactions/out-trade-no/{no}/close`` -> 204 (refused in the order's first 5 minutes);
* ``POST /v3/refund/domestic/refunds`` (asynchronous: ``PROCESSING``, then ``SUCCESS``) and
  ``GET /v3/refund/domestic/refunds/{out_refund_no}``.

Every answer, errors included, is signed with the mock's platform key (public-key mode: headers
``Wechatpay-Timestamp/-Nonce/-Signature/-Serial/-Signature-Type``, the serial is the key's
``PUB_KEY_ID_...``). Errors are ``{"code", "message"}`` with WeChat's codes and HTTP statuses.

Notifications (``TRANSACTION.SUCCESS``, ``REFUND.SUCCESS``) carry the resource encrypted with
AEAD_AES_256_GCM under the merchant's APIv3 key, signed like responses; HTTP 200 or 204 acknowledges
(any body), anything else or no answer is retried on WeChat's schedule (unless the scenario names
another one than the default, Alipay's).

The buyer's side (what the WeChat app does): ``POST /wechat/app/scan`` (scan a ``code_url``: the
cashier), ``POST /wechat/app/pay`` (enter the password: a ``code_url``, an ``h5_url``, or a JSAPI
``prepay_id`` with the ``paySign`` the merchant computed for ``wx.requestPayment``), and
``GET /wechat/h5/checkmweb`` (the page an ``h5_url`` opens).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sim.domain.schedules import NOTIFY_SCHEDULES

from loadtests.service.psp import core as C
from loadtests.service.psp.faces import Face
from loadtests.service.psp.keys import face_dir, load_public_key, rsa_key_pair, secret_file, shown

SCHEME = "WECHATPAY2-SHA256-RSA2048"
MCHID = "1900000109"  # WeChat's documentation example merchant and app ids
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"  # the merchant certificate serial the mock expects
CLOSE_AFTER = 300.0  # scenario s: "an order cannot be closed within 5 minutes of its creation"
CLOCK_SKEW = 300  # wall s: a request timestamp further off is refused (SIGN_ERROR)
CST = timezone(timedelta(hours=8))
_OUT_NO = r"^[0-9A-Za-z_\-|*]{1,32}$"
_KINDS = {"native": "NATIVE", "jsapi": "JSAPI", "h5": "MWEB"}
_AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')
_STATE_DESC = {"NOTPAY": "未支付", "USERPAYING": "用户支付中", "SUCCESS": "支付成功", "REFUND": "转入退款",
               "CLOSED": "已关闭", "PAYERROR": "支付失败", "REVOKED": "已撤销"}


class WechatError(Exception):
    """An answer ``{"code", "message"}`` with an HTTP status (WeChat's own codes)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# -- request bodies (what WeChat documents; unknown fields are ignored, as WeChat does) ---------------

OutNo = Annotated[str, Field(pattern=_OUT_NO)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class AmountIn(_Body):
    total: int = Field(gt=0, le=1_000_000_000)
    currency: Literal["CNY"] = "CNY"


class Payer(_Body):
    openid: Annotated[str, Field(min_length=1, max_length=128)]


class H5Info(_Body):
    type: Annotated[str, Field(min_length=1, max_length=32)]


class SceneInfo(_Body):
    payer_client_ip: Annotated[str, Field(min_length=1, max_length=45)]
    h5_info: H5Info | None = None


class OrderIn(_Body):
    appid: Annotated[str, Field(min_length=1, max_length=32)]
    mchid: Annotated[str, Field(min_length=1, max_length=32)]
    description: Annotated[str, Field(min_length=1, max_length=127)]
    out_trade_no: Annotated[str, Field(pattern=r"^[0-9A-Za-z_\-|*]{6,32}$")]
    notify_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=256)]
    amount: AmountIn
    time_expire: Annotated[str, Field(max_length=64)] | None = None
    attach: Annotated[str, Field(max_length=128)] | None = None
    payer: Payer | None = None
    scene_info: SceneInfo | None = None


class CloseIn(_Body):
    mchid: Annotated[str, Field(min_length=1, max_length=32)]


class RefundAmountIn(_Body):
    refund: int = Field(gt=0, le=1_000_000_000)
    total: int = Field(gt=0, le=1_000_000_000)
    currency: Literal["CNY"] = "CNY"


class RefundIn(_Body):
    out_refund_no: Annotated[str, Field(pattern=r"^[0-9A-Za-z_\-|*@]{1,64}$")]
    amount: RefundAmountIn
    out_trade_no: OutNo | None = None
    transaction_id: Annotated[str, Field(pattern=r"^[0-9]{1,32}$")] | None = None
    reason: Annotated[str, Field(max_length=80)] | None = None
    notify_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=256)] | None = None
    funds_account: str | None = None


class PayIn(_Body):
    """The buyer confirms: a scanned ``code_url``, an opened ``h5_url``, or ``wx.requestPayment``'s fields."""

    code_url: Annotated[str, Field(max_length=512)] | None = None
    h5_url: Annotated[str, Field(max_length=1024)] | None = None
    openid: Annotated[str, Field(max_length=128)] | None = None
    appId: str | None = None  # noqa: N815 - wx.requestPayment's names
    timeStamp: str | None = None  # noqa: N815
    nonceStr: str | None = None  # noqa: N815
    package: str | None = None
    signType: str | None = None  # noqa: N815
    paySign: str | None = None  # noqa: N815


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    """The body as ``model``, or PARAM_ERROR naming the field (WeChat: ``"<field>: <why>"``)."""
    if not raw.strip():
        raise WechatError(400, "PARAM_ERROR", "请求体为空 (empty body: expected a JSON object)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err.get("type") == "json_invalid":
            raise WechatError(400, "PARAM_ERROR", "请求体不是合法的JSON (body: malformed JSON)") from None
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise WechatError(400, "PARAM_ERROR", f"{loc}: {err.get('msg', 'invalid')}") from None


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, CST).isoformat(timespec="seconds")


def _digits(text: str, n: int) -> str:
    return str(int(hashlib.sha256(text.encode()).hexdigest(), 16))[:n].rjust(n, "0")


class WechatFace(Face):
    """WeChat Pay API v3 (direct merchant mode, platform public-key mode)."""

    name = "wechat"

    # -- configuration and keys ---------------------------------------------------------------------

    def __init__(self, core: Any, data_dir: Path, options: dict[str, Any] | None = None) -> None:
        super().__init__(core, data_dir, options)
        o = self.options
        self.mchid = str(o.get("mchid", MCHID))
        self.appid = str(o.get("appid", APPID))
        self.merchant_serial = str(o.get("merchant_serial_no", MERCHANT_SERIAL)).upper()
        self.public_key_id = f"PUB_KEY_ID_01{self.mchid}{_digits('platform:' + self.mchid, 20)}"
        self.dir = face_dir(data_dir, "wechat")

    def setup(self) -> None:
        self.platform_key, _, self.platform_public_path = rsa_key_pair(self.dir, "platform")
        self.apiv3_key = secret_file(self.dir, "apiv3_key", 32).encode()
        if len(self.apiv3_key) != 32:
            raise ValueError(f"{self.dir / 'apiv3_key'}: expected a 32-byte APIv3 key, found {len(self.apiv3_key)} bytes")
        self.aead = AESGCM(self.apiv3_key)
        given = self.options.get("merchant_public_key")
        if given:
            try:
                self.merchant_key = load_public_key(Path(given))
            except (OSError, ValueError) as exc:
                raise ValueError(f"wechat face option merchant_public_key={given!r}: expected an RSA public key "
                                 f"in PEM ({exc})") from None
        else:
            key, _, _ = rsa_key_pair(self.dir, "merchant")
            self.merchant_key = key.public_key()

    def merchant_config(self, base_url: str) -> dict[str, Any]:
        d = self.dir
        config: dict[str, Any] = {
            "mchid": self.mchid,
            "appid": self.appid,
            "cert_serial_no": self.merchant_serial,
            "apiv3_key (file)": str(d / "apiv3_key"),
            "public_key (the mock's platform public key, PEM)": str(d / "platform_public_key.pem"),
            "public_key_id": self.public_key_id,
        }
        if self.options.get("merchant_public_key"):
            config["merchant key"] = f"your own (its public key: {self.options['merchant_public_key']})"
        else:
            config["private_key (merchant, PEM)"] = str(d / "merchant_private_key.pem")
        config["wechatpayv3 override"] = f'wxpay._core._gate_way = "{base_url.rstrip("/")}"'
        config["buyer (the WeChat app)"] = f"POST {base_url.rstrip('/')}/wechat/app/scan and /wechat/app/pay"
        return config

    # -- signatures ---------------------------------------------------------------------------------

    def _sign(self, message: bytes) -> str:
        return base64.b64encode(self.platform_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()

    def signed_headers(self, body: bytes) -> dict[str, str]:
        """``Wechatpay-*`` headers over ``timestamp\\nnonce\\nbody\\n`` (responses and notifications)."""
        ts, nonce = str(int(time.time())), secrets.token_hex(16).upper()
        return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
                "Wechatpay-Signature": self._sign(f"{ts}\n{nonce}\n".encode() + body + b"\n"),
                "Wechatpay-Serial": self.public_key_id, "Wechatpay-Signature-Type": SCHEME}

    def _answer(self, status: int, content: Any = None) -> Response:
        body = b"" if content is None else json.dumps(content, separators=(",", ":")).encode()
        headers = {**self.signed_headers(body), "Request-ID": uuid.uuid4().hex}
        if content is None:
            return Response(status_code=status, headers=headers)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def _error(self, exc: WechatError) -> Response:
        return self._answer(exc.status, {"code": exc.code, "message": exc.message})

    def _verify_request(self, request: Request, body: bytes) -> None:
        """SIGN_ERROR unless ``Authorization`` is a valid merchant signature over this very request."""
        auth = request.headers.get("authorization", "")
        scheme, _, params = auth.partition(" ")
        if scheme != SCHEME:
            raise WechatError(401, "SIGN_ERROR", f"Authorization: expected the {SCHEME} scheme")
        fields = dict(_AUTH_FIELD.findall(params))
        missing = [k for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not fields.get(k)]
        if missing:
            raise WechatError(401, "SIGN_ERROR", f"Authorization: missing {', '.join(missing)}")
        if fields["mchid"] != self.mchid:
            raise WechatError(401, "SIGN_ERROR", f"Authorization: mchid {fields['mchid']!r} is not this merchant")
        if fields["serial_no"].upper() != self.merchant_serial:
            raise WechatError(401, "SIGN_ERROR", "Authorization: serial_no is not the merchant certificate's "
                                                 f"({shown(self.merchant_serial)})")
        if not fields["timestamp"].isdigit() or abs(int(fields["timestamp"]) - time.time()) > CLOCK_SKEW:
            raise WechatError(401, "SIGN_ERROR", "Authorization: timestamp too far from now (more than 5 minutes)")
        target = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        message = b"\n".join([request.method.encode(), target + (b"?" + query if query else b""),
                              fields["timestamp"].encode(), fields["nonce_str"].encode(), body]) + b"\n"
        try:
            signature = base64.b64decode(fields["signature"], validate=True)
            self.merchant_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise WechatError(401, "SIGN_ERROR", "签名错误 (the signature does not verify with the merchant's "
                                                 "public key)") from None

    # -- views --------------------------------------------------------------------------------------

    def _wall(self, t: float | None) -> float:
        clock = self.core.clock
        return clock.start_epoch + (t or 0.0) / clock.scale

    @staticmethod
    def trade_state(view: dict[str, Any]) -> str:
        state = view["state"]
        if state in ("processing", "unknown"):
            return "USERPAYING"  # a debit in flight (or its answer lost): the buyer is still paying
        if state == "refunded" or (state == "succeeded" and view["refunded"]):
            return "REFUND"
        return {"created": "NOTPAY", "succeeded": "SUCCESS", "closed": "CLOSED", "failed": "PAYERROR"}[state]

    def transaction(self, view: dict[str, Any]) -> dict[str, Any]:
        meta = view["meta"]
        state = self.trade_state(view)
        out: dict[str, Any] = {"appid": meta.get("appid", self.appid), "mchid": view["merchant"],
                               "out_trade_no": view["trade"], "trade_type": meta.get("trade_type", "NATIVE"),
                               "trade_state": state,
                               "trade_state_desc": _STATE_DESC[state] if state != "PAYERROR"
                               else f"支付失败 ({view['reason'] or 'declined'})"}
        if meta.get("attach"):
            out["attach"] = meta["attach"]
        amount: dict[str, Any] = {"total": view["amount"], "currency": "CNY"}
        if view["paid_t"] is not None and state in ("SUCCESS", "REFUND"):
            out.update(transaction_id=view["trade_no"], bank_type="OTHERS",
                       success_time=_rfc3339(self._wall(view["paid_t"])),
                       payer={"openid": meta.get("openid") or view["user"]})
            amount.update(payer_total=view["amount"], payer_currency="CNY")
        out["amount"] = amount
        return out

    def refund_view(self, trade: dict[str, Any], refund: dict[str, Any]) -> dict[str, Any]:
        status = {"processing": "PROCESSING", "succeeded": "SUCCESS"}.get(refund["state"], "ABNORMAL")
        out = {"refund_id": "50" + _digits(f"{trade['trade_no']}:{refund['request_no']}", 30),
               "out_refund_no": refund["request_no"], "transaction_id": trade["trade_no"],
               "out_trade_no": trade["trade"], "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
               "create_time": _rfc3339(self._wall(refund["created_t"])), "status": status,
               "funds_account": "AVAILABLE",
               "amount": {"total": trade["amount"], "refund": refund["amount"], "payer_total": trade["amount"],
                          "payer_refund": refund["amount"], "settlement_total": trade["amount"],
                          "settlement_refund": refund["amount"], "discount_refund": 0, "currency": "CNY",
                          "refund_fee": 0}}
        if status == "SUCCESS":
            out["success_time"] = out["create_time"]
        return out

    def _own(self, out_trade_no: str) -> Any:
        """This merchant's WeChat trade ``out_trade_no`` (ORDER_NOT_EXIST otherwise)."""
        try:
            row = self.core.trade_row(out_trade_no)
        except C.CoreError:
            row = None
        if row is None or row["face"] != self.name or row["merchant"] != self.mchid:
            raise WechatError(404, "ORDER_NOT_EXIST", "订单不存在 (no such order)")
        return row

    # -- notifications ------------------------------------------------------------------------------

    def notify_urls(self, row: Any, kind: str) -> list[str]:
        # WeChat notifies payments and refunds only (refunds go to the refund's own notify_url: core).
        return [row["notify_url"]] if row["notify_url"] and kind == "trade.succeeded" else []

    def notify_gaps(self, schedule: Any) -> tuple[float, ...]:
        if self.options.get("notify_schedule") == "scenario" or schedule.name != "alipay":
            return schedule.gaps
        return NOTIFY_SCHEDULES["wechat"]  # the scenario left the default (Alipay's): WeChat's own

    def acknowledged(self, status: int, body: bytes) -> bool:
        return status in (200, 204)  # "HTTP 200 or 204, no body needed"; anything else is a failure

    def notification(self, note: C.Note) -> tuple[bytes, dict[str, str]]:
        t = note.trade
        if note.kind == "refund.succeeded":
            refund = next(r for r in self.core.refunds_of(t["trade"]) if r["request_no"] == note.ref)
            v = self.refund_view(t, refund)
            resource = {"mchid": t["merchant"], "out_trade_no": v["out_trade_no"], "transaction_id": v["transaction_id"],
                        "refund_id": v["refund_id"], "out_refund_no": v["out_refund_no"], "refund_status": v["status"],
                        "success_time": v.get("success_time", v["create_time"]),
                        "user_received_account": v["user_received_account"],
                        "amount": {k: v["amount"][k] for k in ("total", "refund", "payer_total", "payer_refund")}}
            event, summary, original, created = "REFUND.SUCCESS", "退款成功", "refund", refund["created_t"]
        else:
            resource = self.transaction(t)
            event, summary, original, created = "TRANSACTION.SUCCESS", "支付成功", "transaction", t["paid_t"]
        nonce = secrets.token_urlsafe(9)[:12]  # 12 bytes, as WeChat's resource nonces
        plain = json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode()
        cipher = self.aead.encrypt(nonce.encode(), plain, original.encode())
        body = json.dumps({
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"wechat:{note.notify_id}")),  # stable across retries
            "create_time": _rfc3339(self._wall(created)), "resource_type": "encrypt-resource",
            "event_type": event, "summary": summary,
            "resource": {"original_type": original, "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(cipher).decode(), "associated_data": original,
                         "nonce": nonce}}, separators=(",", ":"), ensure_ascii=False).encode()
        return body, {"Content-Type": "application/json", **self.signed_headers(body)}

    # -- routes -------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()
        core = self.core

        async def merchant(request: Request, handler: Any) -> Response:
            """Verify, then run ``handler(body)``; every outcome a signed WeChat answer."""
            try:
                body = await request.body()
                self._verify_request(request, body)
                return await handler(body)
            except WechatError as exc:
                return self._error(exc)
            except C.CoreError as exc:
                return self._error(self._core_error(exc))

        def check_mchid(mchid: str | None) -> None:
            if not mchid:
                raise WechatError(400, "PARAM_ERROR", "mchid: 必填 (the query parameter mchid is required)")
            if mchid != self.mchid:
                raise WechatError(400, "PARAM_ERROR", f"mchid: {mchid!r} is not the requesting merchant")

        for kind in _KINDS:
            r.add_api_route(f"/v3/pay/transactions/{kind}", self._create_route(kind, merchant), methods=["POST"],
                            tags=["wechat"], summary=f"WeChat Pay: {kind} order")

        @r.get("/v3/pay/transactions/out-trade-no/{out_trade_no}", tags=["wechat"],
               summary="WeChat Pay: query by out_trade_no")
        async def query_out(out_trade_no: str, request: Request) -> Response:
            async def handle(body: bytes) -> Response:
                check_mchid(request.query_params.get("mchid"))
                self._own(out_trade_no)
                return self._answer(200, self.transaction(await core.query(out_trade_no)))
            return await merchant(request, handle)

        @r.get("/v3/pay/transactions/id/{transaction_id}", tags=["wechat"],
               summary="WeChat Pay: query by transaction_id (paid orders only)")
        async def query_id(transaction_id: str, request: Request) -> Response:
            async def handle(body: bytes) -> Response:
                check_mchid(request.query_params.get("mchid"))
                row = core.find_trade(trade_no=transaction_id) if len(transaction_id) <= 32 else None
                if row is None or row["face"] != self.name or row["paid_t"] is None:
                    raise WechatError(404, "ORDER_NOT_EXIST", "订单不存在 (no paid order with this transaction_id)")
                return self._answer(200, self.transaction(await core.query(row["trade"])))
            return await merchant(request, handle)

        @r.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", tags=["wechat"],
                summary="WeChat Pay: close an unpaid order (not within 5 minutes of its creation)")
        async def close(out_trade_no: str, request: Request) -> Response:
            async def handle(body: bytes) -> Response:
                check_mchid(_parse(CloseIn, body).mchid)
                row = self._own(out_trade_no)
                view = self.trade_state(core.view(row))
                if view in ("SUCCESS", "REFUND"):
                    raise WechatError(400, "ORDERPAID", "订单已支付，不能发起关单 (the order is paid)")
                if view == "CLOSED":
                    return self._answer(204)
                if core.clock.now() - row["created_t"] < CLOSE_AFTER:
                    raise WechatError(400, "INVALID_REQUEST", "订单生成后5分钟内不能关单 (an order cannot be closed "
                                                              "within 5 minutes of its creation; try again later)")
                await core.close(out_trade_no)
                return self._answer(204)
            return await merchant(request, handle)

        @r.post("/v3/refund/domestic/refunds", tags=["wechat"], summary="WeChat Pay: refund (asynchronous)")
        async def refund(request: Request) -> Response:
            async def handle(body: bytes) -> Response:
                req = _parse(RefundIn, body)
                row = self._refund_target(req)
                if req.amount.total != row["amount"]:
                    raise WechatError(400, "PARAM_ERROR", f"amount.total: {req.amount.total} is not the order's "
                                                          f"amount ({row['amount']})")
                if req.amount.refund > req.amount.total:
                    raise WechatError(400, "PARAM_ERROR", "amount.refund: more than amount.total")
                settle = self._settle_delay()
                out = await core.refund(row["trade"], req.amount.refund, req.out_refund_no,
                                        notify=bool(req.notify_url), settle_after=settle, notify_url=req.notify_url)
                return self._answer(200, self.refund_view(out, out["refund"]))
            return await merchant(request, handle)

        @r.get("/v3/refund/domestic/refunds/{out_refund_no}", tags=["wechat"], summary="WeChat Pay: query a refund")
        async def refund_query(out_refund_no: str, request: Request) -> Response:
            async def handle(body: bytes) -> Response:
                found = core.find_refund(out_refund_no, face=self.name)
                if found is None:
                    raise WechatError(404, "RESOURCE_NOT_EXISTS", "退款单不存在 (no such refund)")
                trade = core.view(core.trade_row(found["trade"]))
                return self._answer(200, self.refund_view(trade, found))
            return await merchant(request, handle)

        # -- the buyer's side (the WeChat app): no merchant signature, answers unsigned JSON --------

        @r.post("/wechat/app/scan", tags=["wechat buyer"], summary="the buyer scans a code_url: the cashier")
        async def scan(request: Request) -> Response:
            try:
                req = _parse(PayIn, await request.body())
                row = self._buyer_trade(req)
                view = core.open_trade(row["trade"])
                state = self.trade_state(view)
                self._payable(state)
                return self._plain(200, {"description": view["meta"].get("description"), "amount": view["amount"],
                                         "mchid": view["merchant"], "trade_state": state})
            except WechatError as exc:
                return self._plain(exc.status, {"code": exc.code, "message": exc.message})

        @r.post("/wechat/app/pay", tags=["wechat buyer"],
                summary="the buyer enters the password: a bank debit; SUCCESS, PAYERROR or USERPAYING")
        async def pay(request: Request) -> Response:
            try:
                req = _parse(PayIn, await request.body())
                row = self._buyer_trade(req)
                self._payable(self.trade_state(core.view(row)))
                view = await core.pay(row["trade"])
                out = self.transaction(view)
                return self._plain(200, {k: out[k] for k in ("out_trade_no", "trade_state", "trade_state_desc",
                                                             "amount") if k in out})
            except WechatError as exc:
                return self._plain(exc.status, {"code": exc.code, "message": exc.message})
            except C.CoreError as exc:
                if exc.code == C.TRADE_IN_PROGRESS:  # paying twice at once: the first is still at the bank
                    return self._plain(200, {"trade_state": "USERPAYING", "trade_state_desc": _STATE_DESC["USERPAYING"]})
                e = self._core_error(exc)
                return self._plain(e.status, {"code": e.code, "message": e.message})

        @r.get("/wechat/h5/checkmweb", tags=["wechat buyer"], summary="the page an h5_url opens (the cashier)")
        async def checkmweb(request: Request) -> Response:
            try:
                req = PayIn.model_construct(h5_url=str(request.url))
                row = self._buyer_trade(req)
                view = core.open_trade(row["trade"])
                return self._plain(200, {"description": view["meta"].get("description"), "amount": view["amount"],
                                         "trade_state": self.trade_state(view)})
            except WechatError as exc:
                return self._plain(exc.status, {"code": exc.code, "message": exc.message})

        return r

    def _create_route(self, kind: str, merchant: Any) -> Any:
        core = self.core

        async def create(request: Request) -> Response:
            async def handle(body: bytes) -> Response:
                req = _parse(OrderIn, body)
                if req.mchid != self.mchid or req.appid != self.appid:
                    raise WechatError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配 (appid/mchid: not this "
                                                                    "merchant's)")
                if kind == "jsapi" and req.payer is None:
                    raise WechatError(400, "PARAM_ERROR", "payer: 必填 (a JSAPI order needs payer.openid)")
                if kind == "h5" and req.scene_info is None:
                    raise WechatError(400, "PARAM_ERROR", "scene_info: 必填 (an H5 order needs scene_info)")
                ttl = None
                if req.time_expire is not None:
                    try:
                        expire = datetime.fromisoformat(req.time_expire)
                    except ValueError:
                        expire = None
                    if expire is None or expire.tzinfo is None:
                        raise WechatError(400, "PARAM_ERROR", "time_expire: expected RFC 3339 "
                                                              "(yyyy-MM-DDTHH:mm:ss+TIMEZONE)")
                    ttl = (expire.timestamp() - time.time()) * core.clock.scale
                    if ttl <= 0:
                        raise WechatError(400, "PARAM_ERROR", "time_expire: 已过期 (in the past)")
                trade_no = "42000" + _digits(f"{self.mchid}:{req.out_trade_no}", 23)
                openid = req.payer.openid if req.payer else None
                meta = {"trade_type": _KINDS[kind], "appid": req.appid, "description": req.description,
                        "attach": req.attach, "openid": openid}
                view, created = await core.create_trade(
                    req.out_trade_no, req.out_trade_no, openid or "wechat_user", req.amount.total, self.mchid,
                    req.notify_url, ttl, face=self.name, trade_no=trade_no, meta=meta)
                if not created:
                    if view["meta"].get("trade_type") != _KINDS[kind]:
                        raise WechatError(403, "OUT_TRADE_NO_USED", "商户订单号重复 (out_trade_no used by another "
                                                                    "kind of order)")
                    state = self.trade_state(view)
                    if state in ("SUCCESS", "REFUND"):
                        raise WechatError(400, "ORDERPAID", "该订单已支付 (the order is paid)")
                    if state == "CLOSED":
                        raise WechatError(400, "ORDER_CLOSED", "订单已关闭 (the order is closed)")
                prepay_id = "wx" + view["trade_no"]
                if kind == "native":
                    return self._answer(200, {"code_url": f"weixin://wxpay/bizpayurl?pr={view['trade_no']}"})
                if kind == "jsapi":
                    return self._answer(200, {"prepay_id": prepay_id})
                base = str(request.base_url).rstrip("/")
                return self._answer(200, {"h5_url": f"{base}/wechat/h5/checkmweb?prepay_id={prepay_id}"
                                                    f"&package={_digits(prepay_id, 10)}"})
            return await merchant(request, handle)

        return create

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _core_error(exc: C.CoreError) -> WechatError:
        code = exc.code
        if code == C.SYSTEM_BUSY and exc.extra.get("overload") == "shed":
            return WechatError(429, "FREQUENCY_LIMITED", "频率超限 (the gateway is shedding load: retry later)")
        if code in (C.SYSTEM_BUSY, C.DEADLINE_EXCEEDED):
            return WechatError(500, "SYSTEM_ERROR", "系统繁忙，请稍后重试 (the gateway is overloaded: retry later)")
        if code == C.TRADE_NOT_EXIST:
            return WechatError(404, "ORDER_NOT_EXIST", "订单不存在 (no such order)")
        if code == C.TRADE_HAS_SUCCESS:
            return WechatError(400, "ORDERPAID", "订单已支付 (the order is paid)")
        if code == C.TRADE_HAS_CLOSE:
            return WechatError(400, "ORDER_CLOSED", "订单已关闭 (the order is closed)")
        if code == C.TRADE_IN_PROGRESS or (code == C.TRADE_NOT_PAID and
                                           exc.extra.get("trade_state") in ("processing", "unknown")):
            return WechatError(500, "SYSTEM_ERROR", "系统错误，结果未知，请查询订单后重试 (the payment's outcome is not "
                                                    "known yet: query the order, then retry)")
        if code == C.TRADE_PARAMS_CONFLICT:
            return WechatError(403, "OUT_TRADE_NO_USED", "商户订单号重复 (out_trade_no exists with other parameters)")
        if code == C.TRADE_NOT_PAID:
            return WechatError(400, "INVALID_REQUEST", f"订单状态不允许退款 (the order is {exc.extra.get('trade_state')}: "
                                                       "only a paid order can be refunded)")
        if code == C.REFUND_AMOUNT_EXCEEDED:
            return WechatError(400, "INVALID_REQUEST", f"退款金额超过可退金额 (at most {exc.extra.get('refundable')} fen "
                                                       "left to refund)")
        if code == C.REFUND_PARAMS_CONFLICT:
            return WechatError(400, "INVALID_REQUEST", "out_refund_no 已存在且金额不同 (this refund number exists "
                                                       "with another amount)")
        return WechatError(400, "PARAM_ERROR", exc.error)

    def _refund_target(self, req: RefundIn) -> Any:
        if req.out_trade_no:
            return self._own(req.out_trade_no)
        if req.transaction_id:
            row = self.core.find_trade(trade_no=req.transaction_id)
            if row is not None and row["face"] == self.name and row["opened"]:
                return row
            raise WechatError(404, "ORDER_NOT_EXIST", "订单不存在 (no such transaction_id)")
        raise WechatError(400, "PARAM_ERROR", "out_trade_no/transaction_id: one of them is required")

    def _settle_delay(self) -> float:
        """How long a refund stays PROCESSING: one bank round trip, drawn on a stream of its own (so the
        other streams, and the history, are the same whatever face a scenario runs through)."""
        cond = self.core.conditions
        return float(cond.current().bank.latency.sampler(cond.rng("wechat.refund_settle"))())

    def _buyer_trade(self, req: PayIn) -> Any:
        """The trade behind what the buyer holds: a code_url, an h5_url, or a signed JSAPI prepay_id."""
        if req.code_url is not None:
            m = re.fullmatch(r"weixin://wxpay/bizpayurl\?pr=([0-9]{1,32})", req.code_url)
            trade_no = m.group(1) if m else None
        elif req.h5_url is not None:
            m = re.search(r"[?&]prepay_id=wx([0-9]{1,32})(&|$)", req.h5_url)
            trade_no = m.group(1) if m else None
        elif req.package is not None:
            trade_no = self._jsapi(req)
        else:
            raise WechatError(400, "PARAM_ERROR", "expected code_url, h5_url or the wx.requestPayment fields "
                                                  "(appId, timeStamp, nonceStr, package, signType, paySign)")
        if trade_no is None:
            raise WechatError(400, "PARAM_ERROR", "二维码或链接无效 (not a code_url/h5_url of this provider)")
        row = self.core.find_trade(trade_no=trade_no)
        if row is None or row["face"] != self.name:
            raise WechatError(404, "ORDER_NOT_EXIST", "订单不存在 (no such order)")
        return row

    def _jsapi(self, req: PayIn) -> str | None:
        """``wx.requestPayment``: paySign = SHA256withRSA(appId\\ntimeStamp\\nnonceStr\\npackage\\n) with
        the merchant's key (wechatpayv3: ``wxpay.sign([appid, timestamp, nonce, "prepay_id=..."])``)."""
        fields = (req.appId, req.timeStamp, req.nonceStr, req.package)
        if None in fields or not req.paySign:
            raise WechatError(400, "PARAM_ERROR", "wx.requestPayment: appId, timeStamp, nonceStr, package and "
                                                  "paySign are required")
        if req.signType not in (None, "RSA"):
            raise WechatError(400, "PARAM_ERROR", "signType: expected RSA")
        if req.appId != self.appid:
            raise WechatError(400, "APPID_MCHID_NOT_MATCH", "appId: not this merchant's app")
        try:
            self.merchant_key.verify(base64.b64decode(req.paySign, validate=True),
                                     ("\n".join(fields) + "\n").encode(), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise WechatError(401, "SIGN_ERROR", "paySign: 支付验证签名失败 (does not verify with the merchant's "
                                                 "public key)") from None
        m = re.fullmatch(r"prepay_id=wx([0-9]{1,32})", req.package or "")
        return m.group(1) if m else None

    @staticmethod
    def _payable(state: str) -> None:
        if state == "CLOSED":
            raise WechatError(400, "ORDER_CLOSED", "订单已关闭 (the order is closed: this code can no longer be paid)")
        if state in ("SUCCESS", "REFUND"):
            raise WechatError(400, "ORDERPAID", "订单已支付 (the order is paid)")

    @staticmethod
    def _plain(status: int, content: Any) -> Response:
        return Response(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode(), status_code=status,
                        media_type="application/json")
