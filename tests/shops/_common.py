"""What the fixture shops have in common, none of it about a PSP: the environment they read, a SQLite
table of orders with an expiry, the order routes (create, read, cancel), the "is it still payable"
check a pay route starts with, and the close job that hands each expired unpaid order to the shop's own
``close_one``. Each shop (``alipay_shop.py``, ``wechat_shop.py``, ``stripe_shop.py``) adds its pay
route, its PSP's notification handler and its close policy.

Environment: ``SHOP_CLOSE`` (``naive`` | ``safe``), ``SHOP_ORDER_TTL`` (wall seconds),
``SHOP_CLOSE_EVERY`` (seconds between close-job runs), ``SHOP_DB``, ``SHOP_PORT``, ``SHOP_PUBLIC_URL``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Callable

from flask import Flask, abort, jsonify, make_response, request


class Shop:
    """One shop's Flask app, its orders table and its close job.

    ``columns``: the table's columns from ``expires`` on (``"expires REAL, trade_no TEXT"``: the PSP's
    references); ``synchronous_normal``: ``PRAGMA synchronous=NORMAL`` on every connection. The other
    keywords are the defaults of the environment variables.
    """

    def __init__(self, name: str, columns: str, *, order_ttl: str = "900", close_every: str = "10",
                 public_url: str = "http://127.0.0.1:9000", synchronous_normal: bool = True) -> None:
        self.close = os.environ.get("SHOP_CLOSE", "naive")
        self.order_ttl = float(os.environ.get("SHOP_ORDER_TTL", order_ttl))
        self.close_every = float(os.environ.get("SHOP_CLOSE_EVERY", close_every))
        self.db_path = os.environ.get("SHOP_DB", "shop.db")
        self.public_url = os.environ.get("SHOP_PUBLIC_URL", public_url)
        self.columns = columns
        self.synchronous_normal = synchronous_normal
        self.app = Flask(name)
        self.lock = threading.Lock()  # one writer at a time (SQLite), and the shop's per-order critical sections
        self.before_create: Callable[[], Any] = lambda: None
        self.app.post("/orders")(self._create_order)
        self.app.get("/orders/<order>")(self._status)

    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        if self.synchronous_normal:
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: durable enough for a shop, no fsync per commit
        return conn

    def init(self) -> None:
        with self.db() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, usr TEXT, amount INTEGER, state TEXT,"
                         f" {self.columns})")

    def row(self, order: str, columns: str = "*") -> sqlite3.Row | None:
        with self.db() as conn:
            return conn.execute(f"SELECT {columns} FROM orders WHERE id = ?", (order,)).fetchone()

    def set_state(self, order: str, state: str, where: str = "awaiting_payment") -> bool:
        with self.lock, self.db() as conn:
            return conn.execute("UPDATE orders SET state = ? WHERE id = ? AND state = ?",
                                (state, order, where)).rowcount > 0

    def payable(self, order: str) -> sqlite3.Row:
        """The order's row if it can still be paid; else the pay route answers 404 or 409 (``abort``)."""
        row = self.row(order)
        if row is None:
            abort(404)
        if row["state"] != "awaiting_payment":
            abort(make_response(jsonify(code="ORDER_NOT_PAYABLE", state=row["state"]), 409))
        return row

    def _create_order(self):
        body = request.get_json(force=True)
        self.before_create()
        with self.lock, self.db() as conn:
            conn.execute("INSERT OR IGNORE INTO orders (id, usr, amount, state, expires) VALUES (?, ?, ?, 'awaiting_payment', ?)",
                         (body["order"], body["user"], int(body["amount"]), time.time() + self.order_ttl))
        return jsonify(order=body["order"], state="awaiting_payment"), 201

    def _status(self, order: str):
        row = self.row(order, "state")
        if row is None:
            abort(404)
        return jsonify(order=order, state=row["state"])

    def cancel_route(self, close_one: Callable[[str], None]) -> None:
        """``POST /orders/<order>/cancel``: an unpaid order is closed as the close job closes it."""
        def cancel(order: str):
            row = self.row(order, "state")
            if row is None:
                abort(404)
            if row["state"] == "awaiting_payment":
                close_one(order)
            return jsonify(order=order, state=self.row(order, "state")["state"])

        self.app.post("/orders/<order>/cancel")(cancel)

    def close_job(self, columns: str, close_one: Callable[[sqlite3.Row], None]) -> None:
        """Every ``SHOP_CLOSE_EVERY`` seconds: ``close_one(row)`` (``row`` holding ``columns``) for each expired
        unpaid order."""
        while True:
            time.sleep(self.close_every)
            with self.db() as conn:
                due = conn.execute(f"SELECT {columns} FROM orders WHERE state = 'awaiting_payment' AND expires <= ?",
                                   (time.time(),)).fetchall()
            for row in due:
                try:
                    close_one(row)
                except Exception as exc:  # a close that failed is tried again at the next run
                    self.app.logger.warning("close of %s failed: %s", row["id"], exc)

    def serve(self, columns: str, close_one: Callable[[sqlite3.Row], None]) -> None:
        """Create the table, start the close job, serve on 127.0.0.1:``SHOP_PORT``."""
        self.init()
        threading.Thread(target=self.close_job, args=(columns, close_one), daemon=True).start()
        self.app.run(host="127.0.0.1", port=int(os.environ.get("SHOP_PORT", "9000")), threaded=True)
