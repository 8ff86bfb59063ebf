"""What both services share at the HTTP layer.

* Errors: every 4xx is a JSON object ``{"error": <message>, "field": <the field at fault or null>}``
  (plus a ``code`` for domain refusals such as ``ACQ.TRADE_HAS_SUCCESS``). FastAPI's validation
  errors, malformed JSON, unknown routes and wrong methods all come out in that shape; an unexpected
  exception is logged and answered 500 in the same shape (the tests fuzz for it never happening).
* :class:`InFlightLimit` — a bounded number of requests in flight; beyond it ``503`` with
  ``Retry-After`` at once, so overload never queues without bound or hangs the server. Bodies larger
  than :data:`MAX_BODY` are refused with ``413`` before any work: at once when ``Content-Length`` says so,
  else as soon as the bytes read pass it (a chunked body), never reading the rest; a body that does
  not arrive within ``BODY_TIMEOUT`` gets ``408``. It also holds every response until the store's group
  commit has made the request's writes durable, and answers ``503`` if that commit failed.
* The admin token (``Authorization: Bearer <token>``) and the admin routes both services expose:
  ``GET/PUT /admin/faults``, ``PUT /admin/calendar`` and ``GET /admin/history``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from sim.errors import ConfigError

from loadtests.service.store import StorageError, json_text

log = logging.getLogger("checkout_chaos.service")

MAX_BODY = 1 << 20  # 1 MiB: no request of either service is anywhere near it
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$"
MAX_AMOUNT = 1_000_000_000  # fen: 10 million CNY, beyond any single payment
_dumps = json_text  # compact JSON text (orjson when installed)


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response without FastAPI's re-encoding pass (the hot paths return plain dicts)."""
    return Response(_dumps(content).encode(), status_code=status, media_type="application/json", headers=headers)


class ApiError(Exception):
    """A refusal answered as ``{"error", "field", "code"?, ...}`` with an HTTP status."""

    def __init__(self, status: int, error: str, field: str | None = None, code: str | None = None, **extra: Any):
        super().__init__(error)
        self.status, self.error, self.field, self.code, self.extra = status, error, field, code, extra

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "field": self.field}
        if self.code:
            out["code"] = self.code
        out.update(self.extra)
        return out


def _field_of(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return str(loc[0]) if loc else "body"
    return ".".join(parts)


# What FastAPI answers (400) when a route's body fails to decode before validation (UnicodeDecodeError,
# a JSON integer past Python's 4300-digit limit): a JSONDecodeError is its 422 json_invalid instead.
_UNPARSABLE = "There was an error parsing the body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return json_response(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        kind = first.get("type", "")
        field = "body" if kind == "json_invalid" else _field_of(tuple(first.get("loc", ("body",))))
        msg = "malformed JSON body" if kind == "json_invalid" else f"{field}: {first.get('msg', 'invalid')}"
        details = [{"field": _field_of(tuple(e.get("loc", ()))), "msg": e.get("msg", "")} for e in errors[:10]]
        return json_response({"error": msg, "field": field, "details": details}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == _UNPARSABLE:  # FastAPI's: the body could not be decoded
            return json_response({"error": "malformed body: it could not be decoded (not UTF-8, or a number "
                                           "of more than 4300 digits)", "field": "body"}, 400)
        field = "path" if exc.status_code == 404 else ("method" if exc.status_code == 405 else None)
        error = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return json_response({"error": error, "field": field}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> Response:
        return json_response({"error": f"storage unavailable: {exc}", "field": None}, 503, {"Retry-After": "5"})

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError) -> Response:
        return json_response({"error": "request nested too deeply", "field": "body"}, 400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return json_response({"error": f"internal error: {exc.__class__.__name__}", "field": None}, 500)


class InFlightLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in flight; the rest get 503 + ``Retry-After``.

    ``exempt`` paths (health checks) are always served, so an orchestrator can tell "overloaded" from
    "dead". A count, not a queue: nothing waits in memory beyond the limit.
    """

    def __init__(self, app: Any, limit: int, exempt: tuple[str, ...] = ("/healthz",), retry_after: int = 1,
                 before_response: Callable[[], Any] | None = None, max_body: int | None = None,
                 body_timeout: float | None = None) -> None:
        from loadtests.service.base import BODY_TIMEOUT

        self.app, self.limit, self.exempt = app, limit, exempt
        self.max_body = MAX_BODY if max_body is None else max_body
        self.body_timeout = BODY_TIMEOUT if body_timeout is None else body_timeout
        self.before_response = before_response
        self.retry_after = str(retry_after).encode()
        self.in_flight = 0
        self.rejected = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = {"error": f"body larger than {self.max_body} bytes", "field": "body"}
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value) > self.max_body
                except ValueError:
                    declared = False
                if declared:
                    await self._refuse(send, 413, too_big)
                    return
        if self.in_flight >= self.limit and scope["path"] not in self.exempt:
            self.rejected += 1
            await self._refuse(send, 503, {"error": "overloaded: too many requests in flight, retry later",
                                           "field": None}, retry=True)
            return
        self.in_flight += 1
        try:
            # The whole body, counted as it arrives, before the app sees any of it: Content-Length is
            # only a claim, and a chunked body has none.
            try:
                # asyncio.timeout, not wait_for: no task of its own per request (and no extra turn of
                # the event loop before a body that is already there is read)
                async with asyncio.timeout(self.body_timeout):
                    read = await self._read_body(receive)
            except TimeoutError:
                await self._refuse(send, 408, {"error": f"request body not received within {self.body_timeout:g}s",
                                               "field": "body"})
                return
            if read is None:
                await self._refuse(send, 413, too_big)
                return
            body, disconnect = read
            await self.app(scope, self._replay(body, disconnect, receive), self._durable_send(send))
        finally:
            self.in_flight -= 1

    async def _read_body(self, receive: Callable) -> tuple[bytes, dict | None] | None:
        """The request body (and a disconnect seen while reading it), or None as soon as more than
        ``max_body`` bytes have arrived."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: the app sees the disconnect
                return b"".join(chunks), message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None

    @staticmethod
    def _replay(body: bytes, disconnect: dict | None, receive: Callable) -> Callable:
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return disconnect if disconnect is not None else await receive()

        return replay

    def _durable_send(self, send: Callable) -> Callable:
        """``send``, holding the response until the store's commit; a failed commit answers 503 instead."""
        if self.before_response is None:
            return send
        durable = self.before_response
        failed = False

        async def durable_send(message: dict) -> None:
            nonlocal failed
            if failed:
                return
            if message["type"] == "http.response.start":
                try:
                    await durable()
                except StorageError as exc:  # its writes are not on disk: nothing is acknowledged
                    failed = True
                    await self._refuse(send, 503, {"error": f"storage unavailable: {exc}", "field": None},
                                       retry=True)
                    return
            await send(message)

        return durable_send

    async def _refuse(self, send: Callable, status: int, body: dict, retry: bool = False) -> None:
        payload = _dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   (b"connection", b"close")]
        if retry:
            headers.append((b"retry-after", self.retry_after))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def require_admin(token: str) -> Callable[[Request], None]:
    """A dependency refusing (401) requests without ``Authorization: Bearer <token>``."""
    if not token:
        raise ValueError("admin token: expected a non-empty token")
    expected = f"Bearer {token}".encode()

    def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "admin token required: send 'Authorization: Bearer <token>'", "Authorization")

    return check


class FaultsBody(BaseModel):
    """Replace the run-time fault overrides: dotted keys as in a scenario's ``[[faults]] set``."""

    model_config = ConfigDict(extra="forbid")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description='e.g. {"gateway.service_time": "2s", "bank.response_loss": 0.2}; {} clears every override',
    )


class CalendarBody(BaseModel):
    """Where the scenario's t = 0 is on the wall clock, for its calendar (``run.start``)."""

    model_config = ConfigDict(extra="forbid")
    epoch: float = Field(description="Unix time of the scenario's t = 0 (the load epoch)", ge=0, allow_inf_nan=False)


def admin_router(service: Any) -> APIRouter:
    """``/admin/faults`` and ``/admin/history`` for a service with ``conditions`` and ``store``."""
    from fastapi import Depends

    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin(service.admin_token))])

    @router.get("/faults", summary="the fault overrides in force and the effective faultable sections")
    async def get_faults() -> Response:
        return json_response(service.conditions.describe())

    @router.put("/faults", summary="replace the run-time fault overrides (validated like scenario fault windows)")
    async def put_faults(body: FaultsBody) -> Response:
        try:
            service.conditions.set_overrides(body.set)
        except ConfigError as exc:
            message = str(exc)
            bad = next((k for k in body.set if isinstance(k, str) and k in message), None)
            raise ApiError(422, message, f"set.{bad}" if bad else "set") from None
        except Exception as exc:  # a value pydantic could not even describe: still the caller's mistake
            raise ApiError(422, f"invalid fault overrides: {exc}", "set") from None
        return json_response(service.conditions.describe())

    @router.put("/calendar", summary="the wall time of the scenario's t = 0, for run.start's calendar")
    async def put_calendar(body: CalendarBody) -> Response:
        service.calendar_epoch = body.epoch
        return json_response({"epoch": body.epoch, "origin": service.calendar_origin().isoformat()})

    @router.get("/history", summary="every history event of this service, ordered by t, as JSON Lines",
                response_class=StreamingResponse)
    async def history() -> StreamingResponse:
        return StreamingResponse(service.store.history_chunks(), media_type="application/x-ndjson")

    return router


def replay_body(message: dict, receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``message`` (a body already read by a fast route) once, then defers
    to the real ``receive``: how a fast route hands a request it does not answer on to the app."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return message
        return await receive()

    return replay
