"""``checkout-chaos load-worker --master-host H``: one Locust worker of a live run whose master runs elsewhere.

Run it on each load machine once ``checkout-chaos load ... --master --expect-workers N`` is waiting. The
worker needs nothing but the master's address: the plan (scenario, URLs, seed, its share of the
arrivals) comes from the master, and the buyers' history goes back to it, over Locust's own message
channel — no shared file system. Locust runs in its own process; this command waits for it and exits
with its exit code (0 when the master ended the run).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

EPILOG = """\
examples:
  checkout-chaos load-worker --master-host 10.0.0.5
  checkout-chaos load-worker --master-host 127.0.0.1 --master-port 5557 --processes 2

exit codes: 0 the master ended the run; 2 a usage error; otherwise Locust's own.
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Join a live run as a Locust worker: connect to the master started by 'checkout-chaos load "
                     "--master --expect-workers N', receive the plan, play this worker's share of the arrivals "
                     "against the URLs the plan names, send the buyers' history back to the master.")
    p.epilog = EPILOG
    p.add_argument("--master-host", required=True, metavar="H", help="address of the machine running 'load --master'")
    p.add_argument("--master-port", type=int, default=5557, metavar="P", help="its --master-port (default 5557)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="Locust worker processes to start here (each counts towards --expect-workers; default 1)")


def run(args: argparse.Namespace) -> int:
    from sim.errors import ConfigError

    from loadtests.live import worker_argv
    from loadtests.plan import PLAN_ENV, ROLE_ENV

    if not 1 <= args.master_port <= 65535:
        raise ConfigError(f"--master-port: expected a port between 1 and 65535, found {args.master_port}")
    if args.processes < 1:
        raise ConfigError(f"--processes: expected 1 or more, found {args.processes}")
    env = {k: v for k, v in os.environ.items() if k != PLAN_ENV} | {ROLE_ENV: "worker", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(worker_argv(args.master_host, args.master_port), env=env, stdin=subprocess.DEVNULL,
                              start_new_session=True) for _ in range(args.processes)]
    print(f"load-worker: {len(procs)} Locust worker process(es) joining {args.master_host}:{args.master_port} "
          f"(pids {', '.join(str(p.pid) for p in procs)})", file=sys.stderr, flush=True)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        return 130
    return next((c for c in codes if c), 0)
