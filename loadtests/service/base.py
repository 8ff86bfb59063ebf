"""The frame both service processes share: configuration, start-up and recovery, the uvicorn server.

Each service is one process with one event loop and one SQLite connection (``store.Store``). Its
``create_app`` builds a FastAPI app whose lifespan opens the store, recovers what a crash left
half-done, loads the pending jobs and starts the scheduler; ``main`` parses the command line the
runner (``loadtests.service.runner``) passes, binds the socket itself (so a port of 0 picks a free one,
written to ``--port-file``) and runs uvicorn on it.

Secrets (the admin token, the notification HMAC secret) come from the environment
(``CHECKOUT_CHAOS_ADMIN_TOKEN``, ``CHECKOUT_CHAOS_NOTIFY_SECRET``) or from a file named by the same
variable with ``_FILE`` appended; never from the command line, where ``ps`` shows them. A service
refuses to start without both (exit 2). A storage failure stops the service: it logs why at CRITICAL
and exits with :data:`EXIT_STORAGE`, so whoever started it (``serve``, a live run) sees it die.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from sim.scenario import Scenario, scenario_from_dict

from loadtests.service.runtime import Clock, Conditions

BEIJING = timezone(timedelta(hours=8))
from loadtests.service.store import Scheduler, Store

log = logging.getLogger("checkout_chaos.service")

ADMIN_TOKEN_ENV = "CHECKOUT_CHAOS_ADMIN_TOKEN"
NOTIFY_SECRET_ENV = "CHECKOUT_CHAOS_NOTIFY_SECRET"
# When set, each service runs under cProfile and writes $CHECKOUT_CHAOS_PROFILE.<service>.prof at exit.
PROFILE_ENV = "CHECKOUT_CHAOS_PROFILE"
EXIT_STORAGE = 75  # EX_TEMPFAIL: the disk failed under the service; restart it once the disk is fixed

# Slow clients: a request's head must arrive within HEADER_TIMEOUT wall seconds of its first byte (or of
# the connection), its body within BODY_TIMEOUT; an idle keep-alive connection closes after IDLE_TIMEOUT.
HEADER_TIMEOUT = float(os.environ.get("CHECKOUT_CHAOS_HEADER_TIMEOUT", "10"))
BODY_TIMEOUT = 10.0
IDLE_TIMEOUT = 30

# At high time scales a scaled timeout can drop below what one loopback round trip through a busy
# Python server costs (or one turn of a busy event loop); the services' timeouts (the gateway's wait for
# the bank, notification acknowledgements, the checkout's calls to the provider) never go below this
# many wall seconds.
MIN_TIMEOUT = 0.25


def url_for(host: str, port: int) -> str:
    """The base URL a client on this machine uses for a service bound to ``host``:``port``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


class ProviderUnavailable(Exception):
    """The provider did not answer within the checkout's timeout, or answered 5xx (raised by the
    reference checkout and by its PSP clients, ``loadtests.service.psp_clients``)."""


@dataclass
class ServiceConfig:
    scenario: Scenario
    data_dir: Path
    start_epoch: float
    time_scale: float
    admin_token: str = field(repr=False)
    notify_secret: str = field(repr=False)
    synchronous: str = "NORMAL"
    provider_url: str = ""  # checkout only: where the mock (or any) provider listens
    public_url: str = ""  # checkout only: the base URL the provider posts notifications to


class ServiceBase:
    """State common to both services: clock, conditions, store, scheduler, background tasks."""

    name = "service"
    schema = ""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.admin_token = config.admin_token
        self.clock = Clock(config.start_epoch, config.time_scale)
        self.conditions = Conditions(config.scenario, self.clock, self.name)
        self.store: Store = None  # type: ignore[assignment]  # opened in the lifespan
        self.scheduler: Scheduler = None  # type: ignore[assignment]
        self._background: list[asyncio.Task] = []
        self.calendar_epoch: float | None = None  # wall time of the scenario's t = 0 (PUT /admin/calendar)

    def calendar_origin(self) -> datetime:
        """The calendar date-time (local, naive) of this service's clock at 0, for what counts in calendar
        days: working-day refunds, Alipay's daily bills. ``run.start`` is the date-time of the
        *scenario's* t = 0; under ``load`` that is the load epoch, which ``load`` tells both services
        (``PUT /admin/calendar``) a moment before it comes — a few scenario minutes after the services'
        own clocks started at K = 60 —, so the origin is ``run.start`` minus that lead. Without
        ``run.start`` it is the Beijing date-time of the service's start."""
        start = self.config.scenario.run.start
        if start is None:
            return datetime.fromtimestamp(self.clock.start_epoch, BEIJING).replace(tzinfo=None)
        lead = 0.0 if self.calendar_epoch is None else (self.calendar_epoch - self.clock.start_epoch) * self.clock.scale
        return start.replace(tzinfo=None) - timedelta(seconds=lead)

    def job_handlers(self) -> dict[str, Callable]:
        return {}

    def recover(self) -> None:
        """Repair what a crash left half-done (runs once at start, before jobs load)."""

    def background(self) -> list[Callable[[], Any]]:
        """Extra loops to run beside the scheduler (coroutine functions)."""
        return []

    async def aclose(self) -> None:
        """Close clients (called at shutdown)."""

    @property
    def observation_end(self) -> float:
        """Scenario seconds after which nobody looks: a simulated run's horizon + drain, or a live run's
        (run_time + drain) scaled. Far-off timers (a 15-day trade lifetime) are not kept as jobs; the
        expiry is applied when the trade is next used instead."""
        s = self.config.scenario
        return max(s.run.horizon + s.run.drain, (s.live.run_time + s.live.drain) * self.clock.scale)

    def wall_timeout(self, scenario_seconds: float) -> float:
        return max(MIN_TIMEOUT, self.clock.wall(scenario_seconds))

    def storage_failed(self, why: str) -> None:
        """The store could not make a write durable: log it and exit non-zero, soon enough for the
        requests that were waiting on it to get their 503 first."""
        log.critical("%s: stopping: storage failure: %s", self.name, why)
        for handler in logging.getLogger().handlers:
            handler.flush()

        def _exit() -> None:
            sys.stderr.write(f"{self.name}: exiting with {EXIT_STORAGE}: storage failure: {why}\n")
            sys.stderr.flush()
            os._exit(EXIT_STORAGE)

        try:
            asyncio.get_running_loop().call_later(0.2, _exit)
        except RuntimeError:
            _exit()

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        db = self.config.data_dir / f"{self.name}.db"
        for part in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            # SQLite maps the -shm file: a read-only one ends in SIGBUS at the first write, with no log.
            if part.exists() and not os.access(part, os.R_OK | os.W_OK):
                raise SystemExit(f"{self.name}: {part} is not readable and writable by this process; fix its "
                                 "permissions (or remove a stale -shm file) and start again")
        self.store = Store(db, self.schema, self.config.synchronous, on_fatal=self.storage_failed)
        with self.store.tx():
            self.store.set_meta("start_epoch", repr(self.config.start_epoch))
            self.store.set_meta("time_scale", repr(self.config.time_scale))
        self.scheduler = Scheduler(self.store, self.clock, self.job_handlers())
        self.scheduler.load()
        self.recover()
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self.scheduler.run())]
        self._background += [loop.create_task(fn()) for fn in self.background()]
        try:
            yield
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self.scheduler.stop()
            await self.aclose()
            self.store.close()


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario-json", required=True, help="the resolved scenario as JSON")
    parser.add_argument("--data", required=True, help="data directory (SQLite databases)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see --port-file)")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--start-epoch", type=float, required=True, help="Unix time of scenario t=0")
    parser.add_argument("--time-scale", type=float, required=True)
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal")
    parser.add_argument("--log-level", default="warning")


def read_secret(name: str, environ: dict[str, str] | None = None) -> str:
    """The secret in ``$name``, else in the file named by ``$name_FILE`` (stripped); ``SystemExit`` (2)
    if neither gives a non-empty value."""
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip()
    if not value and env.get(name + "_FILE"):
        path = Path(env[name + "_FILE"])
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(_usage(f"{name}_FILE={path}: cannot read it: {exc.strerror or exc}")) from None
        if not value:
            raise SystemExit(_usage(f"{name}_FILE={path}: the file is empty; expected the secret"))
    if not value:
        raise SystemExit(_usage(f"{name}: not set (or empty); set it, or {name}_FILE to a file holding it"))
    return value


def _usage(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 2


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    token, secret = read_secret(ADMIN_TOKEN_ENV), read_secret(NOTIFY_SECRET_ENV)
    data = json.loads(Path(args.scenario_json).read_text(encoding="utf-8"))
    return ServiceConfig(
        scenario=scenario_from_dict(data, args.scenario_json),
        data_dir=Path(args.data),
        start_epoch=args.start_epoch,
        time_scale=args.time_scale,
        admin_token=token,
        notify_secret=secret,
        synchronous=args.synchronous,
    )


class _OneWrite:
    """A connection's transport whose writes of one turn of the event loop go out as one.

    uvicorn writes a response's status line and headers, then its body: two ``send`` system calls,
    two segments on loopback, and a client woken for each. Here the first write of a turn is held
    until the next (the body, written in the same step of the same task: joined with it, one system
    call) or, at the latest, until the end of the turn (a body sent later, a streamed one). Closing
    writes what is held first. Everything else is the transport's own."""

    __slots__ = ("_transport", "_held", "_loop")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._held, self._loop = transport, None, loop

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = data
            self._loop.call_soon(self._flush)
        else:  # the second write of the turn: both in one system call
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _guarded_http_protocol() -> type:
    """uvicorn's httptools protocol with a deadline on each request's head: uvicorn closes idle
    keep-alive connections, but a client that connects and sends nothing (or a header a byte at a
    time) would otherwise hold its connection for ever. Its transport writes a response's head and
    body together (:class:`_OneWrite`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(HEADER_TIMEOUT, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(_OneWrite(transport, self.loop))  # type: ignore[arg-type]
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._disarm_head_timer()
            super().on_headers_complete()

    return GuardedHttpToolsProtocol


def serve(app: Any, args: argparse.Namespace, max_in_flight: int,
          on_bound: Callable[[int], None] | None = None) -> None:
    """Bind the socket, publish the port, run uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    faulthandler.enable()  # a fatal signal (SIGBUS from a broken -shm mapping) leaves a traceback in the log
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    if on_bound is not None:
        on_bound(port)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http=_guarded_http_protocol(),
        # Connections + tasks; the per-request bound is InFlightLimit's (max_in_flight).
        limit_concurrency=max(10_000, 4 * max_in_flight),
        backlog=2048,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=IDLE_TIMEOUT,
    )
    # Everything imported and built so far lives as long as the process: keep it out of the cyclic
    # garbage collector's generations, whose full passes over it paused the event loop for 30-40 ms.
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(config)
    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        server.run(sockets=[sock])
        return
    import cProfile

    # A developer's profile of the whole process (docs/performance.md): written at a clean shutdown.
    name = getattr(getattr(getattr(app, "state", None), "service", None), "name", "service")
    profiler = cProfile.Profile(time.process_time)  # CPU time: on a shared machine wall time counts others

    def dump(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(f"{profile}.{name}.prof")
        sys.exit(0)

    # uvicorn restores the handlers it found and re-raises SIGTERM/SIGINT after its graceful shutdown:
    # this one then writes the profile.
    signal.signal(signal.SIGTERM, dump)
    signal.signal(signal.SIGINT, dump)
    profiler.enable()
    server.run(sockets=[sock])
    dump()
