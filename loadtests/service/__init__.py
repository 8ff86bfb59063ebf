"""The live system: a mock payment provider and a reference checkout, real HTTP services with a ledger.

``provider`` (gateway, bank, BNPL) and ``checkout`` (order service, merchant) are FastAPI apps, each
its own process with its own SQLite database (``store``); ``runner.start_services`` starts, kills and
restarts them; ``cli`` is ``checkout-chaos serve``. ``runtime`` holds the scenario clock and the
conditions in force (fault windows and run-time overrides), ``web`` the HTTP conventions both share,
``signing`` the notification signature, ``httpclient`` the client of the hot paths (aiohttp). See
``docs/services.md``.
"""
