"""Reading the running kernel: BTF offsets, header discovery, doctor."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.kernel import headers as hdr
from node_agent.kernel.btf import BTFError, kernel_btf

from agent_harness import need_root


# ---------------------------------------------------------------- BTF

def test_btf_offsets_match_the_abi_inside_anonymous_unions():
    btf = kernel_btf()
    # Wire formats cannot move: a parser bug (anonymous unions, bit offsets) would.
    assert btf.offsetof("iphdr", "saddr") == 12 and btf.offsetof("iphdr", "daddr") == 16
    assert btf.offsetof("ipv6hdr", "saddr") == 8 and btf.offsetof("ipv6hdr", "daddr") == 24
    assert btf.offsetof("tcphdr", "dest") == 2
    # sock_common keeps the address pair first (skc_daddr in an anonymous struct).
    assert btf.offsetof("sock_common", "skc_daddr") == 0
    assert btf.offsetof("sock", "__sk_common.skc_rcv_saddr") == 4
    # What rx_latency uses: head and data are neighbouring pointers.
    assert btf.offsetof("sk_buff", "data") - btf.offsetof("sk_buff", "head") == 8


def test_btf_unknown_members_are_named():
    with pytest.raises(BTFError, match="no member nonexistent"):
        kernel_btf().offsetof("sk_buff", "nonexistent")
    with pytest.raises(BTFError, match="not in the kernel's BTF"):
        kernel_btf().offsetof("no_such_struct_np", "x")


def test_kfunc_ids_come_from_btf_and_only_for_the_kfuncs_the_programs_call():
    btf = kernel_btf()
    # bpf_rdonly_cast came with 6.2: this project's 6.18 host has it, Debian 12's 6.1 (make vm-test) not
    has_cast = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 2)
    func_id = btf.kfunc_id("bpf_rdonly_cast")
    assert (func_id is not None) is has_cast
    if has_cast:
        out = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"], capture_output=True,
                             text=True, check=True).stdout
        assert f"[{func_id}] FUNC 'bpf_rdonly_cast'" in out
    with pytest.raises(ValueError, match="not in btf.KFUNCS"):
        btf.kfunc_id("bpf_obj_new_impl")


def test_kfunc_placeholder_calls_become_kfunc_calls_and_nothing_else_changes():
    import struct
    from node_agent.kernel.btf import KFUNCS
    from node_agent.runtime import tp_btf

    insn = struct.Struct("<BBhi")
    helper_call = insn.pack(0x85, 0, 0, 1)                        # call bpf_map_lookup_elem
    placeholder = insn.pack(0x85, 0, 0, KFUNCS["bpf_rdonly_cast"])
    mov = insn.pack(0xB7, 2, 0, KFUNCS["bpf_rdonly_cast"])        # r2 = the same number: not a call
    exit_ = insn.pack(0x95, 0, 0, 0)
    func_id = kernel_btf().kfunc_id("bpf_rdonly_cast")
    if func_id is None:       # a kernel before 6.2: refused by name, never loaded as a helper call
        with pytest.raises(tp_btf.TpBtfError, match="bpf_rdonly_cast, which this kernel lacks"):
            tp_btf.with_kfunc_calls(helper_call + placeholder + exit_)
        return
    out = tp_btf.with_kfunc_calls(helper_call + placeholder + mov + exit_)
    assert out == helper_call + insn.pack(0x85, 0x20, 0, func_id) + mov + exit_


def test_drop_reasons_from_btf_agree_with_the_kfree_skb_tracepoints_own_table():
    """Two sources in the running kernel, one table: every code the tracepoint
    prints has the same name from BTF's enum skb_drop_reason. The tracepoint
    never prints CONSUMED (it goes to consume_skb) nor NOT_DROPPED_YET."""
    from node_agent.kernel.drop_reasons import TRACEPOINT_FORMATS, drop_reasons, from_btf, from_tracepoint_format
    path = next((p for p in TRACEPOINT_FORMATS if os.path.exists(p)), None)
    if path is None:
        pytest.skip("no tracefs")
    printed = from_tracepoint_format(Path(path).read_text())
    named = from_btf(kernel_btf())
    assert len(printed) > 50
    assert {code: named.get(code) for code in printed} == dict(printed)
    assert "CONSUMED" not in printed.values() and "NOT_DROPPED_YET" not in printed.values()
    enum = kernel_btf().enum("skb_drop_reason")
    assert named[enum["SKB_DROP_REASON_NOT_SPECIFIED"]] == "NOT_SPECIFIED"
    if "SKB_CONSUMED" in enum:       # 6.3+: CONSUMED=1 moves NOT_SPECIFIED to 2
        assert enum["SKB_CONSUMED"] == 1 and enum["SKB_DROP_REASON_NOT_SPECIFIED"] == 2
    assert drop_reasons() == named and drop_reasons().source == "btf"


def test_enum_values_reach_the_c_code_and_a_member_the_kernel_lacks_gives_no_define():
    import dataclasses

    from node_agent.programs import CATALOGUE
    from node_agent.runtime.instance import compile_flags
    spec = dataclasses.replace(CATALOGUE["drops"], btf_enum_values={
        **CATALOGUE["drops"].btf_enum_values, "NP_NOT_THERE": ("skb_drop_reason", "SKB_DROP_REASON_NOT_THERE")})
    flags = compile_flags(spec, spec.defaults(), spec.strategies[0])
    enum = kernel_btf().enum("skb_drop_reason")
    if "SKB_CONSUMED" in enum:
        assert f"-DNP_SKB_CONSUMED={enum['SKB_CONSUMED']}" in flags
    assert not [f for f in flags if f.startswith("-DNP_NOT_THERE")]
    with pytest.raises(BTFError, match="enum no_such_enum_np"):
        kernel_btf().enum("no_such_enum_np")


# ---------------------------------------------------------------- headers

def _fake_split_headers(root: Path, version: str) -> None:
    gen = root / f"linux-headers-{version}-amd64"
    common = root / f"linux-headers-{version}-common"
    for d in (gen / "include" / "generated", gen / "arch" / "x86" / "include" / "generated",
              common / "include" / "linux", common / "arch" / "x86" / "include" / "asm"):
        d.mkdir(parents=True)
    (gen / ".config").write_text("CONFIG_X=y\n")
    (common / "include" / "linux" / "types.h").write_text("/* */\n")
    (gen / "Makefile").write_text(f"include {common}/Makefile\n")


@pytest.fixture
def fake_usr_src(tmp_path, monkeypatch):
    src = tmp_path / "usr-src"
    for v in ("5.10.0-30", "6.1.0-56", "6.12.0-1"):
        _fake_split_headers(src, v)
    monkeypatch.setattr(hdr, "USR_SRC", src)
    monkeypatch.setattr(hdr, "IMAGE_HEADERS", tmp_path / "no-image-headers")
    monkeypatch.setattr(hdr, "MODULES", tmp_path / "modules")
    monkeypatch.setattr(hdr, "RUN_DIR", tmp_path / "run")
    # setenv first so that the original state (usually: unset) is what gets
    # restored, also after find_kernel_headers() exported a fake tree.
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    return src


def test_nearest_split_headers_are_merged_into_one_tree(fake_usr_src, monkeypatch):
    found = hdr.find_kernel_headers("6.1.77-custom", set_env=True)
    tree = Path(found.path)
    assert found.version == "6.1.0-56-amd64" and not found.exact
    assert (tree / "include" / "generated").is_dir() and (tree / "include" / "linux" / "types.h").is_file()
    assert (tree / "arch" / "x86" / "include" / "generated").is_dir()
    assert (tree / "arch" / "x86" / "include" / "asm").is_dir()
    assert (tree / ".config").is_file()
    assert os.environ["BCC_KERNEL_SOURCE"] == str(tree)
    # A second agent reuses the tree.
    assert hdr.find_kernel_headers("6.1.77-custom", set_env=False).path == found.path
    # Same major.minor is missing: the closest version wins.
    os.environ.pop("BCC_KERNEL_SOURCE")
    assert hdr.find_kernel_headers("6.11.0", set_env=False).version == "6.12.0-1-amd64"


def _fake_image_headers(root: Path, version: str) -> Path:
    """A merged tree as hack/image/install.sh lays it out (both halves in one)."""
    tree = root / f"linux-headers-{version}-amd64"
    for d in (tree / "include" / "generated", tree / "include" / "linux",
              tree / "arch" / "x86" / "include" / "generated"):
        d.mkdir(parents=True)
    return tree


def test_image_headers_serve_nodes_without_any(fake_usr_src, monkeypatch, tmp_path):
    image = tmp_path / "image-headers"
    tree = _fake_image_headers(image, "6.1.0-57")
    monkeypatch.setattr(hdr, "IMAGE_HEADERS", image)
    monkeypatch.setattr(hdr, "USR_SRC", tmp_path / "empty")
    found = hdr.find_kernel_headers("6.18.0", set_env=False)
    # Complete already: used in place, no merged copy in the run directory.
    assert (found.source, found.path, found.version) == (hdr.IMAGE_SOURCE, str(tree), "6.1.0-57-amd64")
    assert "image fallback" in found.describe() and "NOT the running kernel" in found.describe()


def test_node_headers_win_over_the_image_unless_the_image_is_nearer(fake_usr_src, monkeypatch, tmp_path):
    image = tmp_path / "image-headers"
    _fake_image_headers(image, "6.1.0-57")
    monkeypatch.setattr(hdr, "IMAGE_HEADERS", image)
    # The node has 6.1.0-56: same series as the image's (6.1.0-57), the node's wins.
    assert hdr.find_kernel_headers("6.1.90", set_env=False).source == "/usr/src (nearest)"
    assert hdr.find_kernel_headers("6.2.0", set_env=False).version == "6.1.0-56-amd64"
    assert hdr.find_kernel_headers("5.10.200", set_env=False).version == "5.10.0-30-amd64"
    # An image series nearer than anything the node has (6.17 vs 6.12 for 6.18): the image's.
    nearer = _fake_image_headers(image, "6.17.0-1")
    found = hdr.find_kernel_headers("6.18.0", set_env=False)
    assert (found.source, found.path) == (hdr.IMAGE_SOURCE, str(nearer))


def test_bcc_kernel_source_wins_and_is_checked(fake_usr_src, monkeypatch, tmp_path):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(fake_usr_src / "linux-headers-5.10.0-30-common"))
    assert hdr.find_kernel_headers("6.1.0").source == "BCC_KERNEL_SOURCE"
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "nowhere"))
    with pytest.raises(hdr.HeadersNotFound, match="BCC_KERNEL_SOURCE"):
        hdr.find_kernel_headers("6.1.0")


def test_no_headers_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(hdr, "USR_SRC", tmp_path / "empty")
    monkeypatch.setattr(hdr, "IMAGE_HEADERS", tmp_path / "empty")
    monkeypatch.setattr(hdr, "MODULES", tmp_path / "modules")
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "")
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    with pytest.raises(hdr.HeadersNotFound) as e:
        hdr.find_kernel_headers("6.1.0")
    assert "linux-headers-$(uname -r)" in str(e.value) and "/lib/modules" in str(e.value)


@pytest.mark.kernel
def test_agent_without_headers_exits_naming_the_fix(tmp_path):
    need_root()
    pods = tmp_path / "pods.yaml"
    pods.write_text("pods: []\n")
    config = tmp_path / "agent.yaml"
    config.write_text(f"listen: 127.0.0.1:19999\nresolver: {{static: {{file: {pods}}}}}\nprograms: {{tcp_rtt: {{}}}}\n")
    env = dict(os.environ, BCC_KERNEL_SOURCE=str(tmp_path / "no-headers"))
    proc = subprocess.run([sys.executable, "-m", "node_agent.cli", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "linux-headers" in proc.stderr and "BCC_KERNEL_SOURCE" in proc.stderr


# ---------------------------------------------------------------- doctor

@pytest.mark.kernel
def test_doctor_reports_every_program_and_the_fallback():
    need_root()
    proc = subprocess.run([sys.executable, "-m", "node_agent.cli", "doctor"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    from node_agent.kernel.features import KernelFeatures
    first = "tp_btf" if KernelFeatures().btf_tracepoint("tcp:tcp_probe") else "raw_tracepoint"
    for program in ("tcp_retransmit", "tcp_connections", "tcp_rtt"):
        assert f"{program}: can load: yes, via {first}" in out
    assert "sock:inet_sock_set_state: yes" in out and "BTF (/sys/kernel/btf/vmlinux): yes" in out
    assert "kernel headers: /" in out and "capabilities:" in out
    loads = KernelFeatures().packet_loads is not None
    assert ("packet bytes in tp_btf programs: plain loads" in out) is loads
    assert ("packet bytes in tp_btf programs: bpf_probe_read_kernel" in out) is not loads
    if KernelFeatures().kprobes:       # e.g. Debian 12's 6.1 (make vm-test)
        assert "kprobes: yes" in out
        assert "rx_latency: can load: yes, via kprobe" in out
        assert "    kprobe: available" in out
    else:                              # e.g. this project's 6.18 build host
        assert "kprobes: no" in out
        assert f"rx_latency: can load: yes, via {first}" in out
        assert "kprobe: unavailable: kernel without kprobes" in out


@pytest.mark.parametrize("release, held, warned", [
    ("5.10.0-28-amd64", {"BPF", "PERFMON", "NET_ADMIN"}, True),
    ("5.10.0-28-amd64", {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"}, False),
    ("5.11.0", {"BPF", "PERFMON", "NET_ADMIN"}, False),
    ("6.18.0", {"BPF", "PERFMON", "NET_ADMIN"}, False),
])
def test_doctor_says_when_the_kernel_needs_sys_resource(release, held, warned):
    from node_agent import doctor
    from node_agent.kernel.features import KernelFeatures
    from node_agent.kernel.headers import KernelHeaders
    f = KernelFeatures(release=release)
    # Preset the cached properties: only the capability lines are under test.
    f.__dict__.update(capabilities=held, headers=KernelHeaders("/usr/src (nearest)", "/x", "6.1", False))
    lines, _ = doctor.report(f)
    says = any("spec.agent.raiseMemlockLimit: true" in line for line in lines)
    assert says is warned, "\n".join(lines)
    assert not any("not held (of the DaemonSet" in line for line in lines)


def test_doctor_says_no_program_loads_without_btf():
    """Every program reads kernel struct members at offsets from BTF, in every
    attach mode: without it the agent would fail each at its config stage."""
    from node_agent.doctor import report
    from node_agent.kernel.features import KernelFeatures
    from node_agent.programs import CATALOGUE

    class NoBTF(KernelFeatures):
        btf = False
    lines, ok = report(NoBTF())
    assert not ok
    assert "BTF (/sys/kernel/btf/vmlinux): no" in lines
    assert sum("can load: no (" in l and "no BTF" in l for l in lines) == len(CATALOGUE), lines


@pytest.mark.kernel
def test_doctor_fails_when_nothing_can_load():
    need_root()
    proc = subprocess.run(["capsh", "--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c",
                           f'exec "{sys.executable}" -m node_agent.cli doctor'],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout
    assert "can load: no (missing capabilities)" in proc.stdout

