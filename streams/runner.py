"""Starting a worker process: topics, the broker shim, the scorer, then faust's Worker (uvloop)."""

from __future__ import annotations

import asyncio
import logging

from models.scoring import Scorer, VelocityScorer
from streams.config import WorkerConfig

log = logging.getLogger("trail.worker")


def load_scorer(name: str) -> Scorer:
    """The stream's scorer: the velocity baseline, or a TRAIL bundle by NAME|DIR."""
    if name in ("velocity", "baseline"):
        return VelocityScorer()
    raise SystemExit(f"unknown scorer {name!r}: use 'velocity' (TRAIL bundles are not wired into the worker yet)")


def run_worker(config: WorkerConfig) -> int:
    import faust
    import uvloop

    from infra.tansu_shim import install_end_offset_fix, should_apply_fix
    from streams.app import create_app
    from streams.topics import ensure_worker_topics

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ensure_worker_topics(config)
    (config.data_dir / config.worker_id).mkdir(parents=True, exist_ok=True)
    if should_apply_fix(config.kafka.bootstrap, config.embedded_broker_fix, config.kafka.extra):
        install_end_offset_fix()
        log.info("embedded broker detected: end-offset fix installed")
    scorer = load_scorer(config.scorer)
    app = create_app(config, scorer)

    @app.task
    async def drop_default_monitor() -> None:
        # the default Monitor sensor costs ~10 % per message (STACK-NOTES) and nothing reads it
        if app.monitor in list(app.sensors):
            app.sensors.remove(app.monitor)

    worker = faust.Worker(app, loglevel=config.log_level, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0
