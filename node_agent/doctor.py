"""`netprobe-agent doctor`: what this node supports, per program.

The production checklist done by the program itself: kernel, BTF, kprobes,
fentry, how tp_btf programs read packet bytes, tracefs, every tracepoint the
catalogue uses, headers, capabilities, and for each program whether (and how)
it can load. Exit status 1 if no program can load.
"""
from __future__ import annotations

import re

from node_agent.kernel.features import (BCC_TRACEFS, DAEMONSET_CAPABILITIES, MEMLOCK_ACCOUNTING_BEFORE,
                                       KernelFeatures)
from node_agent.kernel.headers import HeadersNotFound
from node_agent.kernel.mounts import ensure_pseudo_filesystems
from node_agent.programs import CATALOGUE


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def memlock_charged(release: str) -> bool:
    nums = [int(x) for x in re.findall(r"\d+", release)[:2]]
    return len(nums) == 2 and tuple(nums) < MEMLOCK_ACCOUNTING_BEFORE


def report(features: KernelFeatures | None = None) -> tuple[list[str], bool]:
    """Lines to print, and whether at least one program can load."""
    f = features or KernelFeatures()
    lines = [f"kernel: {f.release}"]
    for m in ensure_pseudo_filesystems():
        lines.append(f"filesystem {m.fstype} at {m.path}: {m.state}{' (' + m.error + ')' if m.error else ''}")
    lines.append(f"BTF (/sys/kernel/btf/vmlinux): {_yes(f.btf)}")
    lines.append(f"kprobes: {_yes(f.kprobes)}")
    lines.append(f"fentry: {'BPF trampoline present' if f.fentry else 'no'} "
                 "(attach not tried: no v1 program uses fentry)")
    lines.append("packet bytes in tp_btf programs: " +
                 ("plain loads (kfunc bpf_rdonly_cast)" if f.packet_loads else
                  "bpf_probe_read_kernel (no kfunc bpf_rdonly_cast: Linux < 6.2)"))
    lines.append(f"tracefs events: {f.events_dir or 'not mounted'}")
    lines.append(f"BCC tracepoint formats ({BCC_TRACEFS}): {_yes(f.bcc_tracefs)}")
    headers = f.headers
    headers_ok = not isinstance(headers, HeadersNotFound)
    lines.append(f"kernel headers: {headers.describe() if headers_ok else 'NONE - ' + str(headers)}")
    caps = f.capabilities
    lines.append(f"capabilities: {', '.join(sorted(caps)) or 'none'}")
    missing = [c for c in DAEMONSET_CAPABILITIES if c not in caps]
    if not f.can_bpf():
        lines.append("  missing: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): no program can load")
    elif missing and "SYS_ADMIN" not in caps:
        lines.append(f"  not held (of the DaemonSet's set): {', '.join(missing)}")
    if "SYSLOG" not in caps:
        lines.append("  SYSLOG not held: kallsyms hides kernel addresses, dns cannot read TCP DNS payload "
                     "(counted as unreadable); the operator adds SYSLOG when a probe selects dns")
    if memlock_charged(f.release) and not caps & {"SYS_RESOURCE", "SYS_ADMIN"}:
        lines.append("  this kernel charges BPF maps to RLIMIT_MEMLOCK and SYS_RESOURCE is not held: "
                     "large maps may fail to load; set spec.agent.raiseMemlockLimit: true")

    tracepoints = sorted({tp for spec in CATALOGUE.values() for s in spec.strategies
                          for tp in s.tracepoints + s.raw_tracepoints})
    lines.append("tracepoints:")
    for tp in tracepoints:
        lines.append(f"  {tp}: {_yes(f.tracepoint(tp))}")

    lines.append("programs:")
    any_loadable = False
    for spec in CATALOGUE.values():
        usable = [s for s in spec.strategies if not f.unmet(s)]
        no_btf = bool(spec.btf_offsets) and not f.btf    # its struct offsets come from BTF, in every mode
        if usable and headers_ok and f.can_bpf() and not no_btf:
            any_loadable = True
            lines.append(f"  {spec.name}: can load: yes, via {usable[0].name}")
        else:
            why = []
            if not headers_ok:
                why.append("no kernel headers")
            if not f.can_bpf():
                why.append("missing capabilities")
            if no_btf:
                why.append("no BTF: kernel struct offsets are read from /sys/kernel/btf/vmlinux")
            if not usable:
                why += [f"{s.name}: {'; '.join(f.unmet(s))}" for s in spec.strategies]
            lines.append(f"  {spec.name}: can load: no ({' / '.join(why)})")
        for s in spec.strategies:
            unmet = f.unmet(s)
            lines.append(f"    {s.name}: {'available' if not unmet else 'unavailable: ' + '; '.join(unmet)}")
    return lines, any_loadable


def main() -> int:
    lines, ok = report()
    print("\n".join(lines))
    return 0 if ok else 1
