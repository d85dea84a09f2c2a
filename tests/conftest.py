"""Shared pytest fixtures: one embedded broker for the whole session, and unique topic names per test.

``broker`` starts tansu (memory storage) on a free 127.0.0.1 port once per session and yields its
bootstrap string "127.0.0.1:PORT"; it is stopped when the session ends. Topics on it outlive a test,
so tests take fresh names from ``unique_topic``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest

from infra.broker import EmbeddedBroker

_topic_counter = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[..., str]:
    """A factory: ``unique_topic("clicks")`` -> "clicks-<test name>-<n>", unique within the session."""
    test_name = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(base: str = "t") -> str:
        return f"{base}-{test_name}-{next(_topic_counter)}"

    return make
