"""Fixtures for the live services: real processes on loopback, high time scales, polling with timeouts."""

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
}


@pytest.fixture
def start(tmp_path: Any) -> Iterator[Callable[..., Services]]:
    """``start(overrides=..., time_scale=...)`` -> running services, stopped after the test."""
    started: list[Services] = []

    def _start(overrides: dict[str, Any] | None = None, time_scale: float = 60.0, quiet: bool = True,
               name: str = "data", **kwargs: Any) -> Services:
        sets = {**(QUIET if quiet else {}), **(overrides or {})}
        services = start_services(None, tmp_path / name, time_scale, sets, admin_token="test-token", **kwargs)
        started.append(services)
        return services

    yield _start
    for services in started:
        services.stop()


@pytest.fixture
def services(start: Callable[..., Services]) -> Services:
    return start()
