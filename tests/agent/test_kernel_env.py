"""Reading the running kernel: BTF offsets, header discovery, doctor."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_agent.kernel import headers as hdr
from node_agent.kernel.btf import BTFError, kernel_btf
from node_agent.resolver.base import PodRef, normalize_ip
from node_agent.resolver.static import StaticResolver

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


def test_bcc_kernel_source_wins_and_is_checked(fake_usr_src, monkeypatch, tmp_path):
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(fake_usr_src / "linux-headers-5.10.0-30-common"))
    assert hdr.find_kernel_headers("6.1.0").source == "BCC_KERNEL_SOURCE"
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path / "nowhere"))
    with pytest.raises(hdr.HeadersNotFound, match="BCC_KERNEL_SOURCE"):
        hdr.find_kernel_headers("6.1.0")


def test_no_headers_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(hdr, "USR_SRC", tmp_path / "empty")
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
    for program, attach in (("tcp_retransmit", "raw_tracepoint"), ("tcp_connections", "raw_tracepoint"),
                            ("tcp_rtt", "raw_tracepoint")):
        assert f"{program}: can load: yes, via {attach}" in out
    assert "sock:inet_sock_set_state: yes" in out and "BTF (/sys/kernel/btf/vmlinux): yes" in out
    assert "kernel headers: /" in out and "capabilities:" in out
    from node_agent.kernel.features import KernelFeatures
    if KernelFeatures().kprobes:       # e.g. Debian 12's 6.1 (make vm-test)
        assert "kprobes: yes" in out
        assert "rx_latency: can load: yes, via kprobe" in out
        assert "    kprobe: available" in out
    else:                              # e.g. this project's 6.18 build host
        assert "kprobes: no" in out
        assert "rx_latency: can load: yes, via raw_tracepoint" in out
        assert "kprobe: unavailable: kernel without kprobes" in out


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


# ---------------------------------------------------------------- static resolver reload

def test_static_resolver_follows_its_file_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "pods.yaml"
    path.write_text("pods: [{namespace: shop, pod: cart-7, ips: [10.1.0.2]}]\n")
    r = StaticResolver(str(path), poll_seconds=0.05)
    r.start()
    try:
        assert r.lookup(normalize_ip("10.1.0.2")) == PodRef("shop", "cart-7")
        path.write_text("pods: [{namespace: shop, pod: cart-8, ips: [10.1.0.2]}]\n")
        deadline = time.monotonic() + 5
        while r.lookup(normalize_ip("10.1.0.2")).pod != "cart-8":
            assert time.monotonic() < deadline, "new file not picked up"
            time.sleep(0.05)
        path.write_text("pods: [{namespace: shop}]\n")
        deadline = time.monotonic() + 5
        while r._reload_errors == 0:
            assert time.monotonic() < deadline, "bad file not noticed"
            time.sleep(0.05)
        assert r.lookup(normalize_ip("10.1.0.2")).pod == "cart-8"
        errors = {m.name: m.samples[0].value for m in r.collect()}
        assert errors["netprobe_resolver_errors"] >= 1 and errors["netprobe_resolver_pods"] == 1
    finally:
        r.stop()
