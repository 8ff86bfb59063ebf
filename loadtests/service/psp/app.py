"""The mock provider's HTTP app: the core, the faces a run asks for, health and admin routes."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline

from loadtests.service import base
from loadtests.service.web import replay_body
from loadtests.service.psp.core import SCHEMA, CoreError, ProviderCore, caller_timeout
from loadtests.service.psp.faces import FACES, load_faces
from loadtests.service.psp.faces.native import TradeCreate, _api_error, _view, create_trade_response
from loadtests.service.store import StorageError, ledger_summary
from loadtests.service.web import (ID_PATTERN, ApiError, InFlightLimit, _dumps, admin_router,
                                   install_error_handlers, json_response, require_admin)

log = logging.getLogger("checkout_chaos.service")

_PAY_PATH = re.compile(r"^/trades/(" + ID_PATTERN.strip("^$") + r")/pay$")


def _retry_after(status: int) -> dict[str, str] | None:
    """An overloaded gateway's 503 (``SYSTEM_BUSY``) tells the client when to come back."""
    return {"retry-after": "1"} if status == 503 else None


class FastPay:
    """ASGI middleware: the buyer's confirm (``POST /trades/{trade}/pay`` of the native face), the
    provider's hottest route, answered without FastAPI's routing and dependency machinery (a third of
    that request's CPU). Same answers as the face's route: the trade view, a refusal in the
    ``{error, field, code}`` shape, 503 on a storage failure, 500 (logged) on a bug. Anything else —
    another method, a trade id the pattern refuses (FastAPI's 422) — goes on to the app unchanged.
    Sits inside :class:`InFlightLimit`, so overload, body limits and the durable send still apply.
    Also the merchant's ``POST /trades`` (native face) when its body is JSON the route's model accepts.

    Both sit in front of the FastAPI app (:class:`Front`), not in its middleware stack: a request they
    answer skips FastAPI's and Starlette's layers (the error middleware, FastAPI's telemetry and body
    limit wrappers: about 5% of the provider's CPU per confirm under py-spy), which every other
    request still goes through, unchanged."""

    def __init__(self, app: Any, svc: ProviderCore) -> None:
        self.app, self.svc = app, svc

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if scope["path"] == "/trades" and "native" in self.svc.faces:
                await self._create(scope, receive, send)
                return
            match = _PAY_PATH.match(scope["path"])
            if match is not None:
                await self._pay(match.group(1), scope, send)
                return
        await self.app(scope, receive, send)

    async def _create(self, scope: dict, receive: Callable, send: Callable) -> None:
        """``POST /trades`` with a JSON body its model accepts; any other body goes on to FastAPI (whose
        422 answers it, unchanged)."""
        message = await receive()  # InFlightLimit has read the whole body: one message
        body = None
        if any(k == b"content-type" and v.split(b";")[0].strip().lower() == b"application/json"
               for k, v in scope["headers"]):
            try:
                data = json.loads(message.get("body", b""))
                body = TradeCreate.model_validate(data) if isinstance(data, dict) else None
            except (ValueError, RecursionError):  # pydantic's ValidationError is a ValueError
                body = None
        if body is None:
            await self.app(scope, replay_body(message, receive), send)
            return
        try:
            response = await create_trade_response(self.svc, body)
        except ApiError as exc:
            response = json_response(exc.body(), exc.status, _retry_after(exc.status))
        except StorageError as exc:
            response = json_response({"error": f"storage unavailable: {exc}", "field": None}, 503, {"retry-after": "5"})
        except Exception as exc:  # the app's own handler would answer the same
            log.exception("unhandled error on POST /trades")
            response = json_response({"error": f"internal error: {exc.__class__.__name__}", "field": None}, 500)
        await response(scope, receive, send)

    async def _pay(self, trade: str, scope: dict, send: Callable) -> None:
        headers: dict[str, str] | None = None
        try:
            status, body = 200, _view(await self.svc.pay(trade))
        except CoreError as exc:
            err = _api_error(exc)
            status, body, headers = err.status, err.body(), _retry_after(err.status)
        except StorageError as exc:
            status, body, headers = 503, {"error": f"storage unavailable: {exc}", "field": None}, {"retry-after": "5"}
        except Exception as exc:  # the app's own handler would answer the same
            log.exception("unhandled error on POST %s", scope["path"])
            status, body = 500, {"error": f"internal error: {exc.__class__.__name__}", "field": None}
        payload = _dumps(body).encode()
        raw = [(b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]
        if headers:
            raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})


class Front:
    """What uvicorn serves: :class:`InFlightLimit` around :class:`FastPay` around the FastAPI app (so
    every request, fast or not, counts against the one in-flight limit and waits for its commit).
    Attributes other than the ASGI call are the FastAPI app's (``state``, ``openapi()``, ``routes``)."""

    def __init__(self, app: FastAPIOffline, svc: ProviderCore, max_in_flight: int) -> None:
        self.fastapi = app
        self._asgi = InFlightLimit(FastPay(app, svc), limit=max_in_flight, before_response=lambda: svc.store.durable())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            # The caller's timeout (X-Request-Timeout, wall seconds): the deadline gateway.deadlines uses
            timeout = None
            for k, v in scope["headers"]:
                if k == b"x-request-timeout":
                    try:
                        timeout = float(v)
                    except ValueError:
                        timeout = None
                    if timeout is not None and not (timeout > 0 and timeout < float("inf")):
                        timeout = None
                    break
            if timeout is not None:
                token = caller_timeout.set(timeout)
                try:
                    await self._asgi(scope, receive, send)
                finally:
                    caller_timeout.reset(token)
                return
        await self._asgi(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fastapi, name)


def create_app(config: base.ServiceConfig, faces: list[str] | tuple[str, ...] = ("native",),
               face_options: dict[str, dict[str, Any]] | None = None) -> Front:
    """``faces``: which protocols to serve beside ``native`` (``alipay``, ...)."""
    svc = ProviderCore(config)
    svc.faces = load_faces(svc, faces, config.data_dir, face_options)
    svc.schema = SCHEMA + "".join(f.schema for f in svc.faces.values())
    # FastAPIOffline serves Swagger UI's assets from an installed package: /docs works without internet.
    app = FastAPIOffline(title="checkout-chaos mock payment provider", version="2", lifespan=svc.lifespan,
                         description="Gateway, bank and BNPL provider with scenario-driven latency and failures, "
                                     f"on the protocols of: {', '.join(svc.faces)}. Native API: amounts are "
                                     "integer fen; errors {error, field, code?}.")
    app.state.service = svc
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"], summary="liveness (also the benchmark's trivial route)")
    async def healthz() -> Response:
        return json_response({"ok": True, "service": "provider", "faces": list(svc.faces)})

    for face in svc.faces.values():
        app.include_router(face.router())
    app.include_router(admin_router(svc))

    @app.get("/admin/ledger", tags=["admin"], dependencies=[Depends(require_admin(config.admin_token))],
             summary="balances per account and whether the ledger balances")
    async def ledger() -> Response:
        return json_response(ledger_summary(svc.store))

    @app.get("/admin/stats", tags=["admin"], dependencies=[Depends(require_admin(config.admin_token))],
             summary="counts by state, pending jobs")
    async def stats() -> Response:
        return json_response(svc.stats())

    return Front(app, svc, config.scenario.live.max_in_flight)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtests.service.provider",
                                     description="the mock payment provider (one core, protocol faces)")
    base.common_arguments(parser)
    parser.add_argument("--faces", default="native", help=f"comma-separated, of: {', '.join(FACES)}")
    parser.add_argument("--face-options", help="JSON file: {face: {option: value}} (keys' paths, app ids)")
    args = parser.parse_args(argv)
    config = base.config_from_args(args)
    faces = [f for f in args.faces.split(",") if f]
    options = json.loads(Path(args.face_options).read_text(encoding="utf-8")) if args.face_options else None
    base.serve(create_app(config, faces, options), args, config.scenario.live.max_in_flight)
