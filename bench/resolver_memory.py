"""Memory of the Kubernetes resolver with a cluster-wide peer watch.

    python bench/resolver_memory.py [--pods 5000] [--kubeconfig FILE]

Creates N pods (bound to fake nodes, reported Running with an address each;
no network namespaces needed) in a control plane, then starts the resolver
(peers=cluster) in a fresh child process, waits until both watches hold every
pod, and reports the child's resident memory before and after, and per pod.
Without --kubeconfig it starts its own control plane from bin/ (make
controlplane) and throws it away afterwards.

The child's baseline already holds the Python interpreter, the kubernetes
client, prometheus_client and (when importable) bcc, i.e. what the agent loads
anyway; the delta is what the pod cache, the watch threads and the
transient list pages cost. VmHWM shows the peak during the first list.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NODE_COUNT = 50          # pods are spread over this many fake nodes
OWN_NODE = "bench-node-0"
NAMESPACES = 20


def pod_body(index: int) -> dict:
    # A pod of ordinary size: the resolver drops all but a few fields, but the
    # JSON it reads (and briefly holds, one page at a time) is this big.
    app = f"app-{index % 250}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{app}-{index:05d}",
                     "labels": {"app": app, "tier": "backend", "bench": "resolver-memory"},
                     "annotations": {"example.com/owner": "team-" + str(index % 7)}},
        "spec": {"nodeName": f"bench-node-{index % NODE_COUNT}",
                 "automountServiceAccountToken": False,
                 "containers": [{"name": "app", "image": "registry.invalid/app:1.0",
                                 "ports": [{"containerPort": 8080}],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                                 "env": [{"name": "MODE", "value": "bench"}]}]},
    }


def pod_ips(index: int) -> list[str]:
    return [f"10.{100 + index // 65536}.{(index // 256) % 256}.{index % 256}",
            f"fd10::{index // 65536:x}:{index % 65536:x}"]


def create_pods(kubeconfig: str, count: int, threads: int) -> float:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = threads
    core = client.CoreV1Api(client.ApiClient(configuration))
    namespaces = [f"bench-resolver-{i}" for i in range(NAMESPACES)]
    for name in namespaces:
        core.create_namespace({"metadata": {"name": name}}, _preload_content=False)
    deadline = time.monotonic() + 60
    for name in namespaces:  # pods are refused until the default ServiceAccount exists
        while not core.list_namespaced_service_account(name, field_selector="metadata.name=default").items:
            if time.monotonic() > deadline:
                raise SystemExit(f"no default ServiceAccount in {name}: is the controller manager running?")
            time.sleep(0.2)

    def make(index: int) -> None:
        namespace = namespaces[index % NAMESPACES]
        body = pod_body(index)
        core.create_namespaced_pod(namespace, body, _preload_content=False)
        ips = pod_ips(index)
        core.patch_namespaced_pod_status(
            body["metadata"]["name"], namespace,
            {"status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
                        "hostIP": "192.168.0.1"}},
            _preload_content=False)

    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(make, range(count)), 1):
            if done % 1000 == 0:
                print(f"  {done} pods created", file=sys.stderr)
    return time.monotonic() - began


# ---- the measured child ----------------------------------------------------------------

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(kubeconfig: str, expected: int, with_bcc: bool) -> dict:
    import gc

    import kubernetes.client  # noqa: F401  (the agent imports these anyway)
    import prometheus_client  # noqa: F401
    bcc_loaded = False
    if with_bcc:
        try:
            import bcc  # noqa: F401
            bcc_loaded = True
        except ImportError:
            pass
    from node_agent.resolver.kubernetes import KubernetesResolver

    gc.collect()
    baseline = _status_kib("VmRSS")
    began = time.monotonic()
    resolver = KubernetesResolver(OWN_NODE, peers="cluster", kubeconfig=kubeconfig)
    resolver.start()
    if not resolver.wait_until_ready(600):
        raise SystemExit("the resolver did not sync within 600 s")
    now = time.monotonic()
    cluster = resolver.watches[-1]
    while cluster.index.counts(now)[0] < expected:
        if time.monotonic() - began > 600:
            raise SystemExit(f"only {cluster.index.counts(now)[0]} of {expected} pods after 600 s")
        time.sleep(0.5)
        now = time.monotonic()
    synced_after = time.monotonic() - began
    gc.collect()
    time.sleep(1)
    after = _status_kib("VmRSS")
    live = {w.name: w.index.counts(time.monotonic())[0] for w in resolver.watches}
    resolver.stop()
    return {"baseline_rss_kib": baseline, "synced_rss_kib": after, "peak_rss_kib": _status_kib("VmHWM"),
            "pods": live, "sync_seconds": round(synced_after, 2), "bcc_imported": bcc_loaded}


# ---- driver ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--kubeconfig", help="use this (admin) control plane instead of starting one")
    parser.add_argument("--no-bcc", action="store_true", help="leave bcc out of the baseline")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(args.kubeconfig, args.pods, not args.no_bcc)))
        return 0

    control_plane = None
    kubeconfig = args.kubeconfig
    if kubeconfig is None:
        sys.path.insert(0, str(REPO / "hack"))
        from netprobe_testbed.cluster import ControlPlane
        control_plane = ControlPlane().start()
        kubeconfig = str(control_plane.kubeconfig)
    try:
        print(f"creating {args.pods} pods over {NODE_COUNT} nodes in {NAMESPACES} namespaces ...",
              file=sys.stderr)
        seconds = create_pods(kubeconfig, args.pods, args.threads)
        print(f"  created in {seconds:.1f}s", file=sys.stderr)
        child = subprocess.run(
            [sys.executable, __file__, "--measure", "--pods", str(args.pods), "--kubeconfig", kubeconfig]
            + (["--no-bcc"] if args.no_bcc else []),
            capture_output=True, text=True, cwd=REPO, check=False)
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            return 1
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if control_plane is not None:
            control_plane.stop()

    delta_kib = result["synced_rss_kib"] - result["baseline_rss_kib"]
    print(f"pods cached: {result['pods']} (sync took {result['sync_seconds']} s)")
    print(f"RSS before start: {result['baseline_rss_kib'] / 1024:.1f} MiB"
          f" (python + kubernetes client + prometheus_client{' + bcc' if result['bcc_imported'] else ''})")
    print(f"RSS synced:       {result['synced_rss_kib'] / 1024:.1f} MiB  (peak {result['peak_rss_kib'] / 1024:.1f} MiB)")
    print(f"RSS delta:        {delta_kib / 1024:.1f} MiB = {delta_kib * 1024 / args.pods:.0f} bytes per pod")
    return 0


if __name__ == "__main__":
    sys.exit(main())
