"""The node agent as a child process, for the tests, the benchmarks and the demo:
start `netprobe-agent --config FILE` with its log in a file, wait until
/readyz answers, scrape /metrics, stop it (SIGTERM: it detaches everything)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Sequence

import yaml

from netprobe_testbed.processes import die_with_parent, log_tail, stop_process
from node_agent.config import ALWAYS_LABELS, OPTIONAL_LABELS
from node_agent.programs import CATALOGUE

ALL_PROGRAMS = tuple(CATALOGUE)
ALL_LABELS = ALWAYS_LABELS + OPTIONAL_LABELS


def agent_command() -> list[str]:
    """The installed entry point next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("netprobe-agent")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "node_agent.cli"]


def agent_config(listen: str, resolver_file: Path, programs: Mapping[str, dict] | Sequence[str] = ALL_PROGRAMS,
                 labels: Sequence[str] = ALL_LABELS, log_level: str = "info", **extra) -> dict:
    """An agent config (docs/agent-config.md) with a static resolver; `programs`
    maps names to their options, or lists names to run with their defaults."""
    if not isinstance(programs, Mapping):
        programs = {name: {} for name in programs}
    config = {
        "listen": listen,
        "log_level": log_level,
        "labels": list(labels),
        "resolver": {"static": {"file": str(resolver_file)}},
        "programs": dict(programs),
    }
    config.update(extra)
    return config


def write_config(path: Path, config: Mapping | str) -> Path:
    """Replaces the file in one rename: a hot-reloading agent never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config if isinstance(config, str) else yaml.safe_dump(dict(config), sort_keys=False))
    tmp.replace(path)
    return path


class AgentError(RuntimeError):
    """The agent exited, or was not ready in time; the message ends with its log."""


class AgentProcess:
    """`netprobe-agent --config FILE` as a child process with its log in a file.

    It runs in its own session (a terminal Ctrl-C reaches the caller, who stops
    it in order) and gets SIGTERM when its parent dies, even by SIGKILL.
    `prefix` wraps the command (e.g. capsh to drop capabilities), `command`
    replaces it (e.g. the argv of a pod spec; then config_path may be None).
    """

    def __init__(self, config_path: Path | None, log_path: Path, listen: str, *, prefix: Sequence[str] = (),
                 command: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None):
        self.config_path, self.log_path, self.listen = config_path, log_path, listen
        self.prefix, self.command, self.env, self.cwd = list(prefix), command, env, cwd
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.listen}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "agent not started"
        return self.proc.pid

    def start(self) -> "AgentProcess":
        argv = list(self.command) if self.command is not None else [
            *agent_command(), "--config", str(self.config_path)]
        with open(self.log_path, "wb") as log:   # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*self.prefix, *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=None if self.env is None else dict(self.env), cwd=self.cwd,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        return self

    def check_running(self) -> None:
        """AgentError, with the end of its log, if the agent has exited."""
        if self.proc.poll() is not None:
            raise AgentError(f"the agent exited with code {self.proc.returncode}; "
                             f"the end of its log:\n{self.log_tail()}")

    def ready(self) -> bool:
        """One look at /readyz; AgentError if the agent has exited."""
        self.check_running()
        try:
            with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 300, progress: Callable[[float], None] | None = None,
                   every: float = 5.0) -> float:
        """Polls /readyz until 200; returns the seconds it took. `progress(elapsed)` every `every` s."""
        started = time.monotonic()
        next_note = started + every
        while not self.ready():
            now = time.monotonic()
            if now - started > timeout:
                raise AgentError(f"the agent was not ready after {timeout:.0f}s; the end of its log:\n"
                                 f"{self.log_tail()}")
            if progress is not None and now >= next_note:
                progress(now - started)
                next_note = now + every
            time.sleep(0.2)
        return time.monotonic() - started

    def metrics_text(self, timeout: float = 10) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=timeout) as resp:
            return resp.read().decode()

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the agent detaches everything), SIGKILL if it hangs; its exit code."""
        return stop_process(self.proc, timeout)
