"""Protocol faces of the mock provider, and the registry that names them.

A face maps one PSP's wire protocol onto :class:`~loadtests.service.psp.core.ProviderCore` and the
core's outcomes back onto that protocol. It never holds money or trade state (it may keep protocol
configuration in tables of its own: ``schema``). To add a face, write a module with a :class:`Face`
subclass and add one line to :data:`FACES`; no other face changes.

A face provides:

* ``router()`` — the merchant's side (the PSP's API) and the buyer's side (what the buyer's wallet
  app or browser does: open the cashier, scan, confirm) as FastAPI routes;
* ``notification(note)`` — the body and headers of one notification attempt, and
  ``acknowledged(status, body)`` — whether the merchant's answer acknowledges it;
* ``notify_urls(row, kind)`` — where a notification of ``kind`` about trade ``row`` goes;
* ``merchant_config()`` — what a merchant puts into its configuration to use this face (printed by
  ``checkout-chaos serve --psp NAME`` and documented in ``docs/psp.md``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

from fastapi import APIRouter

# name -> "module:Class". One line per face.
FACES: dict[str, str] = {
    "native": "loadtests.service.psp.faces.native:NativeFace",
    "alipay": "loadtests.service.psp.faces.alipay:AlipayFace",
    "stripe": "loadtests.service.psp.faces.stripe:StripeFace",
    "wechat": "loadtests.service.psp.faces.wechat:WechatFace",
}


class Face:
    """Base class of a protocol face."""

    name: ClassVar[str] = ""
    schema: ClassVar[str] = ""  # extra tables (protocol configuration only, never money or trade state)

    def __init__(self, core: Any, data_dir: Path, options: dict[str, Any] | None = None) -> None:
        self.core = core
        self.data_dir = data_dir
        self.options = options or {}

    def setup(self) -> None:
        """Create or load keys (in ``data_dir``); runs in the provider process before it serves."""

    def router(self) -> APIRouter:
        raise NotImplementedError

    def notification(self, note: Any) -> tuple[bytes, dict[str, str]]:
        raise NotImplementedError

    def acknowledged(self, status: int, body: bytes) -> bool:
        return 200 <= status < 300

    def notify_gaps(self, schedule: Any) -> tuple[float, ...]:
        """The gaps between attempts of this face's notifications, given the scenario's
        ``gateway.notify_schedule`` (a ``Schedule``); by default the scenario's."""
        return schedule.gaps

    def notify_urls(self, row: Any, kind: str) -> list[Any]:
        return [row["notify_url"]] if row["notify_url"] and kind == "trade.succeeded" else []

    def merchant_config(self, base_url: str) -> dict[str, Any]:
        return {}


def face_class(name: str) -> type[Face]:
    try:
        target = FACES[name]
    except KeyError:
        raise ValueError(f"unknown PSP face {name!r} (expected one of {', '.join(sorted(FACES))})") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def load_faces(core: Any, names: list[str] | tuple[str, ...], data_dir: Path,
               options: dict[str, dict[str, Any]] | None = None) -> dict[str, Face]:
    """The faces ``names`` (``native`` always included: the reference checkout speaks it), set up."""
    faces: dict[str, Face] = {}
    for name in dict.fromkeys(["native", *names]):
        face = face_class(name)(core, data_dir, (options or {}).get(name))
        face.setup()
        faces[name] = face
    return faces
