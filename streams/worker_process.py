"""Running `trail worker` as a child process: start, wait on its status file, SIGTERM/SIGKILL.

Used by `trail bench ingest`, `trail demo` and the end-to-end tests, which need a real worker process
(faust owns its event loop and signal handlers). No scoring or window logic here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson


class WorkerProcess:
    def __init__(self, args: list[str], data_dir: Path, worker_id: str = "w1", log_path: Path | None = None) -> None:
        self.args = args
        self.data_dir = Path(data_dir)
        self.worker_id = worker_id
        self.log_path = log_path or self.data_dir / f"{worker_id}.log"
        self.process: subprocess.Popen | None = None

    @property
    def status_path(self) -> Path:
        return self.data_dir / self.worker_id / "status.json"

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.status_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "streams.cli", "worker", "--data-dir", str(self.data_dir),
                "--worker-id", self.worker_id, *self.args]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=Path(__file__).resolve().parent.parent)
        return self

    def status(self) -> dict:
        try:
            return orjson.loads(self.status_path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(self, predicate, timeout_s: float, what: str) -> dict:
        """Poll the status file until `predicate(status)`; raise with the log tail if it never happens."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if status and predicate(status):
                return status
            if not self.alive():
                code = self.process.returncode
                raise RuntimeError(f"worker exited (code {code}) waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"worker did not reach {what} in {timeout_s}s; status {self.status()}\n{self.log_tail()}")

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the crash case (no flush, no commit)."""
        if self.alive():
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
