"""Child-process plumbing shared by the broker and the S3 emulator launchers.

Owns: loopback port checks, spawning a long-lived child in its own session with its output in a log
file, telling a recorded pid from a recycled one, stopping a process (TERM, wait, KILL), and
reading the tail of a log for error messages. No Kafka or S3 knowledge here.
"""

from __future__ import annotations

import errno
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True if something is bound to ``host:port`` (SO_REUSEADDR: TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def spawn(argv: list[str], log_path: Path, env: Mapping[str, str] | None = None,
          die_with_parent: bool = True) -> subprocess.Popen:
    """Start ``argv`` in a new session (immune to the terminal's Ctrl-C and hang-up), output in a log.

    ``die_with_parent``: the child gets SIGTERM if this process dies without stopping it (a killed test
    run leaves no broker behind); set False for children that must outlive us (``--detach``).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            _parent_death_prefix() + argv if die_with_parent else argv,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, start_new_session=True,
        )


def _parent_death_prefix() -> list[str]:
    """``setpriv --pdeathsig TERM --`` where it exists (util-linux). The signal follows the *thread*
    that spawned the child, so it is only used from the main thread (whose end is the process's)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


def process_start_time(pid: int) -> float | None:
    """The start time the kernel records for ``pid`` (None if there is no such process)."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def is_same_process(pid: int, started: float) -> bool:
    """True if ``pid`` is alive and is the process that started at ``started`` (not a recycled pid)."""
    now = process_start_time(pid)
    if now is None or abs(now - started) > 0.5:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate(pid: int, started: float, timeout: float = 10.0) -> bool:
    """Stop the recorded process: SIGTERM, wait up to ``timeout``, then SIGKILL. False if it was gone.

    Not our child, so its exit is watched by polling; a zombie (exited, not yet reaped by its new
    parent) counts as stopped.
    """
    if not is_same_process(pid, started):
        return False
    try:
        psutil.Process(pid).send_signal(signal.SIGTERM)
        if not wait_until(lambda: not is_same_process(pid, started), timeout):
            psutil.Process(pid).kill()
            wait_until(lambda: not is_same_process(pid, started), 5.0)
    except psutil.NoSuchProcess:
        pass
    return True


def stop_child(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop a child we spawned: SIGTERM, wait up to ``timeout``, then SIGKILL; returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def log_tail(path: Path, max_chars: int = 2000) -> str:
    """The last ``max_chars`` characters of a log file, colour codes removed ('' if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return _ANSI.sub("", text)[-max_chars:].strip()


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Call ``check()`` until it returns true or ``timeout`` seconds pass; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)

