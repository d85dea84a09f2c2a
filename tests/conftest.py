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


@pytest.fixture
def make_replay(broker: str):
    """A factory of isolated pipelines (tests/streamkit.Replay) whose workers are stopped at teardown,
    even when the test fails half-way."""
    from tests.streamkit import Replay

    made: list = []

    def make(name: str, data_dir, **kwargs):
        replay = Replay(broker, name, data_dir, **kwargs)
        made.append(replay)
        return replay

    yield make
    for replay in made:
        for worker in replay.workers:
            worker.kill()


@pytest.fixture(scope="session")
def tiny_trail_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny TRAIL model trained for a few steps on ml-100k (seconds), saved as `trail train` saves it."""
    from models.train import train
    from models.train_config import TrainConfig

    out = tmp_path_factory.mktemp("models") / "trail-tiny-session"
    train(TrainConfig.for_base("tiny", steps=2, batch_size=8, explain_rows=2, contrastive_rows=2, val_days=0), out)
    return out


@pytest.fixture(scope="session")
def tiny_trail_bundle(tiny_trail_model, tmp_path_factory: pytest.TempPathFactory):
    """The fp32 ONNX bundle of `tiny_trail_model`, made by `trail export`."""
    from streams.cli import main

    out = tmp_path_factory.mktemp("bundles") / "trail-tiny-session"
    assert main(["export", str(tiny_trail_model), "--out", str(out)]) == 0
    return out
