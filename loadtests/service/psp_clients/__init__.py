"""How the reference checkout reaches its payment provider.

By default (``native``) the checkout speaks the mock provider's native API itself
(``Checkout.native_call``) and nothing here is used. A *PSP client* lets the same checkout pay through
another provider's wire protocol: it answers the checkout's native requests — ``POST /trades``,
``GET /trades/{t}``, ``POST /trades/{t}/close``, ``POST /trades/{t}/refund`` — by making that provider's
own calls, and returns what the native API would have answered (status, JSON), so every decision in
the checkout (``sim/domain/policies.py``) stays the same. It also mounts the provider's webhook route on
the checkout (:meth:`PspClient.router`) and turns each verified webhook into the native notification
the checkout handles (``Checkout.on_notification``): ``stripe.py`` (Checkout Sessions, webhooks) and
``alipay.py`` (``alipay.trade.precreate`` QR codes, RSA2-signed gateway calls and notifications). Paths it does not translate (BNPL agreements) go
to the native API, which the mock provider always serves.
"""

from __future__ import annotations

from typing import Any, Protocol

CLIENTS = ("native", "stripe", "alipay")
# What the reference checkout's start-payment answer hands the buyer when it pays through a client, as an
# adapter hand-off (``start_payment.handoff.<face>``, docs/live.md): the load's buyers complete it at the
# face's buyer side. Stripe's ``pay_url`` is a Checkout URL the native buyer can POST to; Alipay's is the
# precreate QR code, which the buyer scans and then confirms in the wallet.
HANDOFFS: dict[str, dict[str, str]] = {"alipay": {"kind": "qr_code", "field": "pay_url"}}


def checkout_psp(faces: tuple[str, ...] | list[str], merchant_key_given: bool = False) -> str:
    """The protocol the reference checkout pays through when the provider serves ``faces``: Stripe if it
    is served, else Alipay — unless the merchant brought its own app key pair (``--merchant-public-key``),
    whose private half the checkout does not have — else the native API."""
    if "stripe" in faces:
        return "stripe"
    if "alipay" in faces and not merchant_key_given:
        return "alipay"
    return "native"


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
    if name == "alipay":
        from loadtests.service.psp_clients.alipay import AlipayClient

        return AlipayClient(checkout)
    raise ValueError(f"--psp: expected one of {', '.join(CLIENTS)}, found {name!r}")
