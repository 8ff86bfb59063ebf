"""Client histories: written by each Locust process, merged with the services' after the run.

Each Locust process appends its buyers' events (``client.*``, ``app.shown``, ``user.*``) to its own
JSON Lines file, ``DIR/client/client-<slot>.jsonl``; no two processes play the same arrival, so no
event is written twice. After the run :func:`merge` puts them together with both services' histories:
the services count scenario time from their own start epoch, the clients from the load epoch, so the
services' events are *rebased* (``t`` and ``expires_at`` shifted by the offset between the two epochs)
onto the load's clock, on which the scenario's profile, fault windows, warm-up and horizon are written.
Events after the end of observation are dropped; ``run.start``/``run.end`` markers frame the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from loadtests.plan import LiveWindow

_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

try:  # orjson writes the same compact JSON (non-ASCII kept) several times faster: one line per event
    import orjson as _orjson

    _NEWLINE = _orjson.OPT_APPEND_NEWLINE | _orjson.OPT_NON_STR_KEYS

    def _line(event: dict[str, Any]) -> bytes:
        """One event as a JSON Lines line (UTF-8 bytes, newline included)."""
        try:
            return _orjson.dumps(event, option=_NEWLINE)
        except TypeError:  # what orjson refuses (an integer beyond 64 bits): the standard library's text
            return (_json_dumps(event) + "\n").encode()
except ImportError:  # pragma: no cover - orjson is a dependency; the standard library still works
    def _line(event: dict[str, Any]) -> bytes:
        return (_json_dumps(event) + "\n").encode()


def _dumps(event: dict[str, Any]) -> str:
    """One event as compact JSON text (no spaces, non-ASCII kept), without the newline."""
    return _line(event)[:-1].decode()
CLIENT_GLOB = "client-*.jsonl"
# Fields holding a scenario time (besides ``t``) that must move with a rebase (docs/events.md).
TIME_FIELDS = ("expires_at",)


class HistoryWriter:
    """Buffered JSON Lines writer of one process (``emit`` is a list append; ``flush`` writes)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # UTF-8 lines
        self._buf: list[dict[str, Any]] = []
        self.written = 0

    def emit(self, event: dict[str, Any]) -> None:
        self._buf.append(event)

    def flush(self) -> None:
        if not self._buf:
            return
        buf, self._buf = self._buf, []
        self._fh.write(b"".join(map(_line, buf)))
        self._fh.flush()
        self.written += len(buf)

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()


def read_client_file(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events of one client file. A torn last line (a process killed mid-write) is skipped."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return
            if line.strip():
                yield json.loads(line)


def rebase(events: Iterable[dict[str, Any]], offset: float) -> Iterator[dict[str, Any]]:
    """The same events ``offset`` scenario seconds earlier (``t`` and every absolute-time field)."""
    for e in events:
        if offset:
            e["t"] = round(e["t"] - offset, 6)
            for name in TIME_FIELDS:
                v = e.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    e[name] = round(v - offset, 6)
        yield e


@dataclass
class MergeInfo:
    events: int = 0
    service_events: int = 0
    client_events: int = 0
    client_files: int = 0
    after_end: int = 0  # dropped: after the end of observation
    duplicate_client_events: int = 0  # must stay 0: each arrival is played by one process
    orders_seen_by_clients: int = 0
    per_file: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def merge(service_events: Iterable[dict[str, Any]], client_files: list[Path], offset: float, window: LiveWindow,
          seed: int | None, extra_events: Iterable[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]], MergeInfo]:
    """One history on the load's clock, ordered by ``t``: services' events rebased by ``offset``, every
    client file, ``extra_events`` (already on the load's clock), framed by ``run.start``/``run.end``."""
    info = MergeInfo(client_files=len(client_files))
    end = window.end
    out: list[dict[str, Any]] = []
    for e in rebase(service_events, offset):
        if e["t"] > end:
            info.after_end += 1
            continue
        out.append(e)
        info.service_events += 1
    seen: set[tuple] = set()
    orders: set[str] = set()
    for path in client_files:
        n = 0
        for e in read_client_file(path):
            key = (e.get("order"), e["type"], e.get("call"), e.get("screen"), e["t"])
            if key in seen:
                info.duplicate_client_events += 1
            seen.add(key)
            if e["t"] > end:
                info.after_end += 1
                continue
            out.append(e)
            orders.add(e.get("order"))
            n += 1
        info.per_file[path.name] = n
        info.client_events += n
    for e in extra_events:
        if e["t"] <= end:
            out.append(e)
    info.orders_seen_by_clients = len(orders)
    out.sort(key=lambda e: e["t"])
    out.insert(0, {"t": 0.0, "type": "run.start", "actor": "run", "warmup": window.warmup, "horizon": window.horizon,
                   "end": end, "seed": seed, "time_scale": window.time_scale})
    out.append({"t": end, "type": "run.end", "actor": "run"})
    info.events = len(out)
    return out, info


def write_jsonl(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(_json_dumps(e) + "\n")
            n += 1
    return n
