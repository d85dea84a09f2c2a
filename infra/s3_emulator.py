"""The local S3 emulator behind the embedded broker's durable storage (npm ``s3rver`` 3.7.1).

Owns: finding the s3rver install (``make install`` puts it in ``.venv/s3rver``), starting it on a
loopback port with its data in a directory (kept on disk across restarts), creating the bucket,
waiting until the bucket answers, the AWS_* environment tansu needs to reach it, and stopping it.
s3rver is chosen over moto[server] because moto keeps objects only in memory (see STACK-NOTES).

s3rver ignores S3's conditional writes (``If-Match``, ``If-None-Match``), which tansu relies on to give
each record batch its own offset: producers writing one partition at once (several workers sending
deltas or candidates) overwrote each other's acknowledged batches (4 producers x 200 records acked, 244
stored). It therefore runs under ``s3rver_conditional.js``, which checks those conditions and serialises
writes per object (same test: 800 of 800 stored; moto[server], which implements them, also stores 800).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from infra import procs
from infra.errors import TrailError

S3RVER_VERSION = "3.7.1"
S3RVER_ENV = "TRAIL_S3RVER"                  # explicit path to the s3rver script, overrides the venv one
CONDITIONAL_LAUNCHER = Path(__file__).with_name("s3rver_conditional.js")
S3RVER_INSTALL_HINT = f"npm install --prefix .venv/s3rver s3rver@{S3RVER_VERSION}  (part of `make install`)"
DEFAULT_BUCKET = "tansu"
ACCESS_KEY = "S3RVER"                        # s3rver's built-in credentials (hard-coded in s3rver 3.7.1)
SECRET_KEY = "S3RVER"
S3_HOST = "127.0.0.1"   # s3rver also serves unsigned requests: it must never listen beyond this machine
REGION = "us-east-1"


class S3EmulatorError(TrailError):
    """The S3 emulator is missing, could not start, or did not answer."""


def s3rver_path() -> Path:
    """Path of the s3rver executable: $TRAIL_S3RVER, else <venv>/s3rver/node_modules/.bin/s3rver."""
    override = os.environ.get(S3RVER_ENV)
    path = Path(override) if override else Path(sys.prefix) / "s3rver" / "node_modules" / ".bin" / "s3rver"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise S3EmulatorError(f"s3rver not found at {path}; install it with: {S3RVER_INSTALL_HINT}")
    return path


def aws_env(endpoint: str) -> dict[str, str]:
    """The environment tansu's s3:// storage engine reads to reach the emulator at ``endpoint``."""
    return {
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
    }


def bucket_answers(endpoint: str, bucket: str) -> bool:
    """True once the emulator serves the bucket (HTTP 200 on GET /bucket)."""
    try:
        with urllib.request.urlopen(f"{endpoint}/{bucket}?max-keys=1", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class S3Emulator:
    """One s3rver process serving ``bucket`` from ``data_dir`` on ``host:port`` (port None: a free one).

    It is stopped with this process unless ``outlive_parent`` (see ``procs.spawn``).
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 bucket: str = DEFAULT_BUCKET, log_path: Path | None = None, ready_timeout: float = 30.0,
                 outlive_parent: bool = False):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.bucket = bucket
        default_log = self.data_dir.parent / f"s3rver-{self.data_dir.name}.log"
        self.log_path = Path(log_path) if log_path else default_log
        self.ready_timeout = ready_timeout
        self.outlive_parent = outlive_parent
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> S3Emulator:
        """Start s3rver, create the bucket if missing, and return once the bucket answers."""
        executable = s3rver_path()
        self.port = self.port or procs.free_port(self.host)
        if procs.port_in_use(self.host, self.port):
            raise S3EmulatorError(f"port {self.host}:{self.port} for the S3 emulator is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        module_dir = executable.resolve().parent.parent   # node_modules/s3rver (the script is bin/s3rver.js)
        argv = ["node", str(CONDITIONAL_LAUNCHER), str(module_dir), "--directory", str(self.data_dir),
                "--address", self.host, "--port", str(self.port), "--configure-bucket", self.bucket]
        self.process = procs.spawn(argv, self.log_path, die_with_parent=not self.outlive_parent)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise S3EmulatorError(f"s3rver exited with status {self.process.returncode}:\n"
                                      f"{procs.log_tail(self.log_path)}")
            return bucket_answers(self.endpoint, self.bucket)

        if not procs.wait_until(ready, self.ready_timeout, interval=0.1):
            self.stop()
            raise S3EmulatorError(f"s3rver did not serve bucket {self.bucket!r} at {self.endpoint} within "
                                  f"{self.ready_timeout:.0f} s; log {self.log_path}:\n"
                                  f"{procs.log_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop s3rver (its data stays in ``data_dir``)."""
        if self.process is not None:
            procs.stop_child(self.process)
            self.process = None
