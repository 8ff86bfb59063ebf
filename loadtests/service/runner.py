"""Start, stop, kill and restart the two service processes (for ``serve``, the tests and live runs).

``start_services(...)`` launches ``python -m loadtests.service.provider`` and ``python -m
loadtests.service.checkout`` as child processes on loopback, waits until both answer ``/healthz`` and
returns a :class:`Services` handle (a context manager). Both children get the resolved scenario as a
JSON file in the data directory and the same start epoch, so their history events share one clock; the
epoch is kept in ``DATA/run.json`` and reused when the services are started again on the same data
directory (a restart after a crash continues the same timeline). Secrets live in the data directory
(``admin_token``, ``notify_secret``, mode 0600) and reach the children as ``..._FILE`` environment
variables: never on a command line, never in a ``repr``. A child that dies is reported with its exit
code and the last error it logged (:meth:`Services.check_alive`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.errors import ConfigError, TargetError
from sim.scenario import Scenario, default_scenario, load_scenario, parse_override

from loadtests.service.base import ADMIN_TOKEN_ENV, NOTIFY_SECRET_ENV, url_for

LOOPBACK = ("127.0.0.1", "::1", "localhost")
SERVICES = ("provider", "checkout")


@dataclass
class _Child:
    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None


@dataclass
class Services:
    """Two running services. ``kill(which)`` is ``kill -9``; ``restart(which)`` starts it again on the
    same port and data directory and waits until it is healthy."""

    provider_url: str
    checkout_url: str
    admin_token: str = field(repr=False)
    notify_secret: str = field(repr=False)
    data_dir: Path
    start_epoch: float
    time_scale: float
    scenario: Scenario
    _children: dict[str, _Child] = field(default_factory=dict, repr=False)
    _env: dict[str, str] = field(default_factory=dict, repr=False)
    _client: Any = field(default=None, repr=False)

    # -- lifecycle ----------------------------------------------------------------------------------

    def url(self, which: str) -> str:
        return {"provider": self.provider_url, "checkout": self.checkout_url}[which]

    def pid(self, which: str) -> int | None:
        proc = self._children[which].proc
        return proc.pid if proc is not None else None

    def alive(self, which: str) -> bool:
        proc = self._children[which].proc
        return proc is not None and proc.poll() is None

    def failure(self, which: str) -> str | None:
        """Why ``which`` is not running (exit code and the last error of its log), or None if it runs."""
        child = self._children[which]
        proc = child.proc
        if proc is None or proc.poll() is None:
            return None
        return _death(child)

    def check_alive(self) -> None:
        """Raise ``TargetError`` naming each service that died, with why."""
        dead = [self.failure(n) for n in SERVICES if n in self._children]
        dead = [d for d in dead if d]
        if dead:
            raise TargetError("; ".join(dead))

    def kill(self, which: str) -> None:
        """SIGKILL the service (no shutdown code runs: a crash) and reap it."""
        proc = self._children[which].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self, which: str, timeout: float = 20.0) -> None:
        """Start ``which`` again (stopping it first if it runs) on the same port and data directory."""
        if self.alive(which):
            self._terminate(self._children[which])
        _spawn(self._children[which], self._env)
        _wait_healthy(self._children[which], self.url(which), timeout)

    def stop(self) -> None:
        """SIGTERM both (checkout first), SIGKILL whatever has not exited after a few seconds."""
        for name in ("checkout", "provider"):
            child = self._children.get(name)
            if child is not None:
                self._terminate(child)
        if self._client is not None:
            self._client.close()
            self._client = None

    @staticmethod
    def _terminate(child: _Child) -> None:
        proc = child.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- convenience for tests and live runs --------------------------------------------------------

    def admin(self, which: str, method: str, path: str, **kwargs: Any) -> Any:
        """One admin request (``httpx.Response``) with the token."""
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=30)
        headers = {"Authorization": f"Bearer {self.admin_token}", **kwargs.pop("headers", {})}
        return self._client.request(method, self.url(which) + path, headers=headers, **kwargs)

    def set_calendar(self, epoch: float, which: tuple[str, ...] = SERVICES) -> None:
        """Tell the services the wall time of the scenario's t = 0 (``PUT /admin/calendar``): ``run.start``
        is the calendar date-time of that moment."""
        for name in which:
            resp = self.admin(name, "PUT", "/admin/calendar", json={"epoch": epoch})
            if resp.status_code != 200:
                raise ConfigError(f"{name}: calendar refused: {resp.text[:200]}")

    def set_faults(self, overrides: dict[str, Any], which: tuple[str, ...] = SERVICES) -> None:
        """Replace the run-time fault overrides on the given services (``PUT /admin/faults``)."""
        for name in which:
            resp = self.admin(name, "PUT", "/admin/faults", json={"set": overrides})
            if resp.status_code != 200:
                raise ConfigError(f"{name}: faults refused: {resp.json().get('error')}")

    def history(self) -> list[dict[str, Any]]:
        """Both services' history events, merged and ordered by ``t`` (stable: provider first on ties)."""
        events: list[dict[str, Any]] = []
        for name in SERVICES:
            resp = self.admin(name, "GET", "/admin/history")
            resp.raise_for_status()
            events += [json.loads(line) for line in resp.text.splitlines() if line]
        events.sort(key=lambda e: e["t"])
        return events

    def write_history(self, path: str | Path) -> int:
        events = self.history()
        with open(path, "w", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
        return len(events)


def _spawn(child: _Child, env: dict[str, str]) -> None:
    _launch(child, env)
    _await_port(child)


def _launch(child: _Child, env: dict[str, str]) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    Path(child.argv[child.argv.index("--port-file") + 1]).unlink(missing_ok=True)
    with open(child.log_path, "ab") as log:
        child.proc = subprocess.Popen(child.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      stdin=subprocess.DEVNULL, start_new_session=True)


def _await_port(child: _Child) -> None:
    port_file = Path(child.argv[child.argv.index("--port-file") + 1])
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if child.proc.poll() is not None:
            raise TargetError(f"{child.name} exited with {child.proc.returncode} at start:\n{_tail(child.log_path)}")
        if time.monotonic() > deadline:
            raise TargetError(f"{child.name} did not bind a port within 30 s:\n{_tail(child.log_path)}")
        time.sleep(0.02)
    child.port = int(port_file.read_text())
    i = child.argv.index("--port")
    child.argv[i + 1] = str(child.port)  # a restart binds the same port


def _wait_healthy(child: _Child, url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if child.proc is not None and child.proc.poll() is not None:
            raise TargetError(f"{child.name} exited with {child.proc.returncode}:\n{_tail(child.log_path)}")
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TargetError(f"{child.name} at {url} not healthy within {timeout:g} s:\n{_tail(child.log_path)}")
        time.sleep(0.05)


def _death(child: _Child) -> str:
    """``"checkout exited with 75: <its last CRITICAL/ERROR line>"`` (signals named, e.g. SIGKILL)."""
    code = child.proc.returncode if child.proc is not None else None
    how = f"killed by {signal.Signals(-code).name}" if isinstance(code, int) and code < 0 else f"exited with {code}"
    why = ""
    try:
        lines = child.log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for marker in (" CRITICAL ", "Fatal Python error", "error:", " ERROR "):
        found = [ln for ln in lines if marker in ln]
        if found:
            why = found[-1].strip()
            break
    return f"{child.name} {how}" + (f": {why}" if why else "") + f" (log: {child.log_path})"


def _write_secret(path: Path, value: str) -> None:
    """Write a secret readable by this user only (created 0600, replaced atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value)
    os.replace(tmp, path)


def mask(secret: str) -> str:
    """A secret as shown to a person: its first four characters only."""
    return f"{secret[:4]}… ({len(secret)} characters)"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def start_services(
    scenario: str | Path | Scenario | None = None,
    data_dir: str | Path | None = None,
    time_scale: float | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    admin_token: str | None = None,
    ports: tuple[int, int] | None = None,
    *,
    host: str = "127.0.0.1",
    allow_remote: bool = False,
    notify_secret: str | None = None,
    synchronous: str = "normal",
    ready_timeout: float = 30.0,
    faces: tuple[str, ...] | list[str] = ("native",),
    face_options: dict[str, dict[str, Any]] | None = None,
    checkout_psp: str = "native",
) -> Services:
    """Start the mock provider and the reference checkout; return once both answer ``/healthz``.

    ``scenario``: a path, a :class:`Scenario` or None (defaults); ``overrides`` as for ``--set``.
    ``time_scale`` defaults to ``scenario.live.time_scale``. ``data_dir`` defaults to a new temporary
    directory. ``admin_token`` defaults to ``$CHECKOUT_CHAOS_ADMIN_TOKEN``, then the data directory's
    ``admin_token`` file (a restart keeps it), else a fresh random token; ``notify_secret`` likewise.
    ``ports`` = ``(provider, checkout)``; None or 0 picks free ports. ``faces``: the PSP protocols the
    provider serves beside ``native`` (``loadtests.service.psp.faces.FACES``); ``face_options`` per face
    (e.g. ``{"alipay": {"merchant_public_key": "path.pem"}}``). ``checkout_psp``: the protocol the
    reference checkout pays through (``native``, ``stripe``: its Checkout Sessions, or ``alipay``: its
    precreate QR codes, which the provider then serves too; ``loadtests.service.psp_clients``).
    """
    from loadtests.service.psp.faces import FACES
    from loadtests.service.psp_clients import CLIENTS

    if checkout_psp not in CLIENTS:
        raise ConfigError(f"--psp: the reference checkout pays through {', '.join(CLIENTS)}, not {checkout_psp!r}")
    if checkout_psp == "alipay" and (face_options or {}).get("alipay", {}).get("merchant_public_key"):
        raise ConfigError("--psp alipay with --merchant-public-key: the reference checkout signs with the app key "
                          "pair generated in the data directory; drop --merchant-public-key to let it pay through Alipay")
    if checkout_psp != "native" and checkout_psp not in faces:
        faces = (*faces, checkout_psp)
    unknown = [f for f in faces if f not in FACES]
    if unknown:
        raise ConfigError(f"--psp: unknown PSP face {unknown[0]!r} (expected one of {', '.join(FACES)})")
    if host not in LOOPBACK and not allow_remote:
        raise ConfigError(f"--host {host}: binding beyond loopback exposes the admin endpoints; pass --allow-remote")
    if isinstance(overrides, list):
        pairs = dict(parse_override(o) for o in overrides)
    else:
        pairs = dict(overrides or {})
    if isinstance(scenario, Scenario):
        resolved = scenario
    elif scenario is None:
        resolved = default_scenario()
    else:
        resolved = load_scenario(scenario)
    if pairs:
        resolved = resolved.with_overrides(pairs)
    scale = float(time_scale if time_scale is not None else resolved.live.time_scale)
    if scale <= 0:
        raise ConfigError(f"--time-scale: expected a positive number, found {time_scale!r}")
    data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="checkout-chaos-"))
    data.mkdir(parents=True, exist_ok=True)

    run_file = data / "run.json"
    if run_file.exists():
        run = json.loads(run_file.read_text())
        if abs(run["time_scale"] - scale) > 1e-9:
            raise ConfigError(f"--data {data}: its services ran at time scale {run['time_scale']:g}, not {scale:g}; "
                              "use a fresh data directory")
        epoch = float(run["start_epoch"])
    else:
        epoch = time.time()
        run_file.write_text(json.dumps({"start_epoch": epoch, "time_scale": scale}))
    scenario_file = data / "scenario.json"
    scenario_file.write_text(json.dumps(resolved.resolved()))

    token = admin_token or os.environ.get(ADMIN_TOKEN_ENV) or _read(data / "admin_token") or secrets.token_urlsafe(18)
    secret = notify_secret or os.environ.get(NOTIFY_SECRET_ENV) or _read(data / "notify_secret") or secrets.token_hex(32)
    if not token.strip() or not secret.strip():
        raise ConfigError("the admin token and the notify secret must not be empty")
    _write_secret(data / "admin_token", token)
    _write_secret(data / "notify_secret", secret)
    env = {k: v for k, v in os.environ.items() if k not in (ADMIN_TOKEN_ENV, NOTIFY_SECRET_ENV)}
    env.update({ADMIN_TOKEN_ENV + "_FILE": str(data / "admin_token"),
                NOTIFY_SECRET_ENV + "_FILE": str(data / "notify_secret"), "PYTHONUNBUFFERED": "1"})
    pports = ports or (0, 0)

    def argv(name: str, port: int) -> list[str]:
        return [sys.executable, "-m", f"loadtests.service.{name}", "--scenario-json", str(scenario_file),
                "--data", str(data), "--host", host, "--port", str(port), "--port-file", str(data / f"{name}.port"),
                "--start-epoch", repr(epoch), "--time-scale", repr(scale), "--synchronous", synchronous]

    provider_argv = argv("provider", pports[0]) + ["--faces", ",".join(dict.fromkeys(["native", *faces]))]
    if face_options:
        options_file = data / "face_options.json"
        options_file.write_text(json.dumps(face_options))
        provider_argv += ["--face-options", str(options_file)]
    provider = _Child("provider", provider_argv, pports[0], data / "provider.log")
    services = Services("", "", token, secret, data, epoch, scale, resolved, {"provider": provider}, env)
    checkout_argv = argv("checkout", pports[1]) + ["--provider-port-file", str(data / "provider.port")]
    if checkout_psp != "native":
        checkout_argv += ["--psp", checkout_psp]
    checkout = _Child("checkout", checkout_argv, pports[1], data / "checkout.log")
    services._children["checkout"] = checkout
    try:
        _launch(provider, env)  # both start at once; the checkout waits for the provider's port file
        _launch(checkout, env)
        _await_port(provider)
        services.provider_url = url_for(host, provider.port)
        _await_port(checkout)
        services.checkout_url = url_for(host, checkout.port)
        _wait_healthy(provider, services.provider_url, ready_timeout)
        _wait_healthy(checkout, services.checkout_url, ready_timeout)
    except BaseException:
        services.stop()
        raise
    return services
