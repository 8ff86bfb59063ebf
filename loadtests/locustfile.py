"""The Locust side of a live run: an open-model arrival scheduler playing buyers over HTTP.

Run by ``checkout-chaos load`` (never imported by the harness itself: Locust patches the standard
library with gevent). The run's plan comes from the file named by ``$CHECKOUT_CHAOS_PLAN``
(``loadtests.plan.Plan``).

Each Locust process runs one :class:`Buyers` user — a *scheduler*, not a buyer. It draws the run's
arrival schedule (the same in every process, from the scenario's seed), takes the arrivals of its slot
(``i % slots == worker_index``), and when arrival ``i`` is due it spawns a greenlet that plays buyer
``i`` (``loadtests.buyer.Buyer``) whether or not earlier buyers are done: the arrival rate follows the
scenario's profile, not a user count. All the greenlets share the user's fast HTTP client (its
connection pool has ``plan.connections`` connections). An arrival that starts more than
``plan.late_tolerance`` after it was due is a late start; one that cannot start (``plan.max_in_flight``
buyers already in flight) is dropped; both are counted and reported, and the start lag of every arrival
also goes into Locust's statistics as ``ARRIVAL start lag``.

Beside the buyers, each process samples the pages of the orders its buyers created
(``loadtests.sampler``: ``live.order_sample_interval``, bounded by ``live.order_sample_rate`` and
``live.order_sample_max``); each answered sample is an ``order.observed`` event of its history.

Handshake with the orchestrator, which runs on the machine of this process (one Locust process) or of
the master (several): through files in ``plan.client_dir``. The scheduler writes ``ready-<slot>`` when
it is up, waits for ``go.json`` (the load epoch: wall time of scenario ``t = 0``), plays its arrivals,
lets the buyers still in flight run through the drain, stops them at the end of observation, flushes
its history (``client-<slot>.jsonl``) and writes ``done-<slot>.json`` (its counters).

Workers (Locust's distributed mode, on this machine or others) touch no file: the master is their
bridge. A worker asks the master for the plan (``cc_hello`` -> ``cc_plan``), says it is ready
(``cc_ready``), receives the go (``cc_go``: the epoch as *seconds from now*, so a worker whose clock is
off still starts with the others), streams its history (``cc_history``, every half second) and its
counters (``cc_done``) — all over Locust's own message channel (``runner.send_message`` /
``register_message``); the master writes them into ``plan.client_dir`` as a local scheduler would.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gevent
import gevent.event
import gevent.pool
from locust import FastHttpUser, constant, events, task
from locust.exception import CatchResponseError
from locust.runners import MasterRunner, WorkerRunner

from sim.scenario import scenario_from_dict

from loadtests.adapter import Adapter
from loadtests.buyer import (BROKEN, ERROR_KINDS, MALFORMED_STATUS, OK, REFUSED, SERVER_ERROR, TIMEOUT, UNREACHABLE,
                             Buyer, Context, Reply)
from loadtests.history import HistoryWriter, _line
from loadtests.plan import MIN_CLIENT_TIMEOUT, PLAN_ENV, ROLE_ENV, Plan, arrival_times, read_plan, write_json_atomic
from loadtests.sampler import OrderSampler

log = logging.getLogger("checkout_chaos.locust")

IS_WORKER = os.environ.get(ROLE_ENV) == "worker" or "--worker" in sys.argv
if not IS_WORKER and PLAN_ENV not in os.environ:
    raise SystemExit(f"{__file__}: run it through 'checkout-chaos load' (it needs ${PLAN_ENV}, the run's plan file) "
                     "or 'checkout-chaos load-worker' (a worker gets the plan from its master)")
PLAN: Plan | None = None if IS_WORKER else read_plan(os.environ[PLAN_ENV])
_plan_ready = gevent.event.Event()
_go = gevent.event.AsyncResult()  # a worker's load epoch, on its own clock
if PLAN is not None:
    _plan_ready.set()
HISTORY_CHUNK = 5000  # events per cc_history message
LOOPBACK = ("127.0.0.1", "::1", "localhost")
SAMPLE_LOOPS = 4  # greenlets taking order-page samples (they share one sampler and its rate budget)
PROFILE_ENV = "CHECKOUT_CHAOS_PROFILE"  # a path prefix: profile the scheduler's process into PREFIX.<pid>


class GeventTransport:
    """``loadtests.buyer.Transport`` over Locust's FastHttpSession (requests show in Locust's stats).

    Calls to the harness's own services (``lean``: base URLs such as the mock provider's and the
    reference checkout's) with a JSON body or none and no extra headers go straight to
    geventhttpclient's ``HTTPClient``, the keep-alive client under FastHttpSession, one per origin with
    the session's connection limit and timeouts, and are reported to Locust's request event as
    FastHttpSession reports them (type, name, response time, length, failure): the same requests and
    statistics without the session's per-request URL parsing, cookie jar, redirect loop and response
    wrappers (about 100 µs of CPU per request). Those services never redirect or set cookies. Anything
    else (a ``--target``, a PSP hand-off with its own headers, forms, redirects) goes through the
    session."""

    def __init__(self, session: Any, request_event: Any = None, lean: tuple[str, ...] = (),
                 concurrency: int = Plan.connections, connection_timeout: float = 10.0,
                 network_timeout: float = 60.0) -> None:
        self.session = session
        self._fire = request_event.fire if request_event is not None else None
        self._lean = tuple(u.rstrip("/") + "/" for u in lean if u.startswith("http://")) if self._fire else ()
        self._client_args = {"concurrency": concurrency, "connection_timeout": connection_timeout,
                             "network_timeout": network_timeout}
        self._clients: dict[str, Any] = {}

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def send(self, method: str, url: str, body: Any, timeout: float, name: str,
             headers: dict[str, str] | None = None) -> Reply:
        if headers is None and not isinstance(body, str):
            for base in self._lean:
                if url.startswith(base):
                    return self._send_lean(base, method, url, body, timeout, name)
        timer = gevent.Timeout(timeout)
        timer.start()
        payload = {"data": body} if isinstance(body, str) else {"json": body}  # a str is a form, sent as it is
        try:
            with self.session.request(method, url, name=name, headers=headers, catch_response=True, **payload) as resp:
                reply = _classify(resp, timer)
                if reply.kind in ERROR_KINDS or reply.status in MALFORMED_STATUS:
                    resp.failure(reply.error or f"HTTP {reply.status}")
                else:
                    resp.success()
                return reply
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return Reply(TIMEOUT, error="timeout")
        finally:
            timer.close()

    def _send_lean(self, base: str, method: str, url: str, body: Any, timeout: float, name: str) -> Reply:
        known = self._clients.get(base)
        if known is None:
            parts = urlparse(base)  # the request line carries everything after the origin (a base path too)
            known = self._clients[base] = (_lean_client(base, self._client_args),
                                           len(f"{parts.scheme}://{parts.netloc}"))
        client, origin = known
        if body is None:
            payload, headers = b"", _ACCEPT_JSON
        else:
            payload, headers = _json_bytes(body), _SEND_JSON
        content = b""
        start_time = time.time()
        started = time.perf_counter()
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            resp = client.request(method, url[origin:], body=payload, headers=headers)
            try:
                content = resp.read()
            finally:
                resp.release()
            reply = _classify_answer(resp.status_code, content)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            reply = Reply(TIMEOUT, error="timeout")
        except gevent.GreenletExit:
            raise
        except ConnectionRefusedError as err:
            reply = Reply(UNREACHABLE, error=f"{err.__class__.__name__}: {err}")
        except Exception as err:  # reset, closed mid-answer, an answer that does not parse as HTTP
            reply = Reply(BROKEN, error=f"{err.__class__.__name__}: {err}")
        finally:
            timer.close()
        failed = reply.kind in ERROR_KINDS or reply.status in MALFORMED_STATUS
        self._fire(request_type=method, name=name, response_time=(time.perf_counter() - started) * 1000.0,
                   response_length=len(content), exception=CatchResponseError(reply.error or f"HTTP {reply.status}")
                   if failed else None, context={}, start_time=start_time, url=url, response=None)
        return reply


try:  # orjson: the same JSON (UTF-8 rather than \\u escapes) several times faster, both ways
    import orjson

    def _json_bytes(body: Any) -> bytes:
        try:
            return orjson.dumps(body)
        except TypeError:  # what orjson refuses (an integer beyond 64 bits)
            return json.dumps(body).encode()

    _json_loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency
    def _json_bytes(body: Any) -> bytes:
        return json.dumps(body).encode()

    _json_loads = json.loads

_ACCEPT_JSON = {"Accept": "application/json"}
_SEND_JSON = {"Accept": "application/json", "Content-Type": "application/json"}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _lean_client(base: str, client_args: dict[str, Any]) -> Any:
    """geventhttpclient's ``HTTPClient`` for ``base``, whose ``request`` writes the head of the lean
    path's requests from a template (one per header set) instead of merging and checking
    case-insensitive header dictionaries twice per request (a third of the client's CPU per request in
    a profile of ``load_capacity.py``). The bytes on the wire are those ``HTTPClient.request`` writes for
    these requests — the same header fields (its User-Agent, Host, then the call's), a Content-Length
    for a body and for a POST without one — and the sending, retrying and reading are its own."""
    import errno

    import gevent.socket
    from geventhttpclient import HTTPClient
    from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError, HTTPSocketPoolResponse

    class LeanHTTPClient(HTTPClient):
        _heads: dict[int, str] = {}

        def _head(self, headers: dict[str, str]) -> str:
            head = self._heads.get(id(headers))
            if head is None:
                fields = dict(self.default_headers.items())
                if "Host" not in fields:
                    fields["Host"] = self.host if self.port in (80, 443) else f"{self.host}:{self.port}"
                fields.update(headers)
                head = self._heads[id(headers)] = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            return head

        def request(self, method: str, request_uri: str, body: bytes = b"", headers: Any = None) -> Any:
            if headers is not _ACCEPT_JSON and headers is not _SEND_JSON or not isinstance(body, bytes) \
                    or not request_uri.startswith("/") or request_uri.startswith("//"):
                return super().request(method, request_uri, body, headers)  # (not a lean call)
            length = f"Content-Length: {len(body)}\r\n" if body or method in _BODY_METHODS else ""
            data = f"{method} {request_uri} HTTP/1.1\r\n{self._head(headers)}{length}\r\n".encode("latin-1") + body
            pool = self._connection_pool
            attempts_left = pool.size + 1
            while True:  # HTTPClient.request's loop, for a bytes body without Expect or chunking
                sock = pool.get_socket()
                try:
                    sock.sendall(data)
                except gevent.socket.error as e:
                    if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                        pool.release_socket(sock)
                        raise
                    try:  # an answer sent before the server closed (it releases the socket either way)
                        return HTTPSocketPoolResponse(sock, pool, block_size=self.block_size, method=method,
                                                      headers_type=self.headers_type)
                    except (gevent.socket.error, HTTPParseError):
                        if attempts_left > 0 and method in _IDEMPOTENT:
                            attempts_left -= 1
                            continue
                        raise
                try:
                    return HTTPSocketPoolResponse(sock, pool, block_size=self.block_size, method=method,
                                                  headers_type=self.headers_type)
                except HTTPConnectionClosed:
                    if attempts_left > 0 and method in _IDEMPOTENT:
                        attempts_left -= 1
                        continue
                    raise

    return LeanHTTPClient.from_url(base, **client_args)


_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


def _classify(resp: Any, timer: gevent.Timeout) -> Reply:
    status = resp.status_code or 0
    if not status:
        err = getattr(resp, "error", None)
        while getattr(err, "original", None) is not None:  # geventhttpclient wraps the cause
            err = err.original
        if err is timer or isinstance(err, gevent.Timeout):
            return Reply(TIMEOUT, error="timeout")
        if isinstance(err, ConnectionRefusedError):
            return Reply(UNREACHABLE, error=f"{err.__class__.__name__}: {err}")
        return Reply(BROKEN, error=f"{err.__class__.__name__}: {err}" if err else "no answer")
    return _classify_answer(status, resp.content)


def _classify_answer(status: int, content: bytes) -> Reply:
    try:
        body = _json_loads(content) if content else None
    except ValueError:  # (orjson.JSONDecodeError is one)
        body = None
    if status < 300:
        return Reply(OK, status, body)
    if status < 500:
        return Reply(REFUSED, status, body, (body or {}).get("code") if isinstance(body, dict) else None)
    return Reply(SERVER_ERROR, status, body, f"HTTP {status}")


def _profiles(n: int, seed: int) -> list[tuple[str, str, str]]:
    """Chinese buyer data (name, mobile number, address) from Faker's zh_CN locale, seeded."""
    from faker import Faker

    fake = Faker("zh_CN")
    fake.seed_instance(seed)
    return [(fake.name(), fake.phone_number(), fake.address().replace("\n", " ")) for _ in range(max(1, n))]


_claimed = False  # one scheduler per process, whatever the user count


class Buyers(FastHttpUser):
    """The arrival scheduler of one Locust process (see the module docstring)."""

    host = PLAN.checkout_url if PLAN else None  # a worker gets it from the master's spawn message (--host)
    concurrency = PLAN.connections if PLAN else Plan.connections
    network_timeout = 60.0
    connection_timeout = 10.0
    wait_time = constant(1)

    def on_start(self) -> None:
        global _claimed
        self.idle = _claimed
        _claimed = True

    @task
    def replay(self) -> None:
        if self.idle:
            gevent.sleep(3600)
            return
        self.idle = True  # the task runs once; afterwards the user idles until Locust quits
        profile = os.environ.get(PROFILE_ENV)
        profiler = None
        if profile:  # where this process's time goes: cProfile over every greenlet of the run
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        try:
            self._replay()
        except gevent.GreenletExit:
            raise
        except Exception:
            log.exception("the arrival scheduler failed")
            raise
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(f"{profile}.{os.getpid()}")

    def _replay(self) -> None:
        runner = self.environment.runner
        channel: FileChannel | MessageChannel
        if isinstance(runner, WorkerRunner):
            if not _plan_ready.wait(timeout=120):
                raise RuntimeError("no plan from the master within 120 s")
            channel = MessageChannel(runner)
        else:
            channel = FileChannel(PLAN)
        try:
            self._play(channel)
        except gevent.GreenletExit:
            raise
        except Exception:
            channel.failed(traceback.format_exc())
            raise

    def _play(self, channel: "FileChannel | MessageChannel") -> None:
        plan = PLAN
        assert plan is not None
        slot = channel.slot
        if slot >= plan.slots:
            raise RuntimeError(f"worker index {slot}, but the run plays {plan.slots} slots: more workers joined "
                               "than the master expects (--expect-workers)")
        scenario = scenario_from_dict(plan.scenario, "plan")
        writer = channel.history()
        profiles = _profiles(plan.profiles, scenario.run.seed + slot)
        channel.ready()
        epoch = channel.wait_go()
        # the harness's own services (not a --target, whose answers it does not know) on the lean path
        lean = (plan.provider_url,) if plan.synthesize_orders else (plan.provider_url, plan.checkout_url)
        transport = GeventTransport(self.client, self.environment.events.request, lean, self.concurrency,
                                    self.connection_timeout, self.network_timeout)
        sampler = _sampler(plan, scenario, transport, writer.emit, epoch)
        emit = writer.emit if sampler is None else _registering(writer.emit, sampler)
        ctx = Context(scenario, Adapter(plan.adapter), transport, emit,
                      checkout_url=plan.checkout_url, provider_url=plan.provider_url, time_scale=plan.time_scale,
                      load_epoch=epoch, run_id=plan.run_id, seed=scenario.run.seed, profiles=profiles,
                      synthesize_orders=plan.synthesize_orders)
        c = ctx.counters
        fire = self.environment.events.request.fire
        tolerance = plan.late_tolerance

        def flow(index: int, due: float) -> None:
            lag = time.time() - due
            c.started += 1
            c.add_lag(lag)
            if lag > tolerance:
                c.late += 1
            fire(request_type="ARRIVAL", name="start lag", response_time=lag * 1000.0, response_length=0,
                 exception=None, context={})
            try:
                buyer = Buyer(ctx, index, due)
                buyer.run()
                c.completed += 1
                buyer.watch()
            except gevent.GreenletExit:
                raise
            except Exception:
                c.flow_errors += 1
                if c.flow_errors <= 5:
                    log.exception("buyer %s failed", index)

        def flusher() -> None:
            while True:
                gevent.sleep(0.5)
                writer.flush()

        flushing = gevent.spawn(flusher)
        sampling = [gevent.spawn(_sample_loop, sampler) for _ in range(SAMPLE_LOOPS)] if sampler else []
        pool = gevent.pool.Pool(plan.max_in_flight)
        k = plan.time_scale
        slots = plan.slots
        for i, t in enumerate(arrival_times(scenario.load, plan.horizon, scenario.run.seed, plan.max_orders)):
            if i % slots != slot:
                continue
            c.planned += 1
            due = epoch + t / k
            left = due - time.time()
            if left > 0:
                gevent.sleep(left)
            if pool.full():
                c.dropped += 1
                continue
            pool.spawn(flow, i, due)
        left = epoch + plan.end / k - time.time()
        if left > 0:
            gevent.sleep(left)  # the drain: buyers still in flight go on
        in_flight = len(pool)
        pool.kill(block=True, timeout=5)
        gevent.killall(sampling, block=True, timeout=5)
        flushing.kill(block=True)
        writer.close()
        done = {k_: v for k_, v in c.__dict__.items()}
        if sampler is not None:
            done.update(sampler.counters.to_dict())
        done.update(slot=slot, pid=os.getpid(), host=socket.gethostname(), in_flight_at_end=in_flight,
                    events=writer.written)
        channel.done(done)


def _sampler(plan: Plan, scenario: Any, transport: GeventTransport, emit: Any, epoch: float) -> OrderSampler | None:
    """This process's order-page sampler (``loadtests.sampler``), or None when sampling is off."""
    live = scenario.live
    if not live.order_sample_interval or not (plan.synthesize_orders or live.order_sample_reference):
        return None  # off, or the reference checkout (whose own events the harness reads)
    adapter = Adapter(plan.adapter)
    try:
        adapter.request("order_status", {"order": "probe"})
    except KeyError as exc:  # as the read after the drain, a sample knows only the order id
        log.warning("order pages not sampled: the adapter's order_status needs {%s}, not only {order}", exc.args[0])
        return None
    return OrderSampler(adapter, transport, emit, base_url=plan.checkout_url, epoch=epoch,
                        time_scale=plan.time_scale, interval=live.order_sample_interval,
                        rate=live.order_sample_rate / max(1, plan.slots), max_per_order=live.order_sample_max,
                        end=epoch + plan.end / plan.time_scale,
                        timeout=max(scenario.app.request_timeout / plan.time_scale, MIN_CLIENT_TIMEOUT))


def _registering(emit: Any, sampler: OrderSampler) -> Any:
    """``emit`` that also hands every order a buyer created to the sampler."""
    def wrapped(event: dict[str, Any]) -> None:
        emit(event)
        if event["type"] == "client.ok" and event.get("op") == "create_order":
            sampler.add(event["order"])
    return wrapped


def _sample_loop(sampler: OrderSampler) -> None:
    try:
        sampler.loop()
    except gevent.GreenletExit:
        raise
    except Exception:  # the samples stop; the buyers go on (counted as a harness error by the orchestrator)
        sampler.counters.sample_errors += 1
        sampler.counters.sampler_failed = True
        log.exception("the order-page sampler failed")


# --------------------------------------------------------------------------------------------------
# Where the scheduler's hand-shake and history go: files (beside the orchestrator) or the master


class FileChannel:
    """One Locust process on the orchestrator's machine: the files of ``plan.client_dir``."""

    slot = 0

    def __init__(self, plan: Plan) -> None:
        self.dir = Path(plan.client_dir)

    def history(self) -> HistoryWriter:
        return HistoryWriter(self.dir / f"client-{self.slot}.jsonl")

    def ready(self) -> None:
        write_json_atomic(self.dir / f"ready-{self.slot}", {"pid": os.getpid(), "slot": self.slot})

    def wait_go(self) -> float:
        go = self.dir / "go.json"
        while not go.exists():
            gevent.sleep(0.01)
        return json.loads(go.read_text())["load_epoch"]

    def done(self, counters: dict[str, Any]) -> None:
        write_json_atomic(self.dir / f"done-{self.slot}.json", counters)

    def failed(self, text: str) -> None:
        Path(self.dir, f"failed-{os.getpid()}.txt").write_text(text)


class MessageHistory:
    """``HistoryWriter``'s interface over Locust's message channel: ``flush`` sends the buffered events."""

    def __init__(self, runner: Any, slot: int) -> None:
        self.runner, self.slot = runner, slot
        self._buf: list[dict[str, Any]] = []
        self.written = 0

    def emit(self, event: dict[str, Any]) -> None:
        self._buf.append(event)

    def flush(self) -> None:
        while self._buf:
            chunk, self._buf = self._buf[:HISTORY_CHUNK], self._buf[HISTORY_CHUNK:]
            self.runner.send_message("cc_history", {"slot": self.slot,
                                                    "lines": b"".join(map(_line, chunk)).decode()})
            self.written += len(chunk)

    def close(self) -> None:
        self.flush()


class MessageChannel:
    """A worker: everything goes to and comes from the master."""

    def __init__(self, runner: WorkerRunner) -> None:
        self.runner = runner
        self.slot = max(0, runner.worker_index)

    def history(self) -> MessageHistory:
        return MessageHistory(self.runner, self.slot)

    def ready(self) -> None:
        self.runner.send_message("cc_ready", {"pid": os.getpid(), "slot": self.slot, "host": socket.gethostname()})

    def wait_go(self) -> float:
        return _go.get()

    def done(self, counters: dict[str, Any]) -> None:
        self.runner.send_message("cc_done", counters)

    def failed(self, text: str) -> None:
        self.runner.send_message("cc_failed", {"slot": self.slot, "pid": os.getpid(), "text": text})


def _loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOOPBACK


@events.init.add_listener
def _on_init(environment: Any, runner: Any = None, **_: Any) -> None:
    if isinstance(runner, MasterRunner) and PLAN is not None:
        MasterBridge(runner, PLAN)
    elif isinstance(runner, WorkerRunner):
        def on_plan(environment: Any, msg: Any, **_: Any) -> None:
            global PLAN
            plan = Plan.from_json(msg.data["plan"])
            remote = [u for u in (plan.checkout_url, plan.provider_url) if not _loopback(u)]
            if remote and not plan.allow_remote:
                runner.send_message("cc_failed", {"slot": runner.worker_index, "pid": os.getpid(), "text":
                                    f"refused: the plan sends load to {', '.join(remote)}, not loopback, and the "
                                    "master was not started with --allow-remote"})
                return
            PLAN = plan
            _plan_ready.set()

        def on_go(environment: Any, msg: Any, **_: Any) -> None:
            _go.set(time.time() + (msg.data["load_epoch"] - msg.data["sent_at"]))

        runner.register_message("cc_plan", on_plan)
        runner.register_message("cc_go", on_go)
        runner.send_message("cc_hello", {"pid": os.getpid(), "host": socket.gethostname()})


class MasterBridge:
    """The master's side: the plan to each worker that asks, the go to all, their files into ``client_dir``."""

    def __init__(self, runner: MasterRunner, plan: Plan) -> None:
        self.runner, self.plan, self.dir = runner, plan, Path(plan.client_dir)
        self.files: dict[int, Any] = {}
        for name, fn in (("cc_hello", self.hello), ("cc_ready", self.ready), ("cc_history", self.history),
                         ("cc_done", self.done), ("cc_failed", self.failed)):
            runner.register_message(name, fn)
        gevent.spawn(self.go)

    def hello(self, environment: Any, msg: Any, **_: Any) -> None:
        self.runner.send_message("cc_plan", {"plan": self.plan.to_json()}, client_id=msg.node_id)

    def _file(self, slot: int) -> Any:
        if slot not in self.files:
            self.files[slot] = open(self.dir / f"client-{int(slot)}.jsonl", "a", encoding="utf-8")
        return self.files[slot]

    def ready(self, environment: Any, msg: Any, **_: Any) -> None:
        self._file(msg.data["slot"])
        write_json_atomic(self.dir / f"ready-{int(msg.data['slot'])}", {**msg.data, "node": msg.node_id})

    def history(self, environment: Any, msg: Any, **_: Any) -> None:
        fh = self._file(msg.data["slot"])
        fh.write(msg.data["lines"])
        fh.flush()

    def done(self, environment: Any, msg: Any, **_: Any) -> None:
        slot = int(msg.data["slot"])
        fh = self.files.pop(slot, None)
        if fh is not None:
            fh.close()
        write_json_atomic(self.dir / f"done-{slot}.json", msg.data)

    def failed(self, environment: Any, msg: Any, **_: Any) -> None:
        Path(self.dir, f"failed-{int(msg.data.get('slot') or 0)}-{msg.data.get('pid')}.txt").write_text(
            f"worker {msg.node_id}:\n{msg.data['text']}")

    def go(self) -> None:
        go = self.dir / "go.json"
        while not go.exists():
            gevent.sleep(0.01)
        epoch = json.loads(go.read_text())["load_epoch"]
        self.runner.send_message("cc_go", {"load_epoch": epoch, "sent_at": time.time()})
