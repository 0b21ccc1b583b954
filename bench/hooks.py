"""The hooks the agent's programs take on this kernel, and empty programs on them.

Everything here is derived from the agent's own catalogue
(node_agent.programs.CATALOGUE) and the running kernel: which strategy each
program gets (its first whose requirements the kernel meets, as the agent
chooses), which hooks that strategy attaches, and how often a hook fires.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Issue 14's "default program set": the four TCP/latency programs, what the
# request/response and throughput targets are stated for.
DEFAULT_PROGRAMS = ("tcp_retransmit", "tcp_connections", "tcp_rtt", "rx_latency")

# Kinds an empty program can be put on, by the kind of the agent's hook: the
# same kind, except tp_btf (BTF-typed raw tracepoint), whose programs the
# kernel runs as it runs a raw tracepoint's (bpf_trace_run), so an empty raw
# tracepoint program is its floor.
EMPTY_KIND = {"tracepoint": "tracepoint", "raw_tracepoint": "raw_tracepoint", "tp_btf": "raw_tracepoint",
              "kprobe": "kprobe"}


@dataclass(frozen=True)
class Hook:
    kind: str      # as the catalogue says: tracepoint, raw_tracepoint, kprobe, ...
    target: str    # "category:event" or a kernel function

    def __str__(self) -> str:
        return f"{self.target} ({self.kind})"


@dataclass(frozen=True)
class Loaded:
    """One BPF function of a program as the agent loads it on this kernel."""
    program: str
    fn: str
    hook: Hook


def loaded_functions(programs=None) -> list[Loaded]:
    """Every BPF function the agent attaches for `programs` (default: the
    whole catalogue), with its hook: per program, the first candidate strategy
    (default options) whose requirements this kernel meets."""
    from node_agent.kernel.features import KernelFeatures
    from node_agent.programs import CATALOGUE

    features, out = KernelFeatures(), []
    for name in programs or CATALOGUE:
        spec = CATALOGUE[name]
        usable = [s for s in spec.candidate_strategies(spec.defaults()) if not features.unmet(s)]
        for attach in usable[0].attachments if usable else ():
            out.append(Loaded(name, attach.fn, Hook(attach.kind, attach.target)))
    return out


def hooks_of(programs=None) -> list[Hook]:
    """The distinct hooks of `programs`, in catalogue order."""
    hooks: list[Hook] = []
    for f in loaded_functions(programs):
        if f.hook not in hooks:
            hooks.append(f.hook)
    return hooks


@lru_cache(maxsize=None)
def grain(hook: Hook) -> str | None:
    """"packet" if the hook fires per packet, "connection" if per connection
    event, None if unknown. Read from the kernel's description of the event:
    a tracepoint whose record carries an sk_buff (`skbaddr`) fires for a
    packet (received, sent, copied, dropped, retransmitted, probed); one that
    carries only a socket (`skaddr`: state changes, resets received) fires
    per connection. For kprobes (no tracepoint record) it is unknown."""
    from node_agent.kernel.features import KernelFeatures

    if ":" not in hook.target:
        return None
    features = KernelFeatures()
    if not features.tracepoint(hook.target):
        return None
    return "packet" if features.tracepoint_field(hook.target, "skbaddr") else "connection"


def prog_id_of_fd(fd: int, pid: int | str = "self") -> int | None:
    m = re.search(r"^prog_id:\s+(\d+)", Path(f"/proc/{pid}/fdinfo/{fd}").read_text(), flags=re.M)
    return int(m.group(1)) if m else None


# Bodies of the reference programs: the least a program doing each kind of
# work costs on a hook (bench kernel_cost, veth_overhead). A per-CPU cell in
# one array shared by the object's programs: the counter is the least any
# program that records an event pays, the clock read the least a program
# that times one pays (bpf_ktime_get_ns, the helper every latency program
# calls at both ends of what it times).
EMPTY_BODY = "return 0;"
COUNTER_BODY = "u32 zero = 0; u64 *cell = ref_cell.lookup(&zero); if (cell) (*cell)++; return 0;"
CLOCK_BODY = "u32 zero = 0; u64 *cell = ref_cell.lookup(&zero); if (cell) *cell = bpf_ktime_get_ns(); return 0;"
_REFERENCE_MAPS = "BPF_PERCPU_ARRAY(ref_cell, u64, 1);\n"


class HookPrograms:
    """A BPF program for each of `hooks`, of the same kind (EMPTY_KIND), whose
    body is body_of(its hook, as attached), compiled and loaded in this
    process once, attached to any subset of them by attached(). One program
    per hook, as the agent has (one program on several hooks would be skipped
    whenever it nests in itself, and look cheaper than it is), except that
    hooks with the same counterpart share it. `ids` maps each hook to its
    program's id; hooks of a kind with no counterpart (not in EMPTY_KIND) are
    left out and listed in `skipped`."""

    _PROG_TYPES = {"raw_tracepoint": "RAW_TRACEPOINT", "tracepoint": "TRACEPOINT", "kprobe": "KPROBE"}

    def __init__(self, hooks: list[Hook], body_of=lambda hook: EMPTY_BODY, prefix: str = "ref"):
        from bcc import BPF

        from node_agent.kernel.headers import find_kernel_headers

        find_kernel_headers(set_env=True)   # BCC_KERNEL_SOURCE, as the agent does
        self.skipped = [h for h in dict.fromkeys(hooks) if h.kind not in EMPTY_KIND]
        self.hooks = [h for h in dict.fromkeys(hooks) if h.kind in EMPTY_KIND]
        # hooks whose counterpart is the same (tp_btf and raw_tracepoint on
        # one event: dns and segments sent share net_dev_start_xmit) share one
        # program: BCC attaches a raw tracepoint once per object
        self._floor = {h: Hook(EMPTY_KIND[h.kind], h.target) for h in self.hooks}
        self._floor_fns = floor_fns = {f: f"{prefix}_{i}" for i, f in enumerate(dict.fromkeys(self._floor.values()))}
        self.bpf = BPF(text=_REFERENCE_MAPS + "".join(f"int {fn}(void *ctx) {{ {body_of(f)} }}\n"
                                                      for f, fn in floor_fns.items()))
        try:
            self._floor_ids = {f: prog_id_of_fd(self.bpf.load_func(fn, getattr(BPF, self._PROG_TYPES[f.kind])).fd)
                               for f, fn in floor_fns.items()}
        except Exception:
            self.bpf.cleanup()
            raise
        self.ids = {h: self._floor_ids[self._floor[h]] for h in self.hooks}

    @contextmanager
    def attached(self, hooks: list[Hook]):
        """The programs of `hooks` attached for the block; yields their ids."""
        done = []
        try:
            for floor in dict.fromkeys(self._floor[h] for h in hooks if h in self._floor):
                fn = self._floor_fns[floor]
                if floor.kind == "raw_tracepoint":
                    self.bpf.attach_raw_tracepoint(tp=floor.target.split(":", 1)[1], fn_name=fn)
                elif floor.kind == "tracepoint":
                    self.bpf.attach_tracepoint(tp=floor.target, fn_name=fn)
                else:
                    self.bpf.attach_kprobe(event=floor.target, fn_name=fn)
                done.append(floor)
            yield {self._floor_ids[f] for f in done}
        finally:
            for floor in reversed(done):
                if floor.kind == "raw_tracepoint":
                    self.bpf.detach_raw_tracepoint(tp=floor.target.split(":", 1)[1])
                elif floor.kind == "tracepoint":
                    self.bpf.detach_tracepoint(tp=floor.target)
                else:
                    self.bpf.detach_kprobe(event=floor.target)

    def cleanup(self) -> None:
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None


class EmptyPrograms(HookPrograms):
    """Empty programs on `hooks`: what any program on them costs here."""

    def __init__(self, hooks: list[Hook]):
        super().__init__(hooks, prefix="empty")


@contextmanager
def empty_programs_on(hooks: list[Hook]):
    """EmptyPrograms on `hooks`, attached for the block."""
    empty = EmptyPrograms(hooks)
    try:
        with empty.attached(hooks):
            yield empty
    finally:
        empty.cleanup()
