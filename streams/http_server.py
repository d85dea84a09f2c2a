"""The worker's HTTP endpoints on `--metrics-port`: Prometheus metrics, health probes and the live page.

| route | answer |
|---|---|
| `/metrics` | Prometheus text exposition (`streams.metrics`) |
| `/healthz` | 200 while the process and its event loop answer |
| `/readyz` | 200 when ready (`streams.health`), else 503; JSON body with each check either way |
| `/` | the live trends page (`streams/live_page.html`, static; it polls `/api/live`) |
| `/api/live` | JSON: readiness, counters, and the last emitted step's records (merge worker only) |

Served by aiohttp (faust's own dependency) on the worker's event loop, so a stuck loop fails `/healthz`
as a liveness probe should. `HttpService` is a mode service the faust Worker starts *before* the app:
faust starts timers and tasks only after table recovery, and `/readyz` must answer during it.
No Kafka I/O here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

import orjson
from aiohttp import web
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST

from streams import metrics
from streams.health import readiness

log = logging.getLogger("trail.worker")
LIVE_PAGE = Path(__file__).with_name("live_page.html")
RECOMMENDED_PORT = 9464   # the Prometheus exporter port range; nothing else of TRAIL listens there


class RateMeter:
    """Per-second rates of the worker's counters over the last `window_s` seconds, from one sample a second.

    Sampled by the service, not by page polls: a browser polling fast or slow (a background tab, a headless
    one in virtual time) would otherwise see rates of its own polling."""

    FIELDS = ("events", "counted", "trends_emitted", "steps_scored")

    def __init__(self, window_s: int = 10) -> None:
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=window_s + 1)

    def sample(self, counters, now_s: float | None = None) -> None:
        now_s = time.monotonic() if now_s is None else now_s
        self.samples.append((now_s, {name: getattr(counters, name) for name in self.FIELDS}))

    def rates(self) -> dict[str, float]:
        if len(self.samples) < 2:
            return {}
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        return {f"{name}_per_s": round((last[name] - first[name]) / (t1 - t0), 1) for name in self.FIELDS}


def check_port_free(host: str, port: int) -> None:
    """Refuse a taken port before the worker touches Kafka (ValueError: one error line, exit code 2)."""
    from infra.procs import port_in_use

    if port_in_use(host, port):
        raise ValueError(f"--metrics-port {port}: {host}:{port} is already in use; pick another port "
                         f"(or stop what listens there)")


def json_response(body: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def live_snapshot(pipeline, rates: RateMeter) -> dict:
    """What the live page shows: health, counters and their rates, the last emitted step's records."""
    status = readiness(pipeline)
    return {
        "worker_id": pipeline.config.worker_id,
        "now_ms": int(time.time() * 1000),
        "health": status.as_dict(),
        "counters": {**pipeline.counters.as_dict(), "scorer_fallbacks": pipeline.runtime.fallbacks},
        "rates": rates.rates(),
        "records": pipeline.last_step,
    }


def make_web_app(pipeline, rates: RateMeter) -> web.Application:
    started_s = time.time()

    async def healthz(request: web.Request) -> web.Response:
        return json_response({"alive": True, "worker_id": pipeline.config.worker_id,
                              "uptime_s": round(time.time() - started_s, 1)})

    async def readyz(request: web.Request) -> web.Response:
        status = readiness(pipeline)
        return json_response(status.as_dict(), 200 if status.ready else 503)

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def live(request: web.Request) -> web.Response:
        return json_response(live_snapshot(pipeline, rates))

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(LIVE_PAGE, headers={"Cache-Control": "no-cache"})

    web_app = web.Application()
    web_app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", prometheus),
                        web.get("/api/live", live), web.get("/", page)])
    return web_app


class HttpService(Service):
    """Serves `make_web_app(pipeline)` on host:port from before the app starts until the worker stops."""

    def __init__(self, pipeline, host: str, port: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.host = host
        self.port = port
        self.runner: web.AppRunner | None = None
        self.rates = RateMeter()

    async def on_start(self) -> None:
        metrics.register_pipeline(self.pipeline)
        self.runner = web.AppRunner(make_web_app(self.pipeline, self.rates), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        log.info("trail: metrics, health and live page on http://%s:%d/", self.host, self.port)

    @Service.timer(1.0)
    async def sample_rates(self) -> None:
        self.rates.sample(self.pipeline.counters)

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
