"""Helpers for the observability tests: a real Prometheus server, headless Chromium, HTTP polling.

Both binaries are Debian packages (`make install` installs them as root); `binary_or_skip` skips a test
with the reason when one is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from infra.procs import free_port, log_tail, stop_child
from streams.worker_status import probe

CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")
DASHBOARD = Path(__file__).resolve().parent.parent / "infra" / "grafana" / "dashboards" / "trail.json"


def binary_or_skip(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"{' / '.join(names)} not installed (Debian: apt-get install prometheus chromium-headless-shell; "
                "`make install` does it as root)")


def dashboard_exprs() -> list[str]:
    """Every PromQL query of the Grafana dashboard shipped in infra/."""
    return [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for target in panel["targets"]]


def get_json(url: str, timeout_s: float = 3.0) -> tuple[int, dict]:
    """(status, JSON body) of a GET; (0, {}) when nothing answers."""
    try:
        return probe(url, timeout_s)
    except OSError:
        return 0, {}


def poll(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2):
    """Call `check` until it returns something truthy; TimeoutError naming `what` and the last value."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not happen in {timeout_s} s (last: {last!r})")


class PrometheusServer:
    """`prometheus` on a free 127.0.0.1 port, scraping `targets` every second, with its own temp storage."""

    def __init__(self, binary: str, targets: list[str], workdir: Path) -> None:
        self.binary = binary
        self.targets = targets
        self.workdir = Path(workdir)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps({   # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "trail", "static_configs": [{"targets": self.targets}]}],
        }))
        return config

    def __enter__(self) -> PrometheusServer:
        config = self.write_config()
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT)
        poll(lambda: self.process.poll() is not None or get_json(f"{self.url}/api/v1/status/runtimeinfo")[0] == 200,
             60, "prometheus answering")
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log_tail(self.workdir / 'prometheus.log')}")
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            stop_child(self.process)

    def query(self, promql: str) -> list[dict]:
        """Instant query through the HTTP API: the result vector ([] if there is none yet)."""
        status, body = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200 or body.get("status") != "success":
            return []
        return body["data"]["result"]

    def scraped_values(self, job: str = "trail") -> dict[tuple, float]:
        """Every `trail_*` series of the last scrape: (name, sorted labels without job/instance) -> value."""
        values = {}
        for sample in self.query(f'{{__name__=~"trail_.+", job="{job}"}}'):
            labels = {k: v for k, v in sample["metric"].items() if k not in ("job", "instance")}
            name = labels.pop("__name__")
            values[(name, *sorted(labels.items()))] = float(sample["value"][1])
        return values


def chromium_args(binary: str, url: str, budget_ms: int) -> list[str]:
    # --no-sandbox: tests run as root in CI containers, where Chromium's sandbox refuses to start
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1100",
            f"--virtual-time-budget={budget_ms}", url]


def dump_dom(binary: str, url: str, budget_ms: int = 3000) -> str:
    """The page's DOM after `budget_ms` of virtual time (time stands still while fetches are pending)."""
    argv = chromium_args(binary, url, budget_ms)
    done = subprocess.run([*argv[:-1], "--dump-dom", argv[-1]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(binary: str, url: str, path: Path, budget_ms: int = 3000) -> Path:
    argv = chromium_args(binary, url, budget_ms)
    done = subprocess.run([*argv[:-1], f"--screenshot={path}", argv[-1]], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    return path


class TrendItems(HTMLParser):
    """The rendered `li.trend` items of the live page: data attributes, title, forecast, explanation, source."""

    FIELDS = {"title", "explanation", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict] = []
        self.capturing: str | None = None
        self.in_list = False   # inside <ol id="trends"> (the footer's legend uses the same classes)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "ol" and attributes.get("id") == "trends":
            self.in_list = True
        if not self.in_list:
            return
        if tag == "li" and "trend" in classes:
            self.items.append({"item_id": attributes["data-item-id"], "rank": int(attributes["data-rank"]),
                               "model": attributes["data-model"], "source_attr": attributes["data-source"]})
        elif self.items and tag == "svg" and "spark" in classes:
            self.items[-1]["counts"] = [int(c) for c in attributes["data-counts"].split(",")]
        elif self.items and "forecast" in classes:
            self.items[-1]["forecast"] = float(attributes["data-forecast"])
        else:
            self.capturing = next((c for c in classes if c in self.FIELDS), None)

    def handle_data(self, data: str) -> None:
        if self.capturing and self.items:
            self.items[-1][self.capturing] = self.items[-1].get(self.capturing, "") + data

    def handle_endtag(self, tag: str) -> None:
        self.capturing = None
        if tag == "ol":
            self.in_list = False


def rendered_items(dom: str) -> list[dict]:
    parser = TrendItems()
    parser.feed(dom)
    return parser.items
