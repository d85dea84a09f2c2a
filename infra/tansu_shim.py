"""Workaround for tansu's wrong end offsets, and the decision whether a broker needs it.

Owns one patch of faust and nothing else. Tansu 0.6 answers ListOffsets(LATEST) with "base offset
of the last record batch + 1" instead of the true end offset; its Fetch responses carry the right
high watermark. Faust takes changelog high-waters from end offsets, so against tansu a restarted
worker raises ConsistencyError or silently drops the tail of a changelog during table recovery.

``install_end_offset_fix()`` replaces ``AIOKafkaConsumerThread._highwaters``: it asks for the end
offsets as before, then for every non-empty partition seeks a separate, group-less probe consumer
(one per consumer thread, kept) to (listed - 1), i.e. into the last batch, fetches once, and reports
the fetch response's high watermark. The worker's own consumer and its positions are not touched.

The fix is for the embedded broker only: ``should_apply_fix(bootstrap, mode)`` with mode ``on``,
``off``, or ``auto`` (ask the cluster for its metadata: tansu reports cluster id "tansu_cluster",
which ``trail broker`` and tests' EmbeddedBroker use; Apache Kafka reports a random base64 UUID).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from confluent_kafka import KafkaException

from infra.admin import cluster_metadata
from infra.errors import BrokerUnreachable
from infra.kafka_config import KafkaSettings

FIX_MODES = ("auto", "on", "off")
TANSU_CLUSTER_ID_PREFIX = "tansu"       # tansu's default cluster id is "tansu_cluster"
_MARK = "_trail_end_offset_fix"         # set on the replacement method so installs are idempotent




def is_embedded_broker(bootstrap: str, kafka_config: Mapping[str, str] | None = None,
                       timeout: float = 10.0) -> bool:
    """True if ``bootstrap`` is a tansu broker, judged by the cluster id in its Metadata response.

    The embedded broker only speaks PLAINTEXT, so SASL/SSL settings mean a real cluster (no probe).
    Raises BrokerUnreachable if no Metadata answer comes within ``timeout`` seconds.
    """
    extra = dict(kafka_config or {})
    if extra.get("security.protocol", "PLAINTEXT").upper() != "PLAINTEXT":
        return False
    try:
        cluster_id = cluster_metadata(KafkaSettings(bootstrap=bootstrap, extra=extra), timeout).cluster_id
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"cannot reach Kafka at {bootstrap} to tell whether it is the embedded broker ({exc}); start "
            "the broker first or set --embedded-broker-fix on|off") from exc
    return (cluster_id or "").startswith(TANSU_CLUSTER_ID_PREFIX)


def should_apply_fix(bootstrap: str, mode: str, kafka_config: Mapping[str, str] | None = None,
                     timeout: float = 10.0) -> bool:
    """Whether the worker must install the end-offset fix: mode "on"/"off" decide, "auto" asks the cluster."""
    if mode not in FIX_MODES:
        raise ValueError(f"embedded-broker fix mode must be one of {', '.join(FIX_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return is_embedded_broker(bootstrap, kafka_config, timeout)


def install_end_offset_fix() -> None:
    """Patch faust's consumer thread so end offsets (changelog high-waters) are right on tansu. Idempotent."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if end_offset_fix_installed():
        return
    original = AIOKafkaConsumerThread._highwaters

    async def _highwaters(self, partitions):
        listed = await original(self, partitions)
        if self.consumer.in_transaction:          # last-stable offsets come from fetches already
            return listed
        return await _true_end_offsets(self, listed)

    setattr(_highwaters, _MARK, original)
    AIOKafkaConsumerThread._highwaters = _highwaters


def uninstall_end_offset_fix() -> None:
    """Restore faust's own ``_highwaters`` (for tests and for switching the fix off in-process)."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if end_offset_fix_installed():
        AIOKafkaConsumerThread._highwaters = getattr(AIOKafkaConsumerThread._highwaters, _MARK)


def end_offset_fix_installed() -> bool:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    return hasattr(AIOKafkaConsumerThread._highwaters, _MARK)


async def _true_end_offsets(thread, listed: Mapping) -> dict:
    """Replace each listed end offset > 0 by the high watermark a fetch from (listed - 1) reports."""
    from aiokafka import TopicPartition

    pending = {TopicPartition(tp.topic, tp.partition): tp for tp, end in listed.items() if end}
    if not pending:
        return dict(listed)
    conf = thread.app.conf
    async with _probe_lock(thread):
        probe = await _probe(thread)
        probe.assign(list(pending))   # a new assignment: no high watermark known until the fetch below
        for tp, faust_tp in pending.items():
            probe.seek(tp, listed[faust_tp] - 1)
        highwaters = await _fetch_highwaters(probe, list(pending), conf.broker_request_timeout)
    return {**listed, **{pending[tp]: highwater for tp, highwater in highwaters.items()}}


def _probe_lock(thread) -> asyncio.Lock:
    """One probe per consumer thread, used by one lookup at a time (the worker asks for end offsets often:
    idle sources are confirmed before the watermark moves, and a probe took ~1 s to start under load)."""
    lock = getattr(thread, "_trail_probe_lock", None)
    if lock is None:
        lock = thread._trail_probe_lock = asyncio.Lock()
    return lock


async def _probe(thread):
    """The consumer thread's group-less probe consumer, started on first use and kept."""
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

    probe = getattr(thread, "_trail_probe", None)
    if probe is None:
        conf = thread.app.conf
        probe = AIOKafkaConsumer(
            bootstrap_servers=server_list(thread.transport.url, thread.transport.default_port),
            group_id=None, enable_auto_commit=False, client_id=f"{conf.broker_client_id}-end-offsets",
            request_timeout_ms=int(conf.broker_request_timeout * 1000),
            **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )
        await probe.start()
        thread._trail_probe = probe
    return probe


async def _fetch_highwaters(probe, tps: list, timeout: float) -> dict:
    """Fetch until every partition's high watermark is known (fetches at a record return at once)."""
    deadline = time.monotonic() + timeout
    while any(probe.highwater(tp) is None for tp in tps):
        if time.monotonic() > deadline:
            missing = [tp for tp in tps if probe.highwater(tp) is None]
            raise TimeoutError(f"no fetch response with a high watermark for {missing}")
        await probe.getmany(*tps, timeout_ms=200)
    return {tp: probe.highwater(tp) for tp in tps}
