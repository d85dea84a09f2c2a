"""The worker consumer's fetch wait: faust hard-codes `fetch_max_wait_ms=1500` for it; this sets our own.

A Kafka broker answers a waiting fetch as soon as data arrives, so there the wait only bounds how long an idle
consumer's request is held. tansu (the embedded broker) holds a fetch that found nothing for much of its wait
even when data arrives meanwhile (measured: 0.38-0.72 s per message with 1,500 ms, ~10 ms with 100 ms), and a
step crosses three consumed hops (clicks, deltas, candidates), so the wait was a large part of the time from
a window's end to its record (`trail bench latency`, docs/benchmarks.md). A short wait costs an idle worker
a few more fetch requests per second.

Owns one patch of faust (`AIOKafkaConsumerThread._create_worker_consumer`), installed by
`streams.runner.run_worker`; the value travels on the app (`trail_fetch_max_wait_ms`), so the patch is the
same for every app in the process. No window, state or scoring logic here.
"""

from __future__ import annotations

from typing import Any

_MARK = "_trail_fetch_wait"   # set on the replacement method so installs are idempotent
APP_ATTRIBUTE = "trail_fetch_max_wait_ms"


def install_fetch_max_wait(app: Any, fetch_max_wait_ms: int) -> None:
    """Make `app`'s worker consumer ask the broker to hold a fetch at most `fetch_max_wait_ms`."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if fetch_max_wait_ms <= 0:
        raise ValueError(f"fetch max wait must be > 0 ms, got {fetch_max_wait_ms}; "
                         "give e.g. --fetch-max-wait-ms 100")
    setattr(app, APP_ATTRIBUTE, int(fetch_max_wait_ms))
    if hasattr(AIOKafkaConsumerThread._create_worker_consumer, _MARK):
        return
    original = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = original(self, transport)
        wait_ms = getattr(self.app, APP_ATTRIBUTE, None)
        if wait_ms:
            consumer._fetch_max_wait_ms = wait_ms   # read when the consumer starts and builds its fetcher
        return consumer

    setattr(_create_worker_consumer, _MARK, original)
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer
