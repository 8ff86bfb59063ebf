"""How the reference checkout reaches its payment provider.

By default (``native``) the checkout speaks the mock provider's native API itself
(``Checkout.native_call``) and nothing here is used. A *PSP client* lets the same checkout pay through
another provider's wire protocol: it answers the checkout's native requests — ``POST /trades``,
``GET /trades/{t}``, ``POST /trades/{t}/close``, ``POST /trades/{t}/refund`` — by making that provider's
own calls, and returns what the native API would have answered (status, JSON), so every decision in
the checkout (``sim/domain/policies.py``) stays the same. It also mounts the provider's webhook route on
the checkout (:meth:`PspClient.router`) and turns each verified webhook into the native notification
the checkout handles (``Checkout.on_notification``). Paths it does not translate (BNPL agreements) go
to the native API, which the mock provider always serves.
"""

from __future__ import annotations

from typing import Any, Protocol

CLIENTS = ("native", "stripe")


class Reply:
    """An answer shaped like the native API's (what ``Checkout._call`` returns)."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        self.status_code = status_code
        self._body = body

    def json(self) -> dict[str, Any]:
        return self._body

    @property
    def text(self) -> str:
        import json

        return json.dumps(self._body)


class PspClient(Protocol):
    """What the checkout calls when it pays through another PSP's protocol."""

    async def call(self, method: str, path: str, body: dict | None) -> Any:
        """One native request, answered through the PSP (``Reply`` or the native answer); raises the
        checkout's ``ProviderUnavailable`` when the PSP did not answer or answered 5xx."""

    def router(self) -> Any:
        """The PSP's webhook route(s), mounted on the checkout's app."""

    async def aclose(self) -> None:
        """Close connections."""


def make_client(name: str, checkout: Any) -> PspClient | None:
    """The client for ``name`` (None for ``native``: the checkout's own calls)."""
    if name == "native":
        return None
    if name == "stripe":
        from loadtests.service.psp_clients.stripe import StripeClient

        return StripeClient(checkout)
    raise ValueError(f"--psp: expected one of {', '.join(CLIENTS)}, found {name!r}")
