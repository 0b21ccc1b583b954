"""A real Kubernetes control plane as plain local processes, for tests and for people.

`ControlPlane` runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(built by `make controlplane` into the repo's bin/) on loopback, with freshly generated
certificates, ServiceAccount signing keys and a static admin token, all in one
temporary directory that `stop()` removes together with every process it started.

By default there is no kubelet: nothing runs pods. `netprobe_testbed.kube` registers fake
Nodes and plays the kubelet's part on pod status, so the scheduler, the DaemonSet
controller and everything that watches pods behave as on a real cluster. With
`real_nodes=True` the control plane is ready for real kubelets (`netprobe_testbed.node`):
the node lifecycle and endpoints controllers run, kube-apiserver listens on every address
(pods reach it through the `kubernetes` Service address, which the node forwards) and
reaches kubelets at their InternalIP.

By hand:  python -m netprobe_testbed.cluster up     (foreground until Ctrl-C)
          python -m netprobe_testbed.cluster down   (stops an `up` running elsewhere)
"""
from __future__ import annotations

import argparse
import atexit
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from .processes import die_with_parent, free_ports, log_tail, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("NETPROBE_BIN_DIR", REPO_ROOT / "bin"))
CONTROLPLANE_GO_MOD = REPO_ROOT / "hack" / "controlplane" / "go.mod"

# Start order; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
BINARIES = COMPONENTS + ("kubectl",)

# Controllers that matter without kubelets. Left out on purpose: node-lifecycle (fake
# nodes send no heartbeats; it would taint them unreachable and evict their pods), and
# everything about volumes, jobs, services and cloud providers.
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "daemonset-controller",
    "deployment-controller",
    "replicaset-controller",
)

# With real nodes: taints and readiness from kubelet heartbeats, Service endpoints (what
# Prometheus' endpoints discovery reads, as the ServiceMonitor asks).
REAL_NODE_CONTROLLERS = (
    "node-lifecycle-controller",
    "endpoints-controller",
    "endpointslice-controller",
)

# Never routed: no kube-proxy runs, Service IPs are only allocated (a real node of the
# test bed forwards the `kubernetes` Service's address, KUBERNETES_SERVICE_IP, itself).
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Where `up` records itself for `down`. Tests of the command line point it elsewhere.
STATE_FILE = Path(os.environ.get("NETPROBE_CLUSTER_STATE")
                  or Path(tempfile.gettempdir()) / f"netprobe-cluster-{os.getuid()}.json")


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or used."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call failed; unlike CalledProcessError, str() shows its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()}"


def missing_binaries(bin_dir: Path = BIN_DIR) -> list[str]:
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def process_running(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pinned_kubernetes_version() -> str:
    """The release pinned in hack/controlplane/go.mod, e.g. "v1.34.4"."""
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)",
                      CONTROLPLANE_GO_MOD.read_text(), re.MULTILINE)
    if not match:
        raise ControlPlaneError(f"no k8s.io/kubernetes requirement in {CONTROLPLANE_GO_MOD}")
    return match.group(1)


@dataclass
class _Pki:
    ca_file: Path
    serving_cert: Path
    serving_key: Path
    sa_private_key: Path
    sa_public_key: Path


def _write_pki(directory: Path) -> _Pki:
    # Imported here: only starting a control plane needs it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(mode=0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365)

    def write_key(path: Path, key) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("netprobe-testbed-ca")).issuer_name(name("netprobe-testbed-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    # One serving certificate for the apiserver, controller-manager and scheduler: all
    # listen on 127.0.0.1 only.
    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving_cert = (
        x509.CertificateBuilder()
        .subject_name(name("kube-apiserver")).issuer_name(ca_cert.subject)
        .public_key(serving_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            # What pods dial (in-cluster config): the `kubernetes` Service's address.
            x509.IPAddress(ipaddress.ip_address(KUBERNETES_SERVICE_IP)),
        ]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = ec.generate_private_key(ec.SECP256R1())

    pki = _Pki(ca_file=directory / "ca.crt",
               serving_cert=directory / "serving.crt", serving_key=directory / "serving.key",
               sa_private_key=directory / "sa.key", sa_public_key=directory / "sa.pub")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.serving_cert.write_bytes(serving_cert.public_bytes(serialization.Encoding.PEM))
    write_key(pki.serving_key, serving_key)
    write_key(pki.sa_private_key, sa_key)
    pki.sa_public_key.write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "netprobe-testbed",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "netprobe-testbed",
                      "context": {"cluster": "netprobe-testbed", "user": user}}],
        "current-context": "netprobe-testbed",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class _Process:
    """One component: its command line, its log file and, while running, its process."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            # Own session: Ctrl-C in a terminal reaches only the launcher, which then
            # stops the components in order.
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=die_with_parent(signal.SIGKILL))

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        stop_process(self.popen, grace)
        self.popen = None


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler on loopback.

    Attributes once started: server (https URL), kubeconfig (admin, system:masters),
    ca_file, admin_token, log_dir, workdir, start_seconds, version.

        with ControlPlane() as cp:
            cp.kubectl("get", "namespaces")
    """

    # Starts over on fresh ports when one picked was taken before its component bound it.
    PORT_ATTEMPTS = 3

    def __init__(self, workdir: str | os.PathLike | None = None, bin_dir: Path = BIN_DIR,
                 start_timeout: float = 120.0, real_nodes: bool = False):
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self.real_nodes = real_nodes
        self.port = 0   # kube-apiserver's port once started
        self.bin_dir = Path(bin_dir)
        self.start_timeout = start_timeout
        self.workdir: Path | None = None
        self.server = ""
        self.kubeconfig: Path | None = None
        self.ca_file: Path | None = None
        self.admin_token = ""
        self.log_dir: Path | None = None
        self.start_seconds: float | None = None
        self.version = pinned_kubernetes_version()
        self._processes: dict[str, _Process] = {}
        self._health_urls: dict[str, str] = {}
        self._ssl: ssl.SSLContext | None = None

    # ---- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        if self.workdir is not None:
            raise ControlPlaneError("this control plane is already started")
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                f"control plane binaries missing from {self.bin_dir}: {', '.join(missing)}; "
                "run `make controlplane` (builds them from hack/controlplane/go.mod)")
        began = time.monotonic()
        self._make_workdir()
        atexit.register(self.stop)
        deadline = began + self.start_timeout
        try:
            for attempt in range(1, self.PORT_ATTEMPTS + 1):
                try:
                    self._start_components(deadline)
                    break
                except ControlPlaneError as error:
                    # A free port picked for a component can be taken by another
                    # process before the component binds it: start over on new ports.
                    if "address already in use" not in str(error) or attempt == self.PORT_ATTEMPTS:
                        raise
                    self._stop_processes()
                    for entry in self.workdir.iterdir():
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _start_components(self, deadline: float) -> None:
        self._prepare()
        for name in COMPONENTS:
            self._processes[name].start()
            self._wait_healthy(name, deadline)
        # The controllers are up once the ServiceAccount controller has made the default
        # ServiceAccount: pods cannot be created in a namespace before that.
        self._wait_for("the default ServiceAccount",
                       lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                       deadline)

    def _stop_processes(self) -> None:
        for name in reversed(COMPONENTS):
            if name in self._processes:
                self._processes[name].stop()
        self._processes.clear()

    def stop(self) -> None:
        """Stop every process this control plane started and delete its directory."""
        self._stop_processes()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        atexit.unregister(self.stop)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver only; etcd, the controllers and the scheduler stay up."""
        self._require_started()
        self._processes["kube-apiserver"].stop()

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same port, certificates and etcd."""
        self._require_started()
        apiserver = self._processes["kube-apiserver"]
        if apiserver.running():
            raise ControlPlaneError("kube-apiserver is already running")
        apiserver.start()
        self._wait_healthy("kube-apiserver", deadline=time.monotonic() + self.start_timeout)

    def running_pids(self) -> dict[str, int]:
        return {name: p.popen.pid for name, p in self._processes.items() if p.running()}

    def log_tail(self, component: str, n: int = 40) -> str:
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
        return log_tail(self.log_dir and self.log_dir / f"{component}.log", n)

    # ---- credentials and clients -------------------------------------------------------

    def token_for(self, namespace: str, serviceaccount: str, seconds: int = 3600) -> str:
        """A ServiceAccount token issued by the API server (TokenRequest)."""
        self._require_started()
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": int(seconds)}}
        status, reply = self._request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{serviceaccount}/token", body)
        if status != 201:
            raise ControlPlaneError(
                f"TokenRequest for {namespace}/{serviceaccount} failed ({status}): "
                f"{reply.get('message', reply) if isinstance(reply, dict) else reply}")
        return reply["status"]["token"]

    def kubeconfig_for(self, namespace: str, serviceaccount: str, seconds: int = 86400) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount, with exactly its rights."""
        token = self.token_for(namespace, serviceaccount, seconds)
        path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{serviceaccount}.kubeconfig"
        return write_kubeconfig(path, self.server, self.ca_file, token,
                                user=f"system:serviceaccount:{namespace}:{serviceaccount}")

    def kubectl(self, *args: str, kubeconfig: str | os.PathLike | None = None, check: bool = True,
                input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run bin/kubectl against this control plane (admin unless kubeconfig is given)."""
        self._require_started()
        argv = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig),
                *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def api_client(self, kubeconfig: str | os.PathLike | None = None):
        """A kubernetes.client.ApiClient (admin unless kubeconfig is given)."""
        from kubernetes import config
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    # ---- internals -----------------------------------------------------------------------

    def _require_started(self) -> None:
        if self.workdir is None:
            raise ControlPlaneError("the control plane is not started")

    def _make_workdir(self) -> None:
        if self._requested_workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="netprobe-cp-"))
            return
        # A given workdir belongs to the control plane (removed on stop), so refuse one
        # that holds anything else.
        workdir = self._requested_workdir
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise ControlPlaneError(f"workdir {workdir} is not empty; it is deleted on stop")
        self.workdir = workdir

    def _prepare(self) -> None:
        work = self.workdir
        pki = _write_pki(work / "pki")
        self.ca_file = pki.ca_file
        self.log_dir = work / "logs"
        self.log_dir.mkdir()
        (work / "kubeconfigs").mkdir()
        self._ssl = ssl.create_default_context(cafile=str(pki.ca_file))

        etcd_client, etcd_peer, apiserver, controller_manager, scheduler = free_ports(5)
        self.server = f"https://127.0.0.1:{apiserver}"
        self.port = apiserver

        # Static tokens: the admin (system:masters), and the identities the default RBAC
        # policy already grants to the controller manager and the scheduler.
        self.admin_token = secrets.token_urlsafe(32)
        kcm_token, scheduler_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        tokens = work / "pki" / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},netprobe-admin,netprobe-admin,"system:masters"\n'
            f"{kcm_token},system:kube-controller-manager,system:kube-controller-manager\n"
            f"{scheduler_token},system:kube-scheduler,system:kube-scheduler\n")
        tokens.chmod(0o600)
        kubeconfigs = work / "kubeconfigs"
        self.kubeconfig = write_kubeconfig(kubeconfigs / "admin.kubeconfig", self.server,
                                           pki.ca_file, self.admin_token, "netprobe-admin")
        kcm_kubeconfig = write_kubeconfig(kubeconfigs / "kube-controller-manager.kubeconfig",
                                          self.server, pki.ca_file, kcm_token,
                                          "system:kube-controller-manager")
        scheduler_kubeconfig = write_kubeconfig(kubeconfigs / "kube-scheduler.kubeconfig",
                                                self.server, pki.ca_file, scheduler_token,
                                                "system:kube-scheduler")

        etcd_client_url = f"http://127.0.0.1:{etcd_client}"
        etcd_peer_url = f"http://127.0.0.1:{etcd_peer}"
        serving = [f"--tls-cert-file={pki.serving_cert}",
                   f"--tls-private-key-file={pki.serving_key}"]
        # The controller manager and scheduler would otherwise look up the request-header
        # (front proxy) CA in kube-system and log an error every few seconds: there is
        # no front proxy, so give them the client CA and skip that lookup.
        delegated_authn = ["--authentication-skip-lookup=true", f"--client-ca-file={pki.ca_file}"]
        argv = {
            "etcd": [
                "--name=netprobe-testbed", f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={etcd_client_url}",
                f"--advertise-client-urls={etcd_client_url}",
                f"--listen-peer-urls={etcd_peer_url}",
                f"--initial-advertise-peer-urls={etcd_peer_url}",
                f"--initial-cluster=netprobe-testbed={etcd_peer_url}",
                # Throwaway data: durability is not worth the fsync latency on a shared disk.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                f"--etcd-servers={etcd_client_url}",
                # Real nodes' pods reach it through the node's address; otherwise loopback only.
                f"--bind-address={'0.0.0.0' if self.real_nodes else '127.0.0.1'}",
                "--advertise-address=127.0.0.1",
                f"--secure-port={apiserver}", *serving,
                f"--cert-dir={work / 'pki'}",
                f"--client-ca-file={pki.ca_file}",
                f"--token-auth-file={tokens}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The agent's DaemonSet is privileged.
                "--allow-privileged=true",
                # 127.0.0.1 is not a valid Endpoints address; nothing routes to the
                # `kubernetes` Service here anyway.
                "--endpoint-reconciler-type=none",
                # Without it a SIGTERM waits for the controllers' open watches and
                # stop_apiserver() ends in SIGKILL; with it watches are closed and the
                # apiserver exits in about a second, as in a rolling restart.
                "--shutdown-watch-termination-grace-period=2s",
                "--profiling=false",
                # logs/exec: kubelets are reached at the address they registered, not by name.
                *(["--kubelet-preferred-address-types=InternalIP"] if self.real_nodes else []),
            ],
            "kube-controller-manager": [
                f"--kubeconfig={kcm_kubeconfig}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                *delegated_authn,
                "--bind-address=127.0.0.1", f"--secure-port={controller_manager}", *serving,
                f"--controllers={','.join(CONTROLLERS + (REAL_NODE_CONTROLLERS if self.real_nodes else ()))}",
                "--leader-elect=false",
                # Each controller acts as its own ServiceAccount, so RBAC applies as in a
                # real cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_private_key}",
                f"--root-ca-file={pki.ca_file}",
                "--profiling=false",
            ],
            "kube-scheduler": [
                f"--kubeconfig={scheduler_kubeconfig}",
                f"--authentication-kubeconfig={scheduler_kubeconfig}",
                f"--authorization-kubeconfig={scheduler_kubeconfig}",
                *delegated_authn,
                "--bind-address=127.0.0.1", f"--secure-port={scheduler}", *serving,
                "--leader-elect=false",
                "--profiling=false",
            ],
        }
        self._health_urls = {
            "etcd": f"{etcd_client_url}/health",
            "kube-apiserver": f"{self.server}/readyz",
            "kube-controller-manager": f"https://127.0.0.1:{controller_manager}/healthz",
            "kube-scheduler": f"https://127.0.0.1:{scheduler}/healthz",
        }
        self._processes = {
            name: _Process(name, [str(self.bin_dir / name), *argv[name]],
                           self.log_dir / f"{name}.log")
            for name in COMPONENTS
        }

    def _request(self, method: str, url_or_path: str, body: dict | None = None,
                 timeout: float = 5.0) -> tuple[int, object]:
        """One HTTP call as admin; returns (status, parsed JSON or text). Status 0: no answer."""
        url = url_or_path if "://" in url_or_path else self.server + url_or_path
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.admin_token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        context = self._ssl if url.startswith("https:") else None
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except (OSError, ssl.SSLError):
            return 0, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def _get(self, url_or_path: str) -> tuple[int, object]:
        return self._request("GET", url_or_path)

    def _wait_healthy(self, name: str, deadline: float) -> None:
        self._wait_for(f"{name} to report healthy",
                       lambda: self._get(self._health_urls[name])[0] == 200,
                       deadline, watch=name)

    def _wait_for(self, what: str, ready, deadline: float, watch: str | None = None) -> None:
        while True:
            for name in ([watch] if watch else self._processes):
                process = self._processes[name]
                if process.popen is not None and process.popen.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with status {process.popen.returncode} while waiting "
                        f"for {what}; last lines of {process.log_path}:\n{self.log_tail(name)}")
            if ready():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n}:\n{self.log_tail(n, 15)}" for n in self._processes)
                raise ControlPlaneError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.2)


# ---- command line ------------------------------------------------------------------------

def _read_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _cmd_up(args: argparse.Namespace) -> int:
    state = _read_state()
    if state and process_running(state["pid"]):
        print(f"a control plane is already up (pid {state['pid']}, kubeconfig "
              f"{state['kubeconfig']}); `make cluster-down` stops it", file=sys.stderr)
        return 1
    missing = missing_binaries()
    if missing:
        print(f"error: missing {', '.join(missing)} in {BIN_DIR}; run `make controlplane` first",
              file=sys.stderr)
        return 1

    stopping = []

    def request_stop(signum, _frame):
        stopping.append(signum)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    control_plane = ControlPlane(workdir=args.workdir)
    print(f"starting Kubernetes {control_plane.version} control plane ...", flush=True)
    try:
        control_plane.start()
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    STATE_FILE.write_text(json.dumps({"pid": os.getpid(), "kubeconfig": str(control_plane.kubeconfig),
                                      "server": control_plane.server,
                                      "workdir": str(control_plane.workdir)}))
    print(f"""control plane up in {control_plane.start_seconds:.1f}s at {control_plane.server}
kubeconfig (admin): {control_plane.kubeconfig}
  export KUBECONFIG={control_plane.kubeconfig}
  {BIN_DIR / 'kubectl'} get namespaces
logs: {control_plane.log_dir}
Ctrl-C here (or `make cluster-down`) stops it and deletes {control_plane.workdir}""", flush=True)
    status = 0
    try:
        while not stopping:
            dead = [n for n in COMPONENTS if n not in control_plane.running_pids()]
            if dead:
                print(f"error: {dead[0]} exited; last lines of its log:\n"
                      f"{control_plane.log_tail(dead[0])}", file=sys.stderr)
                status = 1
                break
            time.sleep(1)
    finally:
        _say("stopping the control plane ...")
        control_plane.stop()
        if (_read_state() or {}).get("pid") == os.getpid():
            STATE_FILE.unlink(missing_ok=True)
    _say("stopped")
    return status


def _say(message: str) -> None:
    """Print, unless stdout is gone (`make cluster-up | tee log` after Ctrl-C): the
    clean-up must happen anyway."""
    try:
        print(message, flush=True)
    except OSError:
        pass


def _cmd_down(_args: argparse.Namespace) -> int:
    state = _read_state()
    if state is None:
        print("no control plane is up (nothing started with `cluster up`)")
        return 0
    pid = state["pid"]
    if not process_running(pid):
        # Its launcher was killed outright: its components died with it (PDEATHSIG);
        # only the directory is left.
        shutil.rmtree(state["workdir"], ignore_errors=True)
        STATE_FILE.unlink(missing_ok=True)
        print(f"the control plane's launcher (pid {pid}) was already gone; removed its files")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while process_running(pid):
        if time.monotonic() > deadline:
            print(f"error: launcher pid {pid} did not exit within 60s", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"control plane (pid {pid}) stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netprobe_testbed.cluster",
                                     description="Run the test bed's Kubernetes control plane.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start it and stay in the foreground until Ctrl-C")
    up.add_argument("--workdir", help="directory for its files (default: a new temp dir); "
                                      "must be empty, deleted on stop")
    up.set_defaults(run=_cmd_up)
    down = commands.add_parser("down", help="stop the one `up` started")
    down.set_defaults(run=_cmd_down)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
