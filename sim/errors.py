"""The harness's own failures, in one small tree.

Domain outcomes (a timeout, a decline, a lost notification) are recorded values, never exceptions.
Exceptions are for mistakes in what the harness was given and for its own faults::

    CheckoutChaosError
    ├── ConfigError          a scenario file, a --set/--vary override or a command-line value is wrong
    ├── HistoryError         a history file cannot be read as events
    └── TargetError          a live target (services, staging checkout) is unreachable or misbehaves

The CLI turns a ``CheckoutChaosError`` into one message on stderr and exit code 2 (usage) — never a
traceback.
"""

from __future__ import annotations


class CheckoutChaosError(Exception):
    """Base class of every error the harness raises on purpose."""


class ConfigError(CheckoutChaosError):
    """A scenario or command-line value is wrong: the message names where, what was expected and found."""


class HistoryError(CheckoutChaosError):
    """A history (JSON Lines events) cannot be read."""


class TargetError(CheckoutChaosError):
    """A live target could not be reached or answered outside its contract."""
