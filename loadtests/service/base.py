"""The frame both service processes share: configuration, start-up and recovery, the uvicorn server.

Each service is one process with one event loop and one SQLite connection (``store.Store``). Its
``create_app`` builds a FastAPI app whose lifespan opens the store, recovers what a crash left
half-done, loads the pending jobs and starts the scheduler; ``main`` parses the command line the
runner (``loadtests.service.runner``) passes, binds the socket itself (so a port of 0 picks a free one,
written to ``--port-file``) and runs uvicorn on it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from sim.scenario import Scenario, scenario_from_dict

from loadtests.service.runtime import Clock, Conditions
from loadtests.service.store import Scheduler, Store

log = logging.getLogger("checkout_chaos.service")

ADMIN_TOKEN_ENV = "CHECKOUT_CHAOS_ADMIN_TOKEN"
NOTIFY_SECRET_ENV = "CHECKOUT_CHAOS_NOTIFY_SECRET"

# At high time scales a scaled timeout can drop below what one loopback round trip through a busy
# Python server costs (or one turn of a busy event loop); the services' timeouts (the gateway's wait for
# the bank, notification acknowledgements, the checkout's calls to the provider) never go below this
# many wall seconds.
MIN_TIMEOUT = 0.25


def url_for(host: str, port: int) -> str:
    """The base URL a client on this machine uses for a service bound to ``host``:``port``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


@dataclass
class ServiceConfig:
    scenario: Scenario
    data_dir: Path
    start_epoch: float
    time_scale: float
    admin_token: str
    notify_secret: str
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

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.config.data_dir / f"{self.name}.db", self.schema, self.config.synchronous)
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


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    data = json.loads(Path(args.scenario_json).read_text(encoding="utf-8"))
    return ServiceConfig(
        scenario=scenario_from_dict(data, args.scenario_json),
        data_dir=Path(args.data),
        start_epoch=args.start_epoch,
        time_scale=args.time_scale,
        admin_token=os.environ.get(ADMIN_TOKEN_ENV, ""),
        notify_secret=os.environ.get(NOTIFY_SECRET_ENV, ""),
        synchronous=args.synchronous,
    )


def serve(app: Any, args: argparse.Namespace, max_in_flight: int,
          on_bound: Callable[[int], None] | None = None) -> None:
    """Bind the socket, publish the port, run uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
        http="httptools",
        # Connections + tasks; the per-request bound is InFlightLimit's (max_in_flight).
        limit_concurrency=max(10_000, 4 * max_in_flight),
        backlog=2048,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )
    # Everything imported and built so far lives as long as the process: keep it out of the cyclic
    # garbage collector's generations, whose full passes over it paused the event loop for 30-40 ms.
    gc.collect()
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock])
