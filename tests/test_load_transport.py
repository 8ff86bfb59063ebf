"""The Locust process's transport (``loadtests/locustfile.py: GeventTransport``): the lean path to the harness's
own services classifies answers and failures as the session path does, and reports every call to Locust's
request statistics. Run in a child process: importing Locust patches the standard library with gevent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, os, socket, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from gevent.pywsgi import WSGIServer
from locust import events
from locust.contrib.fasthttp import FastHttpSession
from locust.env import Environment
import loadtests.locustfile as lf

def app(environ, start):
    path, body = environ["PATH_INFO"], environ["wsgi.input"].read()
    if path == "/api/v1/ok":  # a service under a base path: the whole path is on the request line
        start("200 OK", [("Content-Type", "application/json")])
        return [b'{"under": true}']
    if path == "/slow":
        gevent.sleep(2)
    echo = json.loads(body or b"null") if environ.get("CONTENT_TYPE") == "application/json" else body.decode()
    status, answer = {"/ok": ("201 Created", {"echo": echo,
                                              "type": environ.get("CONTENT_TYPE")}),
                      "/refused": ("409 Conflict", {"code": "ORDER_NOT_PAYABLE"}),
                      "/malformed": ("422 Unprocessable Entity", {"error": "x"}),
                      "/boom": ("503 Service Unavailable", {"error": "busy"})}.get(path, ("200 OK", {}))
    start(status, [("Content-Type", "application/json")])
    return [json.dumps(answer).encode()]

server = WSGIServer(("127.0.0.1", 0), app, log=None)
server.start()
base = f"http://127.0.0.1:{server.server_port}"
with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0)); closed = f"http://127.0.0.1:{s.getsockname()[1]}"
env = Environment(events=events)
env.create_local_runner()
session = FastHttpSession(base, request_event=env.events.request, user=None)
lean = lf.GeventTransport(session, env.events.request, (base, closed), 8, 2.0, 10.0)
out = {}
for key, url, body in (("ok", base + "/ok", {"a": "买家"}), ("get", base + "/plain", None),
                       ("refused", base + "/refused", {}), ("malformed", base + "/malformed", {}),
                       ("boom", base + "/boom", {}), ("slow", base + "/slow", {}), ("closed", closed + "/x", {})):
    r = lean.send("POST", url, body, 0.5, key)
    out[key] = [r.kind, r.status, r.body, r.error]
r = lean.send("POST", base + "/ok", "a=1", 1.0, "form", {"Content-Type": "application/x-www-form-urlencoded"})
out["form"] = [r.kind, r.status, r.body, None]
under = lf.GeventTransport(session, env.events.request, (base + "/api/v1",), 8, 2.0, 10.0)
r = under.send("POST", base + "/api/v1/ok", {"b": 1}, 1.0, "under a path")
out["under"] = [r.kind, r.status, r.body, None]
out["stats"] = {name: [e.num_requests, e.num_failures] for (name, _), e in env.stats.entries.items()}
print(json.dumps(out))
'''


def test_lean_calls_are_classified_and_reported_to_locust() -> None:
    env = {**os.environ, "CHECKOUT_CHAOS_ROLE": "worker", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"][:3] == ["ok", 201, {"echo": {"a": "买家"}, "type": "application/json"}]
    assert out["get"][:2] == ["ok", 200]
    assert out["refused"][:3] == ["refused", 409, {"code": "ORDER_NOT_PAYABLE"}]
    assert out["malformed"][:2] == ["refused", 422]
    assert out["boom"][:2] == ["server_error", 503]
    assert out["slow"][0] == "timeout" and out["slow"][1] == 0
    assert out["closed"][0] == "unreachable" and "ConnectionRefusedError" in out["closed"][3]
    assert out["form"][:3] == ["ok", 201, {"echo": "a=1", "type": "application/x-www-form-urlencoded"}]  # a form (a str body with its headers) goes through the session
    assert out["under"][:3] == ["ok", 200, {"under": True}]
    stats = out["stats"]
    # every call in Locust's statistics; failures: 5xx, timeouts, refused connections and malformed requests
    assert stats == {"ok": [1, 0], "get": [1, 0], "refused": [1, 0], "malformed": [1, 1], "boom": [1, 1],
                     "slow": [1, 1], "closed": [1, 1], "form": [1, 0], "under a path": [1, 0]}
