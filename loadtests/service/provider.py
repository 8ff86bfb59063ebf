"""``python -m loadtests.service.provider``: the mock payment provider process.

The provider is one core (``loadtests.service.psp.core``: trades, bank, BNPL, ledger, notification
outbox) with protocol faces (``loadtests.service.psp.faces``: native, Alipay, ...); see
``loadtests/service/psp/__init__.py``.
"""

from __future__ import annotations

from loadtests.service.psp.app import create_app, main  # noqa: F401
from loadtests.service.psp.core import ProviderCore as Provider  # noqa: F401  (older name)

if __name__ == "__main__":
    main()
