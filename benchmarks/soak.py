"""Soak: the live services under steady load through crashes and outages (a benchmark, run on purpose).

    .venv/bin/python benchmarks/soak.py [--duration 10m] [--buyers 4] [--outage 30s] [--time-scale 60] [--data DIR]

Starts the mock provider and the reference checkout on loopback and drives them with ``--buyers``
threads, each one buyer after another: create an order, start payment, pay at the provider; one paid
order in three is then cancelled (a refund), one order in ten is never paid (the close job closes it).
Along the way, at fixed fractions of ``--duration``:

* 20 %: ``kill -9`` of the provider, restarted at once;   35 %: ``kill -9`` of the checkout, restarted;
* 50 %: the provider is stopped (SIGSTOP) for ``--outage``; 70 %: the checkout likewise.

Then the load stops and the services drain (refund retries, notification retries) until nothing is
outstanding or ``--drain`` passes. Reported, from what the services acknowledged and what their
histories hold:

* ``payments_lost``: payments the provider acknowledged (``succeeded``) with no charge in its ledger, or
  whose order the checkout never recorded as paid; ``payments_doubled``: trades charged more than once,
  orders holding more than one charge — both must be 0;
* ``refunds_outstanding``: orders still ``refund_pending`` or ``refund_failed`` at the end, and
  cancelled paid orders whose trade is not refunded at the provider — must be 0;
* the ledger's balance, peak RSS and peak / final ``-wal`` size per service.

The last line is one JSON object; ``ratio`` is the share of acknowledged payments neither lost nor
doubled (the ratio it is judged by: 1.0); ``ok`` is true when the three must-be-zero figures are 0 and the
ledger balances. Safe close policy (``query_then_close``) and a 2 h order TTL, so that an anomaly the
harness exists to show (a naive close racing a late notification) is not counted as the services' own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOAK = {
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "bank.risk_hold_probability": 0.0,
    "bank.response_loss": 0.0,
    "gateway.notify_loss": 0.0,
    "order_service.close_policy": "query_then_close",
    "order_service.late_payment": "auto_refund",
    "order_service.order_ttl": "2h",
}
SERVICES = ("provider", "checkout")


def _proc_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Monitor(threading.Thread):
    """Samples each service's RSS and WAL size once a second (peaks survive restarts)."""

    def __init__(self, services) -> None:
        super().__init__(daemon=True)
        self.s = services
        self.peak_rss = {n: 0 for n in SERVICES}
        self.peak_wal = {n: 0 for n in SERVICES}
        self.stop = threading.Event()

    def sample(self) -> None:
        for name in SERVICES:
            pid = self.s.pid(name)
            if pid and self.s.alive(name):
                self.peak_rss[name] = max(self.peak_rss[name], _proc_kib(pid, "VmHWM"), _proc_kib(pid, "VmRSS"))
            self.peak_wal[name] = max(self.peak_wal[name], wal_size(self.s, name))

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.sample()


def wal_size(s, name: str) -> int:
    try:
        return (s.data_dir / f"{name}.db-wal").stat().st_size
    except OSError:
        return 0


class Buyers:
    """``n`` threads of buyers; records only what a service acknowledged with a 2xx."""

    def __init__(self, s, n: int, seed: int = 16) -> None:
        self.s, self.n, self.seed = s, n, seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.orders = 0
        self.acked: dict[str, tuple[str, int]] = {}  # trade -> (order, amount): the provider said succeeded
        self.cancelled: dict[str, str] = {}  # order -> trade: a paid order the checkout accepted to refund
        self.errors: Counter = Counter()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self, i: int) -> None:
        import httpx

        rng = random.Random(f"{self.seed}:{i}")
        client = httpx.Client(timeout=5)
        c, p = self.s.checkout_url, self.s.provider_url
        k = 0
        while not self.stop.is_set():
            k += 1
            try:
                amount = rng.choice([1, 990, 4200, 100_000])
                r = client.post(c + "/orders", json={"user": f"b{i}x{k}", "amount": amount})
                if r.status_code != 201:
                    self.errors[f"create {r.status_code}"] += 1
                    continue
                order = r.json()["order"]
                with self.lock:
                    self.orders += 1
                if rng.random() < 0.1:
                    continue  # never paid: the close job closes it
                r = client.post(f"{c}/orders/{order}/pay")
                if r.status_code != 200:
                    self.errors[f"start {r.status_code}"] += 1
                    continue
                trade = r.json()["trade"]
                r = client.post(f"{p}/trades/{trade}/pay")
                if r.status_code != 200 or r.json().get("state") != "succeeded":
                    self.errors[f"pay {r.status_code}"] += 1
                    continue
                with self.lock:
                    self.acked[trade] = (order, amount)
                if rng.random() < 1 / 3:
                    r = client.post(f"{c}/orders/{order}/cancel")
                    if r.status_code == 200 and r.json().get("state") in ("refund_pending", "refund_failed", "refunded"):
                        with self.lock:
                            self.cancelled[order] = trade
                    else:
                        self.errors[f"cancel {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                self.errors[exc.__class__.__name__] += 1
                time.sleep(0.05)
        client.close()


def _parse_seconds(text: str) -> float:
    from sim.scenario import parse_duration

    return parse_duration(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", default="10m", help="wall time of the load (default 10m)")
    parser.add_argument("--outage", default="30s", help="how long each service is stopped (default 30s)")
    parser.add_argument("--drain", default="3m", help="at most this long for retries to finish after the load")
    parser.add_argument("--buyers", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=60.0)
    parser.add_argument("--data", help="data directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    try:
        duration, outage, drain = (_parse_seconds(v) for v in (args.duration, args.outage, args.drain))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from loadtests.service.runner import start_services

    s = start_services(None, args.data, args.time_scale, SOAK)
    print(f"services up: provider {s.provider_url}, checkout {s.checkout_url}, data {s.data_dir}", flush=True)
    monitor, buyers = Monitor(s), Buyers(s, args.buyers)
    faults: list[dict] = []
    t0 = time.monotonic()

    def at(fraction: float) -> None:
        time.sleep(max(0.0, t0 + fraction * duration - time.monotonic()))

    def log(what: str, which: str) -> None:
        faults.append({"t": round(time.monotonic() - t0, 1), "fault": what, "service": which})
        print(f"{faults[-1]['t']:7.1f}s  {what} {which}", flush=True)

    try:
        monitor.start()
        buyers.start()
        for fraction, which in ((0.2, "provider"), (0.35, "checkout")):
            at(fraction)
            monitor.sample()
            log("kill -9", which)
            s.kill(which)
            s.restart(which)
        for fraction, which in ((0.5, "provider"), (0.7, "checkout")):
            at(fraction)
            log(f"stopped for {outage:g}s", which)
            os.kill(s.pid(which), signal.SIGSTOP)
            time.sleep(outage)
            os.kill(s.pid(which), signal.SIGCONT)
            log("resumed", which)
        at(1.0)
        buyers.join()
        print(f"load done: {buyers.orders} orders, {len(buyers.acked)} acknowledged payments, "
              f"{len(buyers.cancelled)} refunds requested; draining ...", flush=True)
        s.check_alive()
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            states = s.admin("checkout", "GET", "/admin/stats").json()["orders"]
            if not states.get("refund_pending") and not states.get("refund_failed") \
                    and not s.admin("provider", "GET", "/admin/stats").json().get("notifications", {}).get("pending"):
                break
            time.sleep(1.0)
        time.sleep(2.0)  # the last notifications and refunds land
        s.check_alive()
        monitor.sample()
        report = judge(s, buyers)
    finally:
        monitor.stop.set()
        buyers.stop.set()
        final_wal = {n: wal_size(s, n) for n in SERVICES}
        s.stop()
    mib = lambda b: round(b / (1 << 20), 1)  # noqa: E731
    report.update({
        "duration_s": duration, "outage_s": outage, "buyers": args.buyers, "time_scale": args.time_scale,
        "orders": buyers.orders, "client_errors": dict(buyers.errors.most_common(8)), "faults": faults,
        "peak_rss_mib": {n: round(monitor.peak_rss[n] / 1024, 1) for n in SERVICES},
        "peak_wal_mib": {n: mib(monitor.peak_wal[n]) for n in SERVICES},
        "final_wal_mib": {n: mib(final_wal[n]) for n in SERVICES},
    })
    # the ratio it is judged by: acknowledged payments that came through whole (target 1.0)
    acked = report["acked_payments"]
    report["ratio"] = round((acked - report["payments_lost"] - report["payments_doubled"]) / acked, 6) if acked else None
    report["ok"] = (report["payments_lost"] == 0 and report["payments_doubled"] == 0
                    and report["refunds_outstanding"] == 0 and report["ledger_balanced"])
    for key in ("acked_payments", "payments_lost", "payments_doubled", "refunds_requested", "refunds_outstanding",
                "ledger_balanced", "peak_rss_mib", "peak_wal_mib"):
        print(f"{key:20} {report[key]}")
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


def judge(s, buyers: Buyers) -> dict:
    """Compare what was acknowledged with the ledger, the order states and the provider's trades."""
    import httpx

    history = s.history()
    charges: Counter = Counter()
    net: dict[str, Counter] = {}
    for e in history:
        if e["type"] == "ledger.txn" and e.get("trade") and e.get("kind") in ("charge", "refund"):
            user = sum(p["amount"] for p in e["postings"] if p["account"].startswith("user:"))
            if e["kind"] == "charge":
                charges[e["trade"]] += 1
            net.setdefault(e["order"], Counter())[e["trade"]] -= user
    paid_events = {e["order"] for e in history if e["type"] in ("order.paid", "order.reopened")}
    lost = [t for t, (o, _) in buyers.acked.items() if charges[t] == 0 or o not in paid_events]
    doubled = [t for t, n in charges.items() if n > 1]
    doubled += [o for o, per in net.items() if sum(1 for v in per.values() if v > 0) > 1]
    client = httpx.Client(timeout=10)
    outstanding = 0
    states = s.admin("checkout", "GET", "/admin/stats").json()["orders"]
    outstanding += states.get("refund_pending", 0) + states.get("refund_failed", 0)
    for order, trade in buyers.cancelled.items():
        if client.get(f"{s.provider_url}/trades/{trade}").json().get("state") != "refunded":
            outstanding += 1
    client.close()
    ledger = s.admin("provider", "GET", "/admin/ledger").json()
    return {"acked_payments": len(buyers.acked), "payments_lost": len(lost), "payments_doubled": len(doubled),
            "lost_examples": lost[:5], "doubled_examples": doubled[:5],
            "refunds_requested": len(buyers.cancelled), "refunds_outstanding": outstanding,
            "order_states": states, "ledger_balanced": bool(ledger.get("balanced"))}


if __name__ == "__main__":
    sys.exit(main())
