"""The one base class of the errors a user can act on: the `trail` CLI prints them as one line and exits 2.

Library code raises a subclass (with what was wrong, the value, and what to do); only `streams.cli.main`
turns them into `trail COMMAND: error: ...`. Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class TrailError(Exception):
    """An error the user can act on; its message says what was wrong and what to do."""


class BrokerUnreachable(TrailError):
    """No Kafka broker answered at the configured bootstrap address."""


class CommandError(TrailError):
    """A command cannot run as asked (a missing bundle, an unknown dataset...)."""
