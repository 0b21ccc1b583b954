"""The agent as a process: one failing program does not stop the others,
strategies fall back, the config hot-reloads (and refuses bad changes),
shutdown leaves nothing in the kernel, and it runs without CAP_SYS_ADMIN."""
from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import yaml

from agent_harness import ALL_PROGRAMS, AgentProcess, bpf_ids, bpf_objects_of, expected_attach, need_root
from netprobe_testbed import agent as testbed
from netprobe_testbed.netns import Lab, wait_until
from netprobe_testbed.processes import free_port
from node_agent.kernel.features import (CAPABILITY_NAMES, DAEMONSET_CAPABILITIES, KernelFeatures,
                                       effective_capabilities)
from node_agent.programs import CATALOGUE

pytestmark = pytest.mark.kernel

NAMES = {"a": ("shop", "cart-7", "cart"), "b": ("payments", "api-2", "api")}
OUT_AB = {"namespace": "shop", "pod": "cart-7", "peer_pod": "api-2", "direction": "outbound"}
IN_BA = {"namespace": "payments", "pod": "api-2", "peer_pod": "cart-7", "direction": "inbound"}


@pytest.fixture(scope="module")
def lab():
    need_root()
    with Lab(list(NAMES)) as lab:
        yield lab


@pytest.fixture
def pods_file(lab, tmp_path):
    return lab.write_static_resolver(tmp_path / "pods.yaml", NAMES)


def opened(agent, labels) -> float:
    return agent.scrape().value("netprobe_tcp_connections_opened_total", **labels)


def assert_counts_connections(lab, agent, port: int, n: int = 10) -> None:
    lab.serve_tcp("b", port)
    before = (opened(agent, OUT_AB), opened(agent, IN_BA))
    assert lab.connect_many("a", lab.pods["b"].ip4, port, n) == n
    assert (opened(agent, OUT_AB) - before[0], opened(agent, IN_BA) - before[1]) == (n, n)


def test_a_program_that_cannot_attach_leaves_the_others_working(lab, pods_file, agent_factory):
    if KernelFeatures().kprobes:   # (the fallback test above makes an attach fail on every kernel)
        pytest.skip("this kernel has kprobes: a forced kprobe attaches, no config makes an attach fail here")
    agent = agent_factory({"tcp_connections": {}, "rx_latency": {"attach": "kprobe"}}, pods_file).start()
    s = agent.scrape()
    assert s.value("netprobe_program_up", program="rx_latency") == 0
    assert s.value("netprobe_program_up", program="tcp_connections") == 1
    assert s.value("netprobe_program_errors_total", program="rx_latency", stage="attach") == 1
    assert s.value("netprobe_program_errors_total", program="tcp_connections") == 0
    assert [x.labels for x in s.all("netprobe_program_info")] == [
        {"program": "tcp_connections", "attach": expected_attach({"tcp_connections": {}})["tcp_connections"]}]
    assert_counts_connections(lab, agent, 7101)
    assert "stage=attach" in agent.log_path.read_text()


def test_a_failed_strategy_falls_back_to_the_next(lab):
    """A kprobe the features check is told exists (a kernel without kprobes,
    or a function not in this one): the attach really fails, and rx_latency
    must come up on its next strategy anyway (tp_btf), with the failed attempt
    counted. On a kernel with kprobes the real functions would attach, so
    the kprobe strategy points at a function no kernel has."""
    import dataclasses

    from node_agent.programs import CATALOGUE
    from node_agent.runtime.instance import ProgramInstance
    from node_agent.runtime.spec import Attach, Strategy

    class KprobesClaimed(KernelFeatures):
        def unmet(self, strategy):
            return []

    spec = CATALOGUE["rx_latency"]
    kprobe = spec.strategy("kprobe")
    target = "ip_rcv" if not KernelFeatures().kprobes else "netprobe_no_such_function"
    broken = Strategy("kprobe", (Attach("kprobe", target, "np_ip_rcv"),), defines=kprobe.defines)
    spec = dataclasses.replace(spec, strategies=(broken, *spec.strategies[1:]))
    inst = ProgramInstance(spec, spec.defaults(), KprobesClaimed())
    try:
        inst.start()
        assert inst.attach == spec.strategies[1].name
        assert [(f.stage, f.program) for f in inst.failures] == [("attach", "rx_latency")]
        assert f"kprobe {target}" in inst.failures[0].message
    finally:
        inst.stop()


def test_a_refused_raw_tracepoint_falls_back_to_the_tracepoint(lab):
    """A kernel that lists the event but refuses the raw attach (here: the raw
    strategy points at an event that does not exist, and the features check
    is told it does): tcp_rtt comes up on its tracepoint, the failure counted
    at the attach stage."""
    import dataclasses

    from node_agent.programs import CATALOGUE
    from node_agent.runtime.instance import ProgramInstance
    from node_agent.runtime.spec import Attach, Strategy

    class EverythingClaimed(KernelFeatures):
        def unmet(self, strategy):
            return []

    spec = CATALOGUE["tcp_rtt"]
    raw, tracepoint = spec.strategy("raw_tracepoint"), spec.strategy("tracepoint")
    broken_raw = Strategy("raw_tracepoint", (Attach("raw_tracepoint", "tcp:netprobe_no_such_event",
                                                    "np_raw_tcp_rtt"),), defines=raw.defines)
    spec = dataclasses.replace(spec, strategies=(broken_raw, tracepoint), choose_strategies=None)   # these two, in order
    inst = ProgramInstance(spec, spec.defaults(), EverythingClaimed())
    try:
        inst.start()
        assert inst.attach == "tracepoint"
        assert [(f.stage, f.program) for f in inst.failures] == [("attach", "tcp_rtt")]
        assert "netprobe_no_such_event" in inst.failures[0].message
    finally:
        inst.stop()


def test_tcp_retransmit_without_the_transmit_tracepoint_counts_retransmits_only(lab):
    """A kernel without net:net_dev_start_xmit: the segment counter's strategy
    is skipped (not failed) and the program loads with retransmits only."""
    from node_agent.programs import CATALOGUE
    from node_agent.runtime.instance import ProgramInstance

    class NoTransmitTracepoint(KernelFeatures):
        def unmet(self, strategy):
            if "net:net_dev_start_xmit" in strategy.tracepoints + strategy.raw_tracepoints + \
                    strategy.btf_tracepoints:
                return ["tracepoint net:net_dev_start_xmit missing"]
            return super().unmet(strategy)

    spec = CATALOGUE["tcp_retransmit"]
    inst = ProgramInstance(spec, spec.defaults(), NoTransmitTracepoint())
    try:
        inst.start()
        assert inst.attach == "retransmits_only"
        assert inst.failures == []
        assert len(inst.table("segments_sent")) == 0
    finally:
        inst.stop()


def test_hot_reload_changes_only_what_differs_and_refuses_bad_files(lab, pods_file, agent_factory):
    agent = agent_factory({"tcp_retransmit": {}}, pods_file).start()
    retransmit_progs = bpf_objects_of(agent.proc.pid)["prog"]
    assert len(retransmit_progs) == 3        # retransmits, retransmitted SYN-ACKs, segments sent

    def reloads_done(n):
        # the counter moves once a change is fully applied: the sync point
        wait_until(lambda: agent.scrape().value("netprobe_agent_config_reloads_total") == n,
                   timeout=60, what=f"{n} reloads applied")

    agent.write_config({"tcp_retransmit": {}, "tcp_connections": {}})
    reloads_done(1)
    assert agent.scrape().value("netprobe_program_up", program="tcp_connections") == 1
    assert retransmit_progs <= bpf_objects_of(agent.proc.pid)["prog"], "tcp_retransmit was reloaded"
    assert_counts_connections(lab, agent, 7102)

    # An invalid file: refused whole, logged, counted; the running set stays.
    held = bpf_objects_of(agent.proc.pid)["prog"]
    agent.write_config(text=agent.config_text({"tcp_retransmit": {}, "no_such_program": {}}))
    wait_until(lambda: agent.scrape().value("netprobe_agent_config_reload_errors_total") == 1,
               timeout=30, what="reload error counted")
    assert bpf_objects_of(agent.proc.pid)["prog"] == held
    s = agent.scrape()
    assert {x.labels["program"] for x in s.all("netprobe_program_info")} == {"tcp_retransmit", "tcp_connections"}
    assert "programs.no_such_program" in agent.log_path.read_text()

    # Options changed: that program alone is reloaded (new maps, new size).
    agent.write_config({"tcp_retransmit": {}, "tcp_connections": {"max_entries": 4096}})
    reloads_done(2)
    assert agent.scrape().value("netprobe_map_max_entries", program="tcp_connections", map="connections") == 4096
    assert retransmit_progs <= bpf_objects_of(agent.proc.pid)["prog"]
    connection_progs = bpf_objects_of(agent.proc.pid)["prog"] - retransmit_progs
    assert len(connection_progs) == 3

    # Removed: detached, gone from the kernel.
    agent.write_config({"tcp_retransmit": {}})
    reloads_done(3)
    assert not agent.scrape().all("netprobe_program_info", program="tcp_connections")
    assert not connection_progs & bpf_ids()["prog"]


def test_the_listen_flag_holds_the_port_whatever_the_file_says(lab, pods_file, agent_factory):
    """A pod passes its container port as --listen: the file's `listen` (which a
    lagging ConfigMap mount could hold at the old port) is not used, at start
    or on reload, and no restart is asked for."""
    agent = agent_factory({}, pods_file)          # its file says 127.0.0.1:<agent.port>
    file_port, flag_port = agent.port, free_port()
    agent.command = [*testbed.agent_command(), "--config", str(agent.config_path),
                     "--listen", f"127.0.0.1:{flag_port}"]
    agent.listen = f"127.0.0.1:{flag_port}"
    agent.start()
    assert not port_answers(file_port)
    agent.write_config(text=yaml.safe_dump(testbed.agent_config(f"127.0.0.1:{free_port()}", pods_file, {},
                                                                log_level="debug")))
    wait_until(lambda: agent.scrape().value("netprobe_agent_config_reloads_total") == 1, timeout=30,
               what="the reload applied")
    assert agent.ready() and not port_answers(file_port)
    assert "listen address changes need a restart" not in agent.log_path.read_text()


def port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_leaves_nothing_in_the_kernel(lab, pods_file, agent_factory, sig):
    pinned_before = sorted(p.name for p in Path("/sys/fs/bpf").iterdir())
    agent = agent_factory(ALL_PROGRAMS, pods_file).start()
    held = bpf_objects_of(agent.proc.pid)
    # one BPF program per hook of the strategy each program got
    hooks = sum(len(CATALOGUE[x.labels["program"]].strategy(x.labels["attach"]).attachments)
                for x in agent.scrape().all("netprobe_program_info"))
    assert hooks >= len(CATALOGUE) and len(held["prog"]) == hooks and held["map"], held
    agent.proc.send_signal(sig)
    assert agent.proc.wait(timeout=60) == 0
    left = bpf_ids()
    assert not held["prog"] & left["prog"], "programs left loaded"
    assert not held["map"] & left["map"], "maps left behind"
    assert sorted(p.name for p in Path("/sys/fs/bpf").iterdir()) == pinned_before
    assert "all programs detached" in agent.log_path.read_text()


def test_runs_with_only_the_daemonset_capabilities(lab, pods_file, tmp_path):
    keep = [c for c in DAEMONSET_CAPABILITIES if c in effective_capabilities()]
    drop = ",".join(f"cap_{c.lower()}" for c in CAPABILITY_NAMES if c not in DAEMONSET_CAPABILITIES)
    agent = AgentProcess(tmp_path, ALL_PROGRAMS, pods_file, prefix=["capsh", f"--drop={drop}", "--", "-c",
                                                                    'exec "$0" "$@"'])
    try:
        agent.start()
        status = open(f"/proc/{agent.proc.pid}/status").read()
        cap_eff = int(next(l for l in status.splitlines() if l.startswith("CapEff:")).split()[1], 16)
        held = {name for bit, name in enumerate(CAPABILITY_NAMES) if cap_eff >> bit & 1}
        assert held == set(keep) and "SYS_ADMIN" not in held
        s = agent.scrape()
        assert s.value("netprobe_program_up") == len(CATALOGUE), agent.log_path.read_text()[-2000:]
        assert_counts_connections(lab, agent, 7103)
    finally:
        assert agent.stop() == 0


@pytest.mark.parametrize("body,stage,says", [
    ("int np_broken(void *ctx) { return undeclared_thing; }", "compile", "undeclared_thing"),
    ("int np_broken(void *ctx) { *(volatile u64 *)ctx = 1; return 0; }", "load",
     "invalid bpf_context access"),
    # Reads beyond the tracepoint's record: the verifier allows it, the kernel
    # refuses to attach it to an event with a smaller record.
    ("int np_broken(void *ctx) { return *(volatile u64 *)((char *)ctx + 2000); }", "attach",
     "Permission denied"),
])
def test_each_stage_reports_its_own_failure(tmp_path, monkeypatch, body, stage, says):
    """A program that does not compile, that the verifier refuses, or that the
    kernel will not attach fails at that stage, with the compiler's, the
    verifier's or the kernel's words in the message, and nothing stays loaded."""
    need_root()
    from node_agent.runtime import instance
    from node_agent.runtime.spec import Attach, ProgramSpec, Strategy, max_entries_option

    (tmp_path / "broken.c").write_text('#include "netprobe.h"\n' + body + "\n")
    (tmp_path / "netprobe.h").write_text((instance.BPF_DIR / "netprobe.h").read_text())
    monkeypatch.setattr(instance, "BPF_DIR", tmp_path)
    spec = ProgramSpec(name="broken", source="broken.c", summary="", options=(max_entries_option(128),),
                       strategies=(Strategy("tracepoint", (Attach("tracepoint", "tcp:tcp_probe", "np_broken"),)),),
                       metrics=())
    inst = instance.ProgramInstance(spec, spec.defaults(), KernelFeatures())
    held_before = bpf_objects_of(os.getpid())
    try:
        with pytest.raises(instance.ProgramError) as e:
            inst.start()
    finally:
        inst.stop()
    assert e.value.stage == stage, e.value.message
    assert says in e.value.message
    assert inst.bpf is None
    assert bpf_objects_of(os.getpid()) == held_before, "a failed attempt left programs or maps open"


def test_a_changed_resolver_file_relabels_without_restart(lab, pods_file, agent_factory):
    """Labels are resolved at scrape time from the resolver's cache, and the
    static file is re-read when it changes."""
    agent = agent_factory({"tcp_connections": {}}, pods_file).start()
    assert_counts_connections(lab, agent, 7104, n=4)
    renamed = dict(NAMES, a=("shop", "cart-9", "cart"))
    lab.write_static_resolver(pods_file, renamed)
    moved = dict(OUT_AB, pod="cart-9")
    wait_until(lambda: opened(agent, moved) >= 4, timeout=15, what="series under the new pod name")
    assert opened(agent, OUT_AB) == 0
    assert agent.scrape().value("netprobe_tcp_connections_opened_total", direction="inbound",
                                pod="api-2", peer_pod="cart-9") >= 4
