"""A real Kubernetes node for tests: containerd and a kubelet as plain processes.

`RealNode` runs Debian's containerd (with runc and the CNI plugins of
containernetworking-plugins) with its own configuration, state and socket in a
work directory, and the kubelet built by `make controlplane`, registered as a
Node of a `ControlPlane(real_nodes=True)`. Pods get addresses from a CNI bridge
of their own (host-local IPAM), the node's address is the bridge's gateway
address, and pods (and host-network pods) reach kube-apiserver through the
`kubernetes` Service address, which a small nftables table forwards (no
kube-proxy runs; host-network pods of two nodes on one host would share that
forwarding, so give only one node's host-network pods API access at a time).
Images come from archives imported with `ctr`, never a
registry: a busybox image (Debian's busybox-static) serves as pause image and
for workload pods.

containerd (and so runc and every container it starts) runs in a mount
namespace of its own: the work directory is a shared mount in both, so the
kubelet's volume mounts and containerd's root filesystems are seen by both,
while `without_kernel_headers()` can lay empty directories over /usr/src and
/lib/modules for containers created meanwhile: a node without headers, as the
pods' hostPath volumes see it, without touching the host's files.

What it changes on the host, and restores or removes on stop (also after a
failed start): the sysctls the kubelet and the bridge plugin set, the kubelet's
cgroups (under a cgroup root of its own), the bridge, the nftables table, the
`cni-*` network namespaces, CNI result caches, /var/log/containers links,
KUBE-*/CNI-* iptables chains (when iptables exists), every mount under the work
directory, and the processes (containerd's shims included).

    with ControlPlane(real_nodes=True) as cp, RealNode(cp, images=[archive]) as node:
        cp.kubectl("get", "node", node.name)
"""
from __future__ import annotations

import contextlib
import ipaddress
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

from netprobe_testbed.cluster import BIN_DIR, KUBERNETES_SERVICE_IP, REPO_ROOT, ControlPlane, write_kubeconfig

CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "localhost/netprobe-busybox:1"
# Set by the kubelet (protectKernelDefaults: false) and the bridge plugin (gateway).
SYSCTLS = ("kernel.panic", "kernel.panic_on_oops", "vm.overcommit_memory", "vm.panic_on_oom",
           "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward")
CGROUP_FS = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")
CNI_STATE = Path("/var/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
PACKAGES_HINT = ("install Debian's containerd, runc, containernetworking-plugins and busybox-static "
                 "(`make setup` does: hack/setup.sh)")


class NodeError(RuntimeError):
    pass


def missing_prerequisites(bin_dir: Path = BIN_DIR) -> list[str]:
    """What this machine lacks to run a RealNode, as readable items (empty: nothing)."""
    missing = []
    for tool in ("containerd", "ctr", "runc", "nft", "ip", "nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (not on PATH)")
    for plugin in CNI_PLUGINS:
        if not os.access(CNI_BIN_DIR / plugin, os.X_OK):
            missing.append(f"CNI plugin {CNI_BIN_DIR / plugin}")
    if not BUSYBOX.is_file() or b"ld-linux" in BUSYBOX.read_bytes()[:4096]:
        missing.append(f"a static {BUSYBOX} (busybox-static)")
    if not os.access(bin_dir / "kubelet", os.X_OK):
        missing.append(f"{bin_dir / 'kubelet'} (`make controlplane` builds it)")
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def busybox_image(out: Path, ref: str = BUSYBOX_IMAGE) -> Path:
    """A one-layer image of Debian's static busybox with every applet linked in /bin.

    Its default command sleeps until killed, so it also serves as the pause image."""
    from importlib import util
    spec = util.spec_from_file_location("oci_pack", REPO_ROOT / "hack" / "image" / "oci_pack.py")
    oci_pack = util.module_from_spec(spec)
    spec.loader.exec_module(oci_pack)
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    layer = out.with_suffix(".layer.tar")
    with tarfile.open(layer, "w") as tar:
        for d in ("bin", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
                tar.addfile(info)
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size, info.mode = len(passwd), 0o644
        tar.addfile(info, io.BytesIO(passwd))
    try:
        oci_pack.pack(layer, {"Env": ["PATH=/bin"], "Cmd": ["sleep", "2147483647"], "WorkingDir": "/"},
                      ref, out, created_by="netprobe_testbed.node.busybox_image")
    finally:
        layer.unlink()
    return out


def image_without(archive: Path, paths: list[str], ref: str, out: Path) -> Path:
    """`archive`'s image with `paths` removed, as a second layer of whiteouts.

    The archive written holds the new layer, config and manifest only: the base
    layer is already in the content store of the containerd that imported
    `archive`, so `ctr images import` of this one reuses it."""
    import gzip
    import hashlib
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> bytes:
            return tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}").read()
        index = json.loads(tar.extractfile("index.json").read())
        (entry,) = index["manifests"]
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as whiteouts:
        for path in paths:
            parent, name = os.path.split(path.strip("/"))
            info = tarfile.TarInfo(os.path.join(parent, f".wh.{name}"))
            info.mode = 0o644
            whiteouts.addfile(info, io.BytesIO(b""))
    raw = layer.getvalue()
    compressed = gzip.compress(raw, mtime=0)

    def digest(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()
    config["rootfs"]["diff_ids"].append(digest(raw))
    config["history"].append({"created": config.get("created", ""), "created_by": f"remove {' '.join(paths)}"})
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest["config"] = {**manifest["config"], "digest": digest(config_bytes), "size": len(config_bytes)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": digest(compressed), "size": len(compressed)})
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    index["manifests"] = [{**entry, "digest": digest(manifest_bytes), "size": len(manifest_bytes),
                           "annotations": {"io.containerd.image.name": ref,
                                           "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}]
    with tarfile.open(out, "w") as tar:
        for name, data in (("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                           ("index.json", json.dumps(index).encode()),
                           *((f"blobs/sha256/{digest(d)[7:]}", d) for d in (compressed, config_bytes, manifest_bytes))):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def _free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _pick_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.248.0.0/13 that no route of this host overlaps."""
    routes = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout
    used = []
    for r in json.loads(routes or "[]"):
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                used.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
            except ValueError:
                pass
    for _ in range(200):
        candidate = ipaddress.ip_network(f"10.{248 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NodeError("no free /24 under 10.248.0.0/13 for the pod network")


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _cgroup_hierarchies() -> list[Path]:
    """Mounted cgroup hierarchies (v1 controllers and the unified one)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] in ("cgroup", "cgroup2") and fields[1].startswith(str(CGROUP_FS)):
            found.append(Path(fields[1]))
    return found


class _Proc:
    def __init__(self, name: str, argv: list[str], log: Path):
        self.name, self.argv, self.log = name, argv, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 20) -> None:
        if not self.running():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


class RealNode:
    """containerd + kubelet registered as Node `name` of `cp` (see the module doc)."""

    def __init__(self, cp: ControlPlane, images: list[Path] = (), name: str | None = None,
                 labels: dict[str, str] | None = None, bin_dir: Path = BIN_DIR,
                 start_timeout: float = 120):
        if not cp.real_nodes:
            raise NodeError("the control plane must be started with ControlPlane(real_nodes=True)")
        self.cp = cp
        self.images = [Path(p) for p in images]
        self.suffix = secrets.token_hex(3)
        self.name = name or f"netprobe-node-{self.suffix}"
        self.labels = labels or {}
        self.bin_dir = Path(bin_dir)
        self.start_timeout = start_timeout
        self.workdir: Path | None = None
        self.bridge = f"npnode{self.suffix[:4]}"
        self.nft_table = f"netprobe_node_{self.suffix}"
        self.cgroup_root = f"/netprobe-node-{self.suffix}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.ip = ""
        self.containerd: _Proc | None = None
        self.kubelet: _Proc | None = None
        self.imported: list[str] = []
        self._saved_sysctls: dict[str, str] = {}
        self._netns_before: set[str] = set()
        self._cni_before: set[str] = set()
        self._cni_existed = True
        self._log_links_existed = CONTAINER_LOG_LINKS.exists()
        self._log_links_before: set[str] = set()
        self._iptables_before: dict[str, set[str]] = {}
        self._made: list[str] = []   # what stop() must undo, in the order done

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "RealNode":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "RealNode":
        missing = missing_prerequisites(self.bin_dir)
        if missing:
            raise NodeError(f"cannot run a real node here; missing: {'; '.join(missing)}. {PACKAGES_HINT}")
        began = time.monotonic()
        try:
            self._snapshot_host()
            self.workdir = Path(tempfile.mkdtemp(prefix="netprobe-node-", dir="/var/tmp"))
            (self.workdir / "logs").mkdir()
            self._network()
            self._start_containerd()
            self._import_images()
            self._start_kubelet()
            self._wait_ready(began + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    # ---- host state --------------------------------------------------------------------
    def _snapshot_host(self) -> None:
        for name in SYSCTLS:
            try:
                self._saved_sysctls[name] = _sysctl_path(name).read_text().strip()
            except OSError:
                pass
        self._netns_before = set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()
        self._cni_existed = CNI_STATE.is_dir()
        self._cni_before = {str(p) for p in CNI_STATE.rglob("*")} if self._cni_existed else set()
        if self._log_links_existed:
            self._log_links_before = set(os.listdir(CONTAINER_LOG_LINKS))
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool):
                self._iptables_before[tool] = self._iptables_chains(tool)

    @staticmethod
    def _iptables_chains(tool: str) -> set[str]:
        chains = set()
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout
            chains |= {f"{table}/{line.split()[1]}" for line in out.splitlines() if line.startswith("-N ")}
        return chains

    def _network(self) -> None:
        self.subnet = _pick_subnet()
        hosts = list(self.subnet.hosts())
        self.ip = str(hosts[0])
        # The bridge exists before the first pod so the node's address does; the bridge
        # plugin adopts it (same name, same gateway address).
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        self._made.append("bridge")
        subprocess.run(["ip", "addr", "add", f"{self.ip}/{self.subnet.prefixlen}", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        # The `kubernetes` Service address -> kube-apiserver, for pods (prerouting) and for
        # host-network pods (output): what kube-proxy would do for this one Service.
        rules = f"""
table ip {self.nft_table} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{self.bridge}" ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 dnat to {self.ip}:{self.cp.port}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 dnat to {self.ip}:{self.cp.port}
  }}
}}"""
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
        self._made.append("nft")
        # Host-network connect() needs some route to the Service address before the output
        # hook rewrites it; without a default route, the bridge's (gone with the bridge).
        if subprocess.run(["ip", "route", "get", KUBERNETES_SERVICE_IP], capture_output=True).returncode != 0:
            subprocess.run(["ip", "route", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", self.bridge], check=True)
        net_d = self.workdir / "cni" / "net.d"
        net_d.mkdir(parents=True)
        (net_d / "10-netprobe.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": f"netprobe-{self.suffix}",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.workdir / "cni" / "ipam"),
                          "ranges": [[{"subnet": str(self.subnet), "gateway": self.ip}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ],
        }, indent=1))

    # ---- containerd ----------------------------------------------------------------------
    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def _start_containerd(self) -> None:
        c = self.workdir / "containerd"
        c.mkdir()
        config = f"""version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{BUSYBOX_IMAGE}"
  # Hosts without CAP_SYS_RESOURCE (this test bed's) cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{c / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{self.workdir / 'cni' / 'net.d'}"
"""
        (c / "config.toml").write_text(config)
        # The work directory shared between the host's mount namespace and containerd's.
        subprocess.run(["mount", "--bind", str(self.workdir), str(self.workdir)], check=True)
        self._made.append("workdir-mount")
        subprocess.run(["mount", "--make-shared", str(self.workdir)], check=True)
        self.containerd = _Proc("containerd", ["unshare", "--mount", "--propagation", "unchanged",
                                               shutil.which("containerd"), "--config", str(c / "config.toml")],
                                self.workdir / "logs" / "containerd.log")
        self.containerd.start()
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if not self.containerd.running():
                raise NodeError(f"containerd exited: {self.containerd.tail()}")
            if time.monotonic() > deadline:
                raise NodeError(f"containerd did not answer in 30s: {self.containerd.tail()}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        argv = ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _import_images(self) -> None:
        archives = [busybox_image(self.workdir / "busybox.tar"), *self.images]
        for archive in archives:
            self.import_image(archive)
        if BUSYBOX_IMAGE not in self.imported:
            raise NodeError(f"{BUSYBOX_IMAGE} missing after import: {self.imported}")

    def import_image(self, archive: Path) -> None:
        if not Path(archive).is_file():
            raise NodeError(f"image archive {archive} not found (make image builds bin/netprobe-image.tar)")
        self.ctr("images", "import", str(archive))
        self.imported = sorted(self.ctr("images", "ls", "-q").stdout.split())

    @contextlib.contextmanager
    def without_kernel_headers(self):
        """Containers created meanwhile find /usr/src and /lib/modules empty (see the module doc)."""
        ns = f"--mount=/proc/{self.containerd.popen.pid}/ns/mnt"
        done = []
        try:
            for path in ("/usr/src", "/lib/modules"):
                subprocess.run(["nsenter", ns, "mount", "-t", "tmpfs", "-o", "ro,size=64k,mode=755",
                                "netprobe-no-headers", path], check=True, capture_output=True)
                done.append(path)
            yield
        finally:
            for path in reversed(done):
                subprocess.run(["nsenter", ns, "umount", path], check=True, capture_output=True)

    # ---- kubelet ---------------------------------------------------------------------------
    def _start_kubelet(self) -> None:
        k = self.workdir / "kubelet"
        k.mkdir()
        port, healthz = _free_tcp_port(), _free_tcp_port()
        for hierarchy in _cgroup_hierarchies():
            (hierarchy / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
        self._made.append("cgroups")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": self.ip, "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root, "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"], "failSwapOn": False, "failCgroupV1": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            # A test node: the API server's requests are not authenticated (it has no
            # kubelet client certificate); nothing but this host can reach the address.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            # Imported images have no registry to come back from: never collect them.
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
            "nodeStatusUpdateFrequency": "2s", "syncFrequency": "5s",
            "serializeImagePulls": False,
        }
        (k / "config.yaml").write_text(yaml.safe_dump(config))
        kubeconfig = write_kubeconfig(k / "kubeconfig", self.cp.server, self.cp.ca_file,
                                      self.cp.admin_token, "netprobe-admin")
        labels = ",".join(f"{key}={value}" for key, value in self.labels.items())
        argv = [str(self.bin_dir / "kubelet"), f"--config={k / 'config.yaml'}", f"--kubeconfig={kubeconfig}",
                f"--root-dir={k / 'root'}", f"--cert-dir={k / 'pki'}", f"--hostname-override={self.name}",
                f"--node-ip={self.ip}", "--v=1", *([f"--node-labels={labels}"] if labels else [])]
        self.kubelet = _Proc("kubelet", argv, self.workdir / "logs" / "kubelet.log")
        self.kubelet.start()

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if not self.kubelet.running():
                raise NodeError(f"kubelet exited: {self.kubelet.tail()}")
            result = self.cp.kubectl("get", "node", self.name, "-o", "json", check=False)
            if result.returncode == 0:
                node = json.loads(result.stdout)
                ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
                taints = [t["key"] for t in node["spec"].get("taints", [])]
                if ready and ready[0]["status"] == "True" and not any("not-ready" in t for t in taints):
                    return
            if time.monotonic() > deadline:
                raise NodeError(f"node {self.name} not Ready: {result.stdout[-800:]}\n{self.kubelet.tail()}")
            time.sleep(0.5)

    def log_tail(self, which: str, n: int = 40) -> str:
        proc = {"kubelet": self.kubelet, "containerd": self.containerd}[which]
        return proc.tail(n) if proc else "(not started)"

    def container_log_tails(self, namespace: str, n: int = 40) -> dict[str, str]:
        """The last n lines of every container log of the namespace's pods, by
        `pod/container/restart`, read from the kubelet's log directory (so it
        works when the API server does not)."""
        tails = {}
        for path in sorted((self.workdir / "pod-logs").glob(f"{namespace}_*/*/*.log")):
            pod = path.parent.parent.name.split("_")[1]
            try:
                lines = path.read_text(errors="replace").splitlines()[-n:]
            except OSError as err:
                lines = [f"({err})"]
            tails[f"{pod}/{path.parent.name}/{path.stem}"] = "\n".join(lines)
        return tails

    # ---- pods ------------------------------------------------------------------------------
    def pod_pid(self, namespace: str, pod: str, container: str | None = None) -> int:
        """PID (in this host's PID namespace) of a running container of the pod."""
        running = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "RUNNING":
                running[fields[0]] = int(fields[1])
        for cid, pid in running.items():
            labels = json.loads(self.ctr("containers", "info", cid).stdout).get("Labels") or {}
            if (labels.get("io.kubernetes.pod.namespace"), labels.get("io.kubernetes.pod.name")) == (namespace, pod) \
                    and labels.get("io.cri-containerd.kind") == "container" \
                    and container in (None, labels.get("io.kubernetes.container.name")):
                return pid
        raise NodeError(f"no running container of pod {namespace}/{pod} on {self.name}")

    # ---- tear-down -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything and restore the host; every step runs even if one fails."""
        errors = []
        for step in (self._drain, self._stop_kubelet, self._stop_containerd, self._unmount,
                     self._remove_netns, self._remove_network, self._remove_cgroups,
                     self._restore_sysctls, self._remove_iptables_chains, self._remove_cni_state,
                     self._remove_log_links, self._remove_workdir):
            try:
                step()
            except Exception as err:  # noqa: BLE001 - all reported below
                errors.append(f"{step.__name__}: {err}")
        if errors:
            raise NodeError("restoring the host failed: " + "; ".join(errors))

    def _drain(self) -> None:
        """Pods deleted while the kubelet runs get a proper CNI teardown."""
        if not (self.kubelet and self.kubelet.running() and self.cp.workdir):
            return
        self.cp.kubectl("delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={self.name}",
                        "--grace-period=1", "--wait=false", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sandboxes = [l for l in self.ctr("containers", "ls", "-q", check=False).stdout.split()]
            if not sandboxes:
                break
            time.sleep(0.5)
        self.cp.kubectl("delete", "node", self.name, "--wait=false", check=False)

    def _stop_kubelet(self) -> None:
        if self.kubelet:
            self.kubelet.stop()

    def _stop_containerd(self) -> None:
        if not self.containerd:
            return
        if self.containerd.running():
            for line in self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]:
                fields = line.split()
                if fields:
                    self.ctr("tasks", "kill", "-s", "SIGKILL", fields[0], check=False)
            self.containerd.stop()
        # Shims outlive containerd by design; ours name our socket on their command line.
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and b"containerd-shim" in cmdline[0] and str(self.containerd_socket).encode() in cmdline:
                try:
                    os.kill(int(proc.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _unmount(self) -> None:
        if not self.workdir:
            return
        prefix = str(self.workdir) + "/"
        for _ in range(3):
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            ours = [m for m in mounts if m.startswith(prefix) or m == str(self.workdir)]
            if not ours:
                return
            for m in sorted(ours, key=len, reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True)
        raise NodeError(f"mounts left under {self.workdir}")

    def _remove_netns(self) -> None:
        if not NETNS_DIR.is_dir():
            return
        for name in set(os.listdir(NETNS_DIR)) - self._netns_before:
            if name.startswith("cni-"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    def _remove_network(self) -> None:
        if "nft" in self._made:
            subprocess.run(["nft", "delete", "table", "ip", self.nft_table], capture_output=True)
        if "bridge" in self._made:
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        # veth host ends of pods whose netns went away are gone with it; any left over:
        out = subprocess.run(["ip", "-j", "link", "show", "master", self.bridge], capture_output=True, text=True)
        if out.returncode == 0 and json.loads(out.stdout or "[]"):
            raise NodeError(f"interfaces still on bridge {self.bridge}")

    def _remove_cgroups(self) -> None:
        if "cgroups" not in self._made:
            return
        left = []
        for hierarchy in _cgroup_hierarchies():
            root = hierarchy / self.cgroup_root.lstrip("/")
            if not root.exists():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda e: -len(e[0])):
                for _ in range(20):
                    try:
                        os.rmdir(dirpath)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)   # tasks still exiting
                else:
                    left.append(dirpath)
        if left:
            raise NodeError(f"cgroups left: {left[:5]}")

    def _restore_sysctls(self) -> None:
        for name, value in self._saved_sysctls.items():
            path = _sysctl_path(name)
            if path.read_text().strip() != value:
                path.write_text(value + "\n")

    def _remove_iptables_chains(self) -> None:
        for tool, before in self._iptables_before.items():
            new = self._iptables_chains(tool) - before
            for table in ("filter", "nat", "mangle"):
                mine = {c.split("/", 1)[1] for c in new if c.startswith(table + "/")}
                if not mine:
                    continue
                rules = subprocess.run([tool, "-t", table, "-S"], capture_output=True, text=True).stdout
                for line in rules.splitlines():
                    parts = line.split()
                    if parts[:1] == ["-A"] and parts[1] not in mine and any(c in parts for c in mine):
                        subprocess.run([tool, "-t", table, "-D", *parts[1:]], capture_output=True)
                for chain in mine:
                    subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
                for chain in mine:
                    subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)

    def _remove_cni_state(self) -> None:
        if not CNI_STATE.is_dir():
            return
        for path in sorted((str(p) for p in CNI_STATE.rglob("*")), key=len, reverse=True):
            if path not in self._cni_before:
                p = Path(path)
                p.unlink() if not p.is_dir() or p.is_symlink() else p.rmdir()
        if not self._cni_existed:
            shutil.rmtree(CNI_STATE, ignore_errors=True)

    def _remove_log_links(self) -> None:
        if not CONTAINER_LOG_LINKS.exists():
            return
        if not self._log_links_existed:
            shutil.rmtree(CONTAINER_LOG_LINKS)
            return
        for name in set(os.listdir(CONTAINER_LOG_LINKS)) - self._log_links_before:
            (CONTAINER_LOG_LINKS / name).unlink()

    def _remove_workdir(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir)
            self.workdir = None
