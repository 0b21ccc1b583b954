"""The running set of programs, kept equal to what the config asks for.

apply() changes only what differs: a program whose options are unchanged is
left running; a changed one is reloaded (its counters start again, as after
a restart); a removed one is detached. One program failing never stops the
others; a program that failed is retried only when its options change.
The programs come with their descriptions ((spec, options) pairs): the
runtime does not know the catalogue.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter

from node_agent.kernel.features import KernelFeatures
from node_agent.runtime.instance import ProgramError, ProgramInstance
from node_agent.runtime.spec import ProgramSpec

log = logging.getLogger(__name__)


class ProgramManager:
    def __init__(self, features: KernelFeatures):
        self.features = features
        self.errors: Counter[tuple[str, str]] = Counter()   # (program, stage) -> count
        self._running: dict[str, ProgramInstance] = {}
        self._failed: dict[str, tuple[dict, ProgramError]] = {}
        # Held while maps are read (collector) and while programs are swapped or
        # stopped, so a scrape never reads a map being closed.
        self.lock = threading.RLock()

    def running(self) -> list[ProgramInstance]:
        with self.lock:
            return list(self._running.values())

    def failed(self) -> dict[str, ProgramError]:
        with self.lock:
            return {name: err for name, (_, err) in self._failed.items()}

    def apply(self, desired: dict[str, tuple[ProgramSpec, dict]]) -> None:
        """desired: program name -> (its description, its full options)."""
        for name in list(self._running):
            inst = self._running[name]
            if name not in desired or desired[name][1] != inst.options:
                self._stop(name, "removed" if name not in desired else "options changed")
        for name in list(self._failed):
            if name not in desired or desired[name][1] != self._failed[name][0]:
                del self._failed[name]
        for name, (spec, options) in desired.items():
            if name in self._running or name in self._failed:
                continue
            self._start(spec, options)

    def _start(self, spec: ProgramSpec, options: dict) -> None:
        name = spec.name
        inst = ProgramInstance(spec, options, self.features)
        try:
            inst.start()
        except ProgramError as e:
            for failure in inst.failures:
                self.errors[(name, failure.stage)] += 1
            with self.lock:
                self._failed[name] = (options, e)
            log.error("program failed", extra={"kv": {"program": name, "stage": e.stage, "error": e.message}})
            return
        for failure in inst.failures:   # attempts before the strategy that worked
            self.errors[(name, failure.stage)] += 1
        with self.lock:
            self._running[name] = inst
        log.info("program loaded", extra={"kv": {"program": name, "attach": inst.attach,
                                                 "options": ",".join(f"{k}={v}" for k, v in sorted(options.items()))}})

    def _stop(self, name: str, why: str) -> None:
        with self.lock:
            inst = self._running.pop(name)
            inst.stop()
        log.info("program detached", extra={"kv": {"program": name, "reason": why}})

    def stop_all(self) -> None:
        for name in list(self._running):
            self._stop(name, "shutdown")
