"""`trail worker status`: ask a running worker's `/healthz` and `/readyz`, print the answer, exit with it.

Exit codes: 0 ready, 1 alive but not ready (starting, recovering, no partitions, scorer fell back),
3 no answer (not running, or started without `--metrics-port`). Plain urllib: no faust import.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

READY, NOT_READY, NO_ANSWER = 0, 1, 3


def probe(url: str, timeout_s: float = 3.0) -> tuple[int, dict]:
    """(HTTP status, JSON body) of a GET; a 503 is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def worker_status(host: str, port: int, timeout_s: float = 3.0) -> tuple[int, dict]:
    """(exit code, readiness body) of the worker serving on host:port."""
    base = f"http://{host}:{port}"
    try:
        probe(f"{base}/healthz", timeout_s)
        code, body = probe(f"{base}/readyz", timeout_s)
    except (OSError, ValueError) as exc:
        return NO_ANSWER, {"error": f"no answer from {base}: {exc}"}
    return (READY if code == 200 else NOT_READY), body


def print_worker_status(host: str, port: int) -> int:
    code, body = worker_status(host, port)
    words = {READY: "ready", NOT_READY: "alive, not ready", NO_ANSWER: "not answering"}[code]
    print(f"worker on {host}:{port}: {words}")
    print(json.dumps(body, indent=2, sort_keys=True))
    return code
