"""`trail broker [start|stop|status]`: run the embedded broker in the foreground or detached.

Owns the command line only; processes and the pid file are infra.broker's. `trail broker` runs in the
foreground until Ctrl-C (or SIGTERM, or `trail broker stop` from elsewhere); `--detach` returns once
the broker answers. Both record the broker in the pid file, which `stop` and `status` read.

The broker has no authentication or TLS: a --host other than a loopback address is refused (exit 2) unless
--i-know-its-open is given, and then a warning is printed. The S3 emulator stays on 127.0.0.1 either way.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from infra.s3_emulator import S3_HOST

if TYPE_CHECKING:
    from infra.broker import BrokerState, EmbeddedBroker

DEFAULT_PORT = 9092
DEFAULT_DATA_DIR = "data/broker"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "broker", help="run the embedded Kafka-compatible broker (tansu) for one machine",
        description="Start (default), stop or check the embedded broker. Memory storage keeps nothing "
        "after a stop; --storage s3 keeps topics and committed offsets in --data-dir through a local "
        "S3 emulator (s3rver), started and stopped along with the broker.")
    parser.add_argument("action", nargs="?", choices=["start", "stop", "status"], default="start",
                        help="start (default), stop a detached/recorded broker, or show its status")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on and advertise (default 127.0.0.1); a non-loopback address "
                        "needs --i-know-its-open")
    parser.add_argument("--i-know-its-open", action="store_true",
                        help="allow a non-loopback --host: the broker has no authentication, authorization or "
                        "TLS, so anyone who can reach the port can read, write and delete every topic")
    parser.add_argument("--detach", action="store_true", help="start in the background and return once ready")
    parser.add_argument("--storage", choices=["memory", "s3"], default="memory",
                        help="memory (default, nothing kept) or s3 (durable, via the local S3 emulator)")
    parser.add_argument("--data-dir", default=None,
                        help=f"where s3 storage keeps its data (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--pid-file", type=Path, default=None,
                        help="pid/state file (default $TRAIL_RUN_DIR/broker.pid, else ./run/broker.pid)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for start or stop")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra import broker

    pid_file = args.pid_file or broker.default_pid_file()
    actions = {"start": _start, "stop": _stop, "status": _status}
    if args.action == "start" and not broker.is_loopback_host(args.host):
        if not args.i_know_its_open:
            print(exposure_refusal(args.host), file=sys.stderr)
            return 2
        print(exposure_warning(args.host, args.port), file=sys.stderr, flush=True)
    try:
        return actions[args.action](args, pid_file.absolute())
    except broker.BrokerError as exc:
        print(f"trail broker: {exc}", file=sys.stderr)
        return 1


def exposure_refusal(host: str) -> str:
    return (f"trail broker: refusing --host {host}: it is not a loopback address, and the embedded broker has no "
            "authentication, authorization or TLS (anyone who can reach it can read, write and delete every "
            "topic). Use --host 127.0.0.1 (the default), or add --i-know-its-open on a network you trust; "
            "for anything shared, run a real Kafka cluster with SASL/TLS and ACLs (see SECURITY.md)")


def exposure_warning(host: str, port: int) -> str:
    return (f"trail broker: WARNING: listening on {host}:{port or '(free port)'} with no authentication, "
            "authorization or TLS: anyone who can reach this address can read, write and delete every topic. "
            "The S3 emulator (--storage s3) still listens on 127.0.0.1 only.")


def _start(args: argparse.Namespace, pid_file: Path) -> int:
    from infra import broker

    recorded = broker.read_state(pid_file)
    if recorded is not None and broker.is_running(recorded):
        raise broker.BrokerError(f"a broker is already running on {recorded.bootstrap} (pid {recorded.pid}, "
                                 f"pid file {pid_file}); `trail broker stop` it or use another --pid-file")
    if args.storage == "memory" and args.data_dir:
        raise broker.BrokerError("--data-dir applies to --storage s3 only")
    data_dir = (args.data_dir or DEFAULT_DATA_DIR) if args.storage == "s3" else None
    embedded = broker.EmbeddedBroker(args.port or None, host=args.host, storage=args.storage,
                                     data_dir=data_dir, log_dir=pid_file.parent, ready_timeout=args.timeout,
                                     outlive_parent=args.detach)
    embedded.start()
    if args.detach:
        state = embedded.detach()
        broker.write_state(pid_file, state)
        print(f"broker ready on {state.bootstrap} (storage {state.storage}, pid {state.pid}); "
              f"pid file {pid_file}; log {state.log_path}; stop it with `trail broker stop`")
        return 0
    return _serve(embedded, pid_file)


def _serve(embedded: EmbeddedBroker, pid_file: Path) -> int:
    """Foreground: record the broker, wait until Ctrl-C/SIGTERM or the broker exits, then stop it all."""
    from infra import broker

    state = embedded.state()
    broker.write_state(pid_file, state)
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops cleanly, like Ctrl-C
    print(f"broker ready on {state.bootstrap} (storage {state.storage}{_data_note(state)}); "
          f"log {state.log_path}; Ctrl-C stops it", flush=True)
    status = 0
    try:
        status = embedded.wait()
        print(f"broker exited with status {status}", file=sys.stderr)
    except KeyboardInterrupt:
        print("stopping broker", file=sys.stderr, flush=True)
    finally:
        embedded.stop()
        _remove_own_pid_file(pid_file, state.pid)
    return 0 if status in (0, -signal.SIGTERM) else 1


def _data_note(state: BrokerState) -> str:
    return f", data in {state.data_dir}" if state.data_dir else ""


def _remove_own_pid_file(pid_file: Path, pid: int) -> None:
    """Remove the pid file if it still records ``pid`` (another broker may have replaced it)."""
    from infra import broker

    try:
        recorded = broker.read_state(pid_file)
    except broker.BrokerError:
        return
    if recorded is not None and recorded.pid == pid:
        pid_file.unlink(missing_ok=True)


def _stop(args: argparse.Namespace, pid_file: Path) -> int:
    from infra import broker

    state = broker.read_state(pid_file)
    if state is None:
        print(f"no broker recorded in {pid_file}; nothing to stop")
        return 0
    was_running = broker.stop_recorded(state, timeout=args.timeout)
    _remove_own_pid_file(pid_file, state.pid)
    if was_running:
        print(f"broker on {state.bootstrap} (pid {state.pid}) stopped")
    else:
        print(f"broker on {state.bootstrap} (pid {state.pid}) was not running; removed stale {pid_file}")
    return 0


def _status(args: argparse.Namespace, pid_file: Path) -> int:
    from infra import broker

    state = broker.read_state(pid_file)
    if state is None:
        print(f"not running (no pid file at {pid_file})")
        return 1
    if not broker.is_running(state):
        print(f"not running (stale pid file {pid_file}: pid {state.pid} is gone)")
        return 1
    answering = broker.answers_metadata(state.bootstrap, timeout=min(args.timeout, 5.0)) is not None
    print(f"running: {state.bootstrap} pid {state.pid} storage {state.storage}{_data_note(state)}"
          f"{'' if answering else ' (NOT answering Metadata requests)'}")
    print(f"pid file {pid_file}; log {state.log_path}")
    if state.s3_pid:
        print(f"s3 emulator: http://{S3_HOST}:{state.s3_port} pid {state.s3_pid}")
    return 0 if answering else 1
