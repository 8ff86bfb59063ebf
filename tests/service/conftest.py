"""Fixtures for the live services: real processes on loopback, high time scales, polling with timeouts.

Starting the two processes costs about two seconds, so most tests share one pair for the whole session
(``services``): each test starts with the run-time fault overrides cleared, sets what its story needs
through ``PUT /admin/faults`` (``services.set_faults``), and uses its own ids. Tests that need a
configuration faults cannot change (``live.max_in_flight``) or that kill processes start their own
(``start``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from loadtests.service.runner import Services, start_services

# Deterministic, fault-free money path unless a test asks otherwise.
QUIET = {
    "bank.decline_probability": 0.0,
    "bank.risk_block_probability": 0.0,
    "bank.latency": "100ms",
    "gateway.notify_latency": "100ms",
    "gateway.service_time": "10ms",
    # A paid order stays paid for an hour (a minute wall) before the merchant ships it, so a test can
    # still cancel it and read it "paid"; tests of fulfilment set merchant.ship_time themselves.
    "merchant.ship_time": "1h",
}
TIME_SCALE = 60.0


def launch(data_dir: Any, overrides: dict[str, Any] | None = None, time_scale: float = TIME_SCALE,
           **kwargs: Any) -> Services:
    return start_services(None, data_dir, time_scale, {**QUIET, **(overrides or {})}, admin_token="test-token",
                          **kwargs)


def launched(tmp_path_factory: pytest.TempPathFactory, name: str, **kwargs: Any) -> Iterator[Services]:
    """For a fixture shared by many tests: services in a fresh ``name`` directory, stopped at its end."""
    services = launch(tmp_path_factory.mktemp(name), **kwargs)
    yield services
    services.stop()


def reset(shared: Services, faults: dict[str, Any]) -> Services:
    """Shared services for the next test: still alive (else the test fails, naming their logs), with
    exactly ``faults`` as the run-time fault overrides."""
    if not (shared.alive("provider") and shared.alive("checkout")):
        pytest.fail("the shared services died; see their logs in " + str(shared.data_dir))
    shared.set_faults(faults)
    return shared


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    yield from launched(tmp_path_factory, "shared")


@pytest.fixture
def services(shared: Services) -> Services:
    """The session's services with every run-time fault override cleared."""
    return reset(shared, {})


@pytest.fixture
def start(tmp_path: Any) -> Iterator[Callable[..., Services]]:
    """``start(overrides, time_scale=...)`` -> a private pair of services, stopped after the test."""
    started: list[Services] = []

    def _start(overrides: dict[str, Any] | None = None, time_scale: float = TIME_SCALE, name: str = "data",
               **kwargs: Any) -> Services:
        services = launch(tmp_path / name, overrides, time_scale, **kwargs)
        started.append(services)
        return services

    yield _start
    for services in started:
        services.stop()
