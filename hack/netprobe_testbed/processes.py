"""What every process the test bed starts needs: free loopback ports, a child
that dies with its parent, the end of its log, a stop that cannot hang."""
from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable

PR_SET_PDEATHSIG = 1


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports free on `host` now.

    All sockets stay open until every port is picked, so the kernel hands out
    distinct ones. Another process may still take one before the caller binds
    it; that shows up as the caller's server failing with "address already in
    use" (the control plane retries with new ports).
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn`: the kernel sends the child `sig` when its parent dies, even by SIGKILL.

    A test run killed by a CI timeout then leaks no process. The "parent" is
    the thread that started the child, so start long-lived children from a
    thread that outlives them (the main thread, in pytest and in the CLIs).
    SIGTERM for a child that must clean up (the agent detaches what it
    attached), SIGKILL for the others.
    """
    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    return arm


def log_tail(path: Path | None, lines: int = 40, missing: str = "") -> str:
    """The last `lines` lines of a log file; `missing` when there is none (yet)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except (OSError, AttributeError):
        return missing


def stop_process(proc: subprocess.Popen | None, grace: float = 30.0) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code (None: never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
