"""``checkout-chaos serve``: start the mock payment provider and the reference checkout.

Both run as their own processes on loopback until Ctrl-C. Module-level imports stay light: the
services (FastAPI, uvicorn) are imported only by the child processes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

EPILOG = """\
examples:
  checkout-chaos serve
  checkout-chaos serve --scenario scenarios/mall_pattern.toml --time-scale 120 --data run1/
  checkout-chaos serve --set order_service.close_policy=query_then_close --provider-port 8801 --checkout-port 8802

Faults can be changed while it runs:
  curl -X PUT -H "Authorization: Bearer $TOKEN" -d '{"set": {"gateway.service_time": "2s"}}' \\
       -H 'Content-Type: application/json' http://127.0.0.1:8801/admin/faults
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--scenario", metavar="FILE", help="scenario TOML (default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a scenario key, e.g. --set order_service.order_ttl=15m (repeatable)")
    parser.add_argument("--time-scale", type=float, metavar="K",
                        help="scenario seconds per wall second (default: the scenario's live.time_scale)")
    parser.add_argument("--data", metavar="DIR", help="data directory for the SQLite databases and logs "
                        "(default: a new temporary directory); reusing one resumes its timeline")
    parser.add_argument("--provider-port", type=int, default=0, metavar="P", help="default: a free port")
    parser.add_argument("--checkout-port", type=int, default=0, metavar="C", help="default: a free port")
    parser.add_argument("--admin-token", metavar="T",
                        help="admin bearer token (default: $CHECKOUT_CHAOS_ADMIN_TOKEN, else generated and printed)")
    parser.add_argument("--notify-secret", metavar="S",
                        help="HMAC secret of notifications (default: $CHECKOUT_CHAOS_NOTIFY_SECRET, else generated)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    parser.add_argument("--synchronous", choices=("normal", "full"), default="normal",
                        help="SQLite durability: normal survives a process crash, full also a power loss")


def run(args: argparse.Namespace) -> int:
    from sim.errors import ConfigError
    from loadtests.service.runner import start_services

    for name in ("provider_port", "checkout_port"):
        port = getattr(args, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a port between 0 and 65535, found {port}")
    if args.time_scale is not None and args.time_scale <= 0:
        raise ConfigError(f"--time-scale: expected a positive number, found {args.time_scale:g}")
    print("starting the mock provider and the reference checkout ...", file=sys.stderr, flush=True)
    services = start_services(args.scenario, args.data, args.time_scale, args.overrides, args.admin_token,
                              (args.provider_port, args.checkout_port), host=args.host,
                              allow_remote=args.allow_remote, notify_secret=args.notify_secret,
                              synchronous=args.synchronous)
    with services:
        print(f"provider   {services.provider_url}   (OpenAPI: {services.provider_url}/docs)")
        print(f"checkout   {services.checkout_url}   (OpenAPI: {services.checkout_url}/docs)")
        print(f"admin token  {services.admin_token}")
        print(f"notify secret  {services.notify_secret}")
        print(f"data       {services.data_dir}")
        print(f"time scale {services.time_scale:g} scenario seconds per wall second; Ctrl-C stops both", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops both services as Ctrl-C does
        try:
            while all(services.alive(n) for n in ("provider", "checkout")):
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping ...", file=sys.stderr)
            return 0
        dead = [n for n in ("provider", "checkout") if not services.alive(n)]
        print(f"error: {', '.join(dead)} exited; see {services.data_dir}/*.log", file=sys.stderr)
        return 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
