"""The end-offset fix over a real tansu: faust's consumer thread reports true end offsets only with it.

Tansu answers ListOffsets(LATEST) with "base offset of the last batch + 1", so after batches of 10
records a partition holding 30 records reports 21 without the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import faust
import pytest
from confluent_kafka import Producer
from faust.types import TP

from infra import tansu_shim
from infra.admin import TopicSpec, ensure_topics
from infra.broker import EmbeddedBroker
from infra.kafka_config import KafkaSettings

pytestmark = pytest.mark.broker

BATCHES, BATCH_SIZE = 3, 10          # 30 records per partition; the last batch starts at offset 20


@pytest.fixture
def batched_topic(broker, unique_topic) -> str:
    """Partitions 0 and 1 hold 30 records in 10-record batches; partition 2 is empty."""
    topic = unique_topic("changelog")
    ensure_topics(KafkaSettings(broker, {}), {topic: TopicSpec(partitions=3)})
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 1000})
    for _ in range(BATCHES):
        for partition in (0, 1):
            for i in range(BATCH_SIZE):
                producer.produce(topic, value=b"%d" % i, partition=partition)
        assert producer.flush(10) == 0           # one multi-record batch per partition
    return topic


@pytest.fixture
def no_fix():
    """Run the test with faust unpatched, and leave it unpatched afterwards."""
    tansu_shim.uninstall_end_offset_fix()
    yield
    tansu_shim.uninstall_end_offset_fix()


@contextlib.asynccontextmanager
async def started_consumer(bootstrap: str):
    """A faust app's consumer with its thread running (what a worker asks for changelog high-waters)."""
    app = faust.App("tansu-shim-test", broker=f"kafka://{bootstrap}")
    await app.consumer._thread.start()
    try:
        yield app.consumer
    finally:
        await app.consumer._thread.stop()


async def end_offsets(consumer, topic: str) -> dict[int, int]:
    highwaters = await consumer.highwaters(*(TP(topic, p) for p in range(3)))
    return {tp.partition: offset for tp, offset in highwaters.items()}


async def faust_highwaters(bootstrap: str, topic: str) -> dict[int, int]:
    """End offsets as a faust worker's consumer thread reports them (the changelog high-waters)."""
    async with started_consumer(bootstrap) as consumer:
        return await end_offsets(consumer, topic)


def test_without_fix_tansu_end_offsets_are_wrong(broker, batched_topic, no_fix):
    """Pins the tansu bug: if this starts failing, tansu was fixed and the shim can go."""
    assert asyncio.run(faust_highwaters(broker, batched_topic)) == {0: 21, 1: 21, 2: 0}


def test_with_fix_end_offsets_are_true_counts(broker, batched_topic, no_fix):
    tansu_shim.install_end_offset_fix()
    assert asyncio.run(faust_highwaters(broker, batched_topic)) == {0: 30, 1: 30, 2: 0}


def test_install_is_idempotent_and_reversible(no_fix):
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._highwaters
    tansu_shim.install_end_offset_fix()
    patched = AIOKafkaConsumerThread._highwaters
    tansu_shim.install_end_offset_fix()
    assert AIOKafkaConsumerThread._highwaters is patched is not original
    assert tansu_shim.end_offset_fix_installed()
    tansu_shim.uninstall_end_offset_fix()
    assert AIOKafkaConsumerThread._highwaters is original


def test_auto_detects_the_embedded_broker(broker):
    assert tansu_shim.should_apply_fix(broker, "auto")
    assert tansu_shim.should_apply_fix(broker, "on")
    assert not tansu_shim.should_apply_fix(broker, "off")


def test_auto_is_off_for_a_cluster_with_a_kafka_cluster_id():
    """Apache Kafka reports a random base64 UUID as its cluster id; auto must leave the fix off."""
    with EmbeddedBroker(cluster_id="MkU3OEVBNTcwNTJENDM2Qk") as kafka_like:
        assert not tansu_shim.should_apply_fix(kafka_like.bootstrap, "auto")
        assert tansu_shim.should_apply_fix(kafka_like.bootstrap, "on")


def test_auto_is_off_for_tls_or_sasl_settings_without_asking(broker):
    assert not tansu_shim.should_apply_fix(broker, "auto", {"security.protocol": "SASL_SSL"})


def test_auto_with_unreachable_broker_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]                   # bound, not listening: connections are refused
        with pytest.raises(tansu_shim.BrokerUnreachable, match="--embedded-broker-fix"):
            tansu_shim.should_apply_fix(f"127.0.0.1:{port}", "auto", timeout=0.5)


def test_unknown_mode_is_rejected(broker):
    with pytest.raises(ValueError, match="auto, on, off"):
        tansu_shim.should_apply_fix(broker, "maybe")


RECOVERY_APP = '''
import os
import faust
from infra import tansu_shim

bootstrap = os.environ["BOOTSTRAP"]
if tansu_shim.should_apply_fix(bootstrap, "auto"):        # what the worker does by default
    tansu_shim.install_end_offset_fix()
app = faust.App(os.environ["APP_ID"], broker=f"kafka://{bootstrap}", store="memory://",
                broker_session_timeout=10, web_enabled=False)
table = app.Table("counts", default=int, partitions=1)

@app.agent(app.topic(os.environ["SOURCE"], partitions=1))
async def count(stream):
    async for _ in stream:
        pass

@app.task
async def report():
    await app.tables.recovery.completed.wait()
    print(f"TABLE_SIZE={len(table)}", flush=True)
    os._exit(0)

app.main()
'''


def test_table_recovery_reads_the_whole_changelog(broker, unique_topic, tmp_path):
    """A faust worker rebuilding a table from a changelog written in 100-record batches gets all 2000
    keys (without the fix it stops at the last batch's first record: 1901 keys)."""
    app_id, source, keys = unique_topic("recovery"), unique_topic("source"), 2000
    changelog = f"{app_id}-counts-changelog"
    ensure_topics(KafkaSettings(broker, {}), {source: TopicSpec(1), changelog: TopicSpec(1, compact=True)})
    producer = Producer({"bootstrap.servers": broker, "linger.ms": 1000})
    for i in range(keys):
        producer.produce(changelog, key=b'"k%d"' % i, value=b"1", partition=0)
        if (i + 1) % 100 == 0:
            assert producer.flush(10) == 0
    (tmp_path / "recovery_app.py").write_text(RECOVERY_APP)
    env = {**os.environ, "BOOTSTRAP": broker, "APP_ID": app_id, "SOURCE": source,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    worker = subprocess.run([sys.executable, "recovery_app.py", "worker", "-l", "warn", "--without-web"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    sizes = re.findall(r"TABLE_SIZE=(\d+)", worker.stdout + worker.stderr)
    assert sizes == [str(keys)], worker.stderr[-2000:]


def test_the_kept_probe_reports_records_written_since_its_last_lookup(broker, batched_topic, no_fix):
    """The probe consumer is started once per consumer thread and kept: a second lookup must not report the
    first one's high watermark (the worker confirms idle input partitions with these lookups)."""
    tansu_shim.install_end_offset_fix()

    async def twice() -> tuple[dict[int, int], dict[int, int]]:
        async with started_consumer(broker) as consumer:
            first = await end_offsets(consumer, batched_topic)
            producer = Producer({"bootstrap.servers": broker, "linger.ms": 0})
            for partition in (0, 2):
                producer.produce(batched_topic, value=b"new", partition=partition)
            assert producer.flush(10) == 0
            return first, await end_offsets(consumer, batched_topic)

    assert asyncio.run(twice()) == ({0: 30, 1: 30, 2: 0}, {0: 31, 1: 30, 2: 1})
