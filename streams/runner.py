"""Starting a worker process: topics, the broker shim, the scorer, then faust's Worker (uvloop)."""

from __future__ import annotations

import asyncio
import logging

from streams.config import WorkerConfig

log = logging.getLogger("trail.worker")


def run_worker(config: WorkerConfig) -> int:
    import faust
    import uvloop

    from infra.tansu_shim import install_end_offset_fix, should_apply_fix
    from streams.app import create_app
    from streams.scorer_runtime import ScorerRuntime
    from streams.topics import ensure_worker_topics

    # the scorer first: a bundle other than the pinned one stops the worker before it touches Kafka
    runtime = ScorerRuntime(config.scorer, step_budget_s=config.step_budget_s, scorer_sha256=config.scorer_sha256)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ensure_worker_topics(config)
    (config.data_dir / config.worker_id).mkdir(parents=True, exist_ok=True)
    if should_apply_fix(config.kafka.bootstrap, config.embedded_broker_fix, config.kafka.extra):
        install_end_offset_fix()
        log.info("embedded broker detected: end-offset fix installed")
    app = create_app(config, runtime)

    @app.task
    async def drop_default_monitor() -> None:
        # the default Monitor sensor costs ~10 % per message (STACK-NOTES) and nothing reads it
        if app.monitor in list(app.sensors):
            app.sensors.remove(app.monitor)

    worker = faust.Worker(app, loglevel=config.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
