"""Starting a worker process: topics, the broker shim, the scorer, then faust's Worker (uvloop)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from streams.config import WorkerConfig

log = logging.getLogger("trail.worker")


def check_state_origin(config: WorkerConfig) -> WorkerConfig:
    """Keep, move aside or refuse the local state (`streams.origin`); the config with the input incarnation."""
    from infra.admin import cluster_metadata, rewind_group, topic_ids
    from streams.origin import StateOrigin, reconcile
    from streams.topics import worker_topics

    names = sorted(worker_topics(config))
    ids = topic_ids(config.kafka, names)
    clicks_id = ids.get(config.topics.clicks, "")
    spec = config.spec
    current = StateOrigin(
        cluster_id=cluster_metadata(config.kafka).cluster_id or "",
        clicks_topic_id=clicks_id,
        changelog_topic_ids={name: ids.get(name, "") for name in names if name.endswith("-changelog")},
        geometry={"slot_s": spec.slot_s, "bucket_s": spec.bucket_s, "n_buckets": spec.n_buckets,
                  "partitions": config.partitions})
    result = reconcile(config.data_dir / config.worker_id, current)
    if result.input_recreated:
        try:
            rewind_group(config.kafka, config.app_id, config.topics.clicks, config.partitions)
        except Exception as exc:  # noqa: BLE001 - the group may have live members: say so, go on
            log.warning("trail: could not rewind consumer group %s on %s (%s); if other workers of this group are "
                        "running, stop them all and start again", config.app_id, config.topics.clicks, exc)
    return dataclasses.replace(config, input_incarnation=clicks_id)


def run_worker(config: WorkerConfig) -> int:
    import faust
    import uvloop

    from infra.admin import require_broker
    from infra.internal_auth import load_internal_keys
    from infra.tansu_shim import install_end_offset_fix, should_apply_fix
    from streams.app import create_app
    from streams.fetch_wait import install_fetch_max_wait
    from streams.scorer_runtime import ScorerRuntime
    from streams.topics import ensure_worker_topics

    if config.metrics_port:
        from streams.http_server import check_port_free

        check_port_free(config.metrics_host, config.metrics_port)
    # the scorer first: a bundle other than the pinned one stops the worker before it touches Kafka
    runtime = ScorerRuntime(config.scorer, step_budget_s=config.step_budget_s, reload_check_s=config.reload_check_s,
                            scorer_sha256=config.scorer_sha256, vector_dir=config.text_vector_dir)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    require_broker(config.kafka)
    # the internal-message key once a broker answers (no key file is created for a worker that cannot run);
    # an unreadable or malformed one stops the worker (exit 2) before it creates topics or joins the group
    internal_keys = load_internal_keys(config.app_id, config.data_dir, config.internal_key_file)
    log.info("internal messages signed with key %s (%s, %d more accepted)", internal_keys.fingerprint(),
             internal_keys.source, len(internal_keys.accepted))
    ensure_worker_topics(config)
    config = check_state_origin(config)
    if should_apply_fix(config.kafka.bootstrap, config.embedded_broker_fix, config.kafka.extra):
        install_end_offset_fix()
        log.info("embedded broker detected: end-offset fix installed")
    app = create_app(config, runtime, internal_keys)
    install_fetch_max_wait(app, config.fetch_max_wait_ms)
    app.trail_pipeline.start_status_thread()

    @app.task
    async def drop_default_monitor() -> None:
        # the default Monitor sensor costs ~10 % per message (STACK-NOTES) and nothing reads it
        if app.monitor in list(app.sensors):
            app.sensors.remove(app.monitor)

    services = []
    if config.metrics_port:
        from streams.http_server import HttpService

        # a service of the Worker, started before the app, so /readyz answers during table recovery
        services.append(HttpService(app.trail_pipeline, config.metrics_host, config.metrics_port))
    worker = faust.Worker(app, *services, loglevel=config.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
