"""One program of the catalogue, compiled, loaded and attached with BCC.

Stages, each reported separately when it fails: config (preparing the
compile-time constants, e.g. BTF offsets), compile (clang via BCC), load (the
verifier; also a map key that does not match its description), attach. Strategies are tried in order; a strategy the kernel
plainly lacks (no kprobes, missing tracepoint) is skipped when another one
follows, so a fallback is not an error.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from node_agent.kernel.btf import BTFError, kernel_btf
from node_agent.kernel.features import KernelFeatures
from node_agent.kernel.headers import HeadersNotFound
from node_agent.runtime import tp_btf
from node_agent.runtime.keys import KeyFields, KeyMismatch
from node_agent.runtime.prog_info import recursion_misses
from node_agent.runtime.spec import ProgramSpec, Strategy

log = logging.getLogger(__name__)

BPF_DIR = Path(os.environ.get("NETPROBE_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf"))
# Test-only: "OFF_X=+8,OFF_Y=-4" shifts BTF offsets, so a test can prove that a
# wrong offset changes the counts (tests/agent/test_programs.py). Never set it on a node.
SKEW_ENV = "NETPROBE_TEST_BTF_OFFSET_SKEW"
SHARED_HEADER = "netprobe.h"


class ProgramError(Exception):
    def __init__(self, program: str, stage: str, message: str):
        super().__init__(f"{program}: {stage} failed: {message}")
        self.program, self.stage, self.message = program, stage, message


@contextmanager
def _captured_stderr():
    """Collect what libbcc/clang/the verifier print on fd 2, for the error
    message. Whatever was written meanwhile (also other threads' log lines)
    is passed on to the real stderr afterwards, so nothing is lost."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        out: list[str] = []
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            raw = tmp.read()
            if raw:
                os.write(2, raw)
            out.append(raw.decode(errors="replace"))


def _tail(text: str, lines: int = 12) -> str:
    kept = [l for l in text.strip().splitlines() if l.strip()]
    return " | ".join(kept[-lines:])


def program_source(spec: ProgramSpec) -> str:
    """The C text with the shared header inlined: BCC rewrites map calls
    (map.lookup(...)) only in the main file, not in included headers."""
    text = (BPF_DIR / spec.source).read_text()
    shared = (BPF_DIR / SHARED_HEADER).read_text()
    return text.replace(f'#include "{SHARED_HEADER}"', shared, 1)


def compile_flags(spec: ProgramSpec, options: dict, strategy: Strategy) -> list[str]:
    flags = []
    for opt in spec.options:
        if opt.define:
            flags.append(f"-D{opt.define}={opt.c_literal(options[opt.name])}")
    flags += [f"-D{name}={value}" for name, value in spec.constants().items()]
    flags += [f"-D{d}" for d in strategy.defines]
    if spec.btf_offsets:
        btf = kernel_btf()
        skew = _btf_offset_skew()
        for define, (struct, member) in spec.btf_offsets.items():
            flags.append(f"-D{define}={btf.offsetof(struct, member) + skew.get(define, 0)}")
    if spec.btf_enum_values:
        btf = kernel_btf()
        for define, (enum, member) in spec.btf_enum_values.items():
            value = btf.enum(enum).get(member)
            if value is not None:
                flags.append(f"-D{define}={value}")
    if spec.kernel_constants:
        flags += [f"-D{name}={value}" for name, value in spec.kernel_constants().items()]
    return flags


def _btf_offset_skew() -> dict[str, int]:
    text = os.environ.get(SKEW_ENV, "").strip()
    if not text:
        return {}
    try:
        skew = {name.strip(): int(delta) for name, delta in (item.split("=", 1) for item in text.split(","))}
    except ValueError as e:
        raise ValueError(f"{SKEW_ENV}={text!r}: expected NAME=+N,NAME=-N") from e
    log.warning("BTF offsets skewed for a test", extra={"kv": {"skew": text}})
    return skew


class ProgramInstance:
    def __init__(self, spec: ProgramSpec, options: dict, features: KernelFeatures):
        self.spec, self.options, self.features = spec, dict(options), features
        self.bpf = None
        self.attach: str | None = None
        self.keys: dict[str, KeyFields] = {}     # map name -> its key's fields (metric maps)
        self.failures: list[ProgramError] = []   # failed attempts, also of strategies that fell back
        # tp_btf programs, loaded and attached here (BCC cannot): fn -> fd, and their link fds
        self._btf_progs: dict[str, int] = {}
        self._btf_links: list[int] = []

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        """Load with the first strategy that works; ProgramError if none does."""
        candidates = self.spec.candidate_strategies(self.options)
        last_error = None
        for i, strategy in enumerate(candidates):
            unmet = self.features.unmet(strategy)
            if unmet and i < len(candidates) - 1:
                log.info("strategy skipped", extra={"kv": {"program": self.name, "attach": strategy.name,
                                                           "reason": "; ".join(unmet)}})
                continue
            try:
                self._start_with(strategy)
                self.attach = strategy.name
                return
            except ProgramError as e:
                self.failures.append(e)
                last_error = e
                log.warning("strategy failed", extra={"kv": {"program": self.name, "attach": strategy.name,
                                                             "stage": e.stage, "error": e.message}})
        raise last_error or ProgramError(self.name, "config", "no attach strategy")

    def _start_with(self, strategy: Strategy) -> None:
        from bcc import BPF, lib  # imported late: doctor and config checks work without it

        headers = self.features.headers   # finding them also points BCC_KERNEL_SOURCE at them
        if isinstance(headers, HeadersNotFound):
            raise ProgramError(self.name, "config", str(headers))
        try:
            flags = compile_flags(self.spec, self.options, strategy) + \
                [f"-D{d}" for d in self.features.compile_defines()]
            text = program_source(self.spec)
        except (BTFError, OSError, ValueError) as e:   # ValueError: a description whose constants clash
            raise ProgramError(self.name, "config", str(e)) from e

        try:
            with _captured_stderr() as err:
                bpf = BPF(text=text.encode(), cflags=flags)
        except Exception as e:
            raise ProgramError(self.name, "compile", f"{e}: {_tail(err[0] if err else '')}") from e

        try:
            try:
                self.keys = self._key_fields(bpf)
            except KeyMismatch as e:
                raise ProgramError(self.name, "load", str(e)) from e
            prog_type = {"tracepoint": BPF.TRACEPOINT, "raw_tracepoint": BPF.RAW_TRACEPOINT, "kprobe": BPF.KPROBE}
            try:
                with _captured_stderr() as err:
                    for a in strategy.attachments:
                        if a.kind == "tp_btf":
                            if a.fn not in self._btf_progs:
                                self._btf_progs[a.fn] = tp_btf.load(bpf.dump_func(a.fn.encode()), a.fn,
                                                                    a.target.split(":", 1)[1],
                                                                    lib.bpf_module_license(bpf.module))
                        else:
                            bpf.load_func(a.fn.encode(), prog_type[a.kind])
            except Exception as e:
                raise ProgramError(self.name, "load", f"{e}: {_tail(err[0] if err else '')}") from e
            for a in strategy.attachments:
                try:
                    with _captured_stderr() as err:
                        if a.kind == "tp_btf":
                            self._btf_links.append(tp_btf.attach(self._btf_progs[a.fn]))
                        elif a.kind == "tracepoint":
                            bpf.attach_tracepoint(tp=a.target.encode(), fn_name=a.fn.encode())
                        elif a.kind == "raw_tracepoint":   # named by the event alone
                            bpf.attach_raw_tracepoint(tp=a.target.split(":", 1)[1].encode(),
                                                      fn_name=a.fn.encode())
                        else:
                            bpf.attach_kprobe(event=a.target.encode(), fn_name=a.fn.encode())
                except Exception as e:
                    raise ProgramError(self.name, "attach",
                                       f"{a.kind} {a.target}: {e} {_tail(err[0] if err else '', 3)}".strip()) from e
        except ProgramError:
            self._close_btf()
            bpf.cleanup()   # detach what did attach
            raise
        self.bpf = bpf

    def _key_fields(self, bpf) -> dict[str, KeyFields]:
        """Each metric map's key, read from the struct BCC built, checked against the description."""
        keys: dict[str, KeyFields] = {}
        for m in self.spec.metrics:
            if m.map not in keys:
                keys[m.map] = KeyFields.of(bpf[m.map.encode()].Key)
            keys[m.map].check(m.key_fields, f"{m.name} (map {m.map})")
        return keys

    def table(self, name: str):
        return self.bpf[name.encode()]

    def missed_runs(self) -> dict[str, int]:
        """Runs the kernel skipped (prog_info.recursion_misses), by hook: the
        attach targets of each loaded function, joined if it has several."""
        if self.bpf is None or self.attach is None:
            return {}
        hooks: dict[str, list[str]] = {}
        for a in self.spec.strategy(self.attach).attachments:
            hooks.setdefault(a.fn, []).append(a.target)
        missed = {}
        for fn, targets in hooks.items():
            loaded = self.bpf.funcs.get(fn.encode())
            fd = self._btf_progs.get(fn, loaded.fd if loaded is not None else None)
            count = recursion_misses(fd) if fd is not None else None
            if count is not None:
                missed[",".join(targets)] = count
        return missed

    def _close_btf(self) -> None:
        """Detach and unload the tp_btf programs (links first)."""
        for fd in self._btf_links + list(self._btf_progs.values()):
            os.close(fd)
        self._btf_links, self._btf_progs = [], {}

    def stop(self) -> None:
        self._close_btf()
        if self.bpf is not None:
            self.bpf.cleanup()   # detaches every probe and closes program and map fds
            self.bpf = None
