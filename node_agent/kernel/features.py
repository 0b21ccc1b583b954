"""What this node supports, read from the running kernel (for `doctor` and
for choosing attach strategies)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from node_agent.kernel.btf import KFUNCS, BTFError, kernel_btf
from node_agent.kernel.headers import HeadersNotFound, KernelHeaders, find_kernel_headers

TRACEFS_EVENTS = ("/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events")
BCC_TRACEFS = "/sys/kernel/debug/tracing"   # BCC 0.26 reads tracepoint formats only here
KPROBE_MARKERS = ("/sys/bus/event_source/devices/kprobe/type",
                  "/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events")

CAPABILITY_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

# The capabilities the agent's DaemonSet grants (everything else is dropped):
# the operator renders them, `doctor` and the tests check against them.
# Why each one: docs/agent.md, "Capabilities (for the DaemonSet)".
DAEMONSET_CAPABILITIES = ("BPF", "PERFMON", "NET_ADMIN")
# Added only with the probe's spec.agent.raiseMemlockLimit: kernels before 5.11
# charge BPF maps to RLIMIT_MEMLOCK, which only SYS_RESOURCE may raise. Never by
# default: a runtime on a host without it in the bounding set cannot start a
# container that asks for it.
MEMLOCK_CAPABILITY = "SYS_RESOURCE"
MEMLOCK_ACCOUNTING_BEFORE = (5, 11)
# Added only when the probe selects the program: dns reads TCP payload from
# page fragments through the kernel's direct map, whose randomized base only
# /proc/kallsyms gives, and kallsyms shows addresses only to SYSLOG (with
# kernel.perf_event_paranoid > 1, the default). BPF + PERFMON already read any
# kernel memory, so the addresses reveal nothing more to the agent.
PROGRAM_CAPABILITIES = {"dns": ("SYSLOG",)}

# What tp_btf programs cast a packet's address to (bpf_rdonly_cast) to read its
# bytes with plain loads: the verifier checks such a load only against the
# type's size and, inside an array member, not against the member's elements,
# so the type wanted is one array of integers at offset 0, large enough for the
# headers read. struct linux_mib (the SNMP counters, unsigned long mibs[~130],
# over 1 KiB) is that, and is in every kernel with IPv4.
PACKET_BYTES_STRUCT = "linux_mib"


def daemonset_capabilities(programs: Iterable[str] = (), raise_memlock: bool = False) -> list[str]:
    """The DaemonSet's list for these programs: the base set, what the
    programs need, SYS_RESOURCE with raise_memlock; each once, in that order."""
    out = list(DAEMONSET_CAPABILITIES)
    for name in programs:
        out += [c for c in PROGRAM_CAPABILITIES.get(name, ()) if c not in out]
    if raise_memlock:
        out.append(MEMLOCK_CAPABILITY)
    return out


def effective_capabilities() -> set[str]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                mask = int(line.split()[1], 16)
                return {name for bit, name in enumerate(CAPABILITY_NAMES) if mask >> bit & 1}
    return set()


@dataclass
class KernelFeatures:
    release: str = field(default_factory=lambda: os.uname().release)

    @cached_property
    def btf(self) -> bool:
        return os.path.exists("/sys/kernel/btf/vmlinux")

    @cached_property
    def kprobes(self) -> bool:
        """The kernel offers kprobes (perf kprobe PMU or kprobe_events)."""
        return any(os.path.exists(p) for p in KPROBE_MARKERS)

    @cached_property
    def fentry(self) -> bool:
        """BTF plus the BPF trampoline (as BCC decides); fentry is not used by v1 programs."""
        return self.btf and "bpf_trampoline_link_prog" in self._kallsyms

    @cached_property
    def events_dir(self) -> str | None:
        return next((d for d in TRACEFS_EVENTS if os.path.isdir(d)), None)

    @cached_property
    def bcc_tracefs(self) -> bool:
        return os.path.isdir(os.path.join(BCC_TRACEFS, "events"))

    @cached_property
    def capabilities(self) -> set[str]:
        return effective_capabilities()

    @cached_property
    def _kallsyms(self) -> set[str]:
        names = set()
        try:
            with open("/proc/kallsyms") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        names.add(parts[2])
        except OSError:
            pass
        return names

    @cached_property
    def headers(self) -> KernelHeaders | HeadersNotFound:
        try:
            return find_kernel_headers(self.release)
        except HeadersNotFound as e:
            return e

    @cached_property
    def packet_loads(self) -> tuple[int, int] | None:
        """(BTF id, size) of the type tp_btf programs cast packet addresses to,
        to read packet bytes with plain loads instead of a bpf_probe_read_kernel
        call each (netprobe.h, np_btf_bytes); None where the kernel lacks the
        bpf_rdonly_cast kfunc (before 6.2) or the type."""
        if not self.btf:
            return None
        try:
            btf = kernel_btf()
            if btf.kfunc_id("bpf_rdonly_cast") is None:
                return None
            return btf.struct_id(PACKET_BYTES_STRUCT), btf.sizeof(PACKET_BYTES_STRUCT)
        except (BTFError, OSError):
            return None

    @cached_property
    def resets_without_socket_traced(self) -> bool:
        """tcp:tcp_send_reset also fires for the RSTs the kernel sends for no
        socket (the answer to a refused connection) since Linux 6.10, when the
        event got a record of its own (addresses as sockaddrs, no `family`
        field); before (Debian 12's 6.1) it shares the socket event class
        (`family`, `saddr[4]`, `saddr_v6`) and fires only for a socket's RST."""
        return self.tracepoint("tcp:tcp_send_reset") and not self.tracepoint_field("tcp:tcp_send_reset", "family")

    def compile_defines(self) -> list[str]:
        """-D names telling the programs which tracepoint record layouts this
        kernel has (BCC builds the record structs from its formats, but code
        reading a field that does not exist would not compile)."""
        defines = []
        if self.tracepoint("tcp:tcp_send_reset") and not self.resets_without_socket_traced:
            defines.append("NP_SEND_RESET_SOCKET_RECORD")
        # Newer kernels (6.18 here) give tcp_retransmit_skb an `err` and fire it for
        # attempts that failed before anything was counted; 6.1 fires on success only.
        if self.tracepoint_field("tcp:tcp_retransmit_skb", "err"):
            defines.append("NP_RETRANSMIT_HAS_ERR")
        if self.packet_loads:
            type_id, size = self.packet_loads
            defines += [f"NP_KFUNC_RDONLY_CAST={KFUNCS['bpf_rdonly_cast']}",
                        f"NP_BYTES_BTF_ID={type_id}", f"NP_BYTES_SIZE={size}"]
        return defines

    def tracepoint_field(self, name: str, field_name: str) -> bool:
        if not self.tracepoint(name):
            return False
        try:
            with open(os.path.join(self.events_dir, *name.split(":", 1), "format")) as f:
                # "field:__u8 saddr[28];	offset:..." -> "saddr"
                return any(line.split(";")[0].split()[-1].split("[")[0] == field_name
                           for line in f if line.strip().startswith("field:"))
        except OSError:
            return False

    def tracepoint(self, name: str) -> bool:
        category, event = name.split(":", 1)
        return self.events_dir is not None and os.path.exists(os.path.join(self.events_dir, category, event, "id"))

    def btf_tracepoint(self, name: str) -> bool:
        """A BTF-typed program (tp_btf) can name this tracepoint: the kernel's
        BTF has its btf_trace_<event> typedef (Linux 5.5+ with BTF)."""
        if not self.btf:
            return False
        try:
            kernel_btf().trace_typedef_id(name.split(":", 1)[1])
        except (BTFError, OSError):
            return False
        return True

    def kernel_function(self, name: str) -> bool:
        return name in self._kallsyms

    def can_bpf(self) -> bool:
        caps = self.capabilities
        return "SYS_ADMIN" in caps or {"BPF", "PERFMON"} <= caps

    def unmet(self, strategy) -> list[str]:
        """Why `strategy` cannot work here (empty: it should)."""
        reasons = []
        for tp in strategy.tracepoints:
            if not self.tracepoint(tp):
                reasons.append(f"tracepoint {tp} missing")
            elif not os.path.exists(os.path.join(BCC_TRACEFS, "events", *tp.split(":", 1), "format")):
                reasons.append(f"{BCC_TRACEFS} not mounted (BCC reads tracepoint formats there)")
        reasons += [f"tracepoint {tp} missing" for tp in strategy.raw_tracepoints if not self.tracepoint(tp)]
        for tp in strategy.btf_tracepoints:
            if not self.btf_tracepoint(tp):
                reasons.append(f"tracepoint {tp} not in the kernel's BTF (no btf_trace_{tp.split(':', 1)[1]})"
                               if self.btf else "kernel without BTF (tp_btf needs it)")
        if strategy.kprobe_functions:
            if not self.kprobes:
                reasons.append("kernel without kprobes")
            else:
                reasons += [f"function {fn} not in /proc/kallsyms"
                            for fn in strategy.kprobe_functions if not self.kernel_function(fn)]
        return sorted(set(reasons))
