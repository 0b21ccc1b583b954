"""The agent process: config -> programs + resolver -> /metrics, with hot reload.

Start: validate the config (refuse it whole, naming the field), mount what is
missing, find headers, start the resolver, serve HTTP, load the programs.
Then poll the config file; a valid change is applied (only the programs that
differ are reloaded), an invalid one is logged and counted and changes
nothing. SIGTERM/SIGINT: detach every program (nothing is pinned, so nothing
stays in the kernel) and exit 0.
"""
from __future__ import annotations

import hashlib
import logging
import signal
import sys
import threading

from node_agent.auth import AuthConfigError, KubernetesAuthorizer, api_client
from node_agent.config import AgentConfig, ConfigError, load_config
from node_agent.kernel.features import KernelFeatures
from node_agent.kernel.headers import HeadersNotFound
from node_agent.kernel.mounts import ensure_pseudo_filesystems
from node_agent.logs import setup_logging
from node_agent.metrics.collector import AgentCollector, AgentState
from node_agent.metrics.exposition import ExpositionCache
from node_agent.pod_status import PodReporter, write_termination_message
from node_agent.resolver.factory import make_resolver
from node_agent.runtime.manager import ProgramManager
from node_agent.runtime.memory import release_compiler_memory
from node_agent.server import serve
from node_agent.tls import ServingCertificate, TLSConfigError

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    pass


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class Agent:
    def __init__(self, config_path: str, config: AgentConfig, poll_seconds: float = 1.0,
                 listen: str | None = None):
        self.config_path = config_path
        self.listen = listen     # --listen: replaces the file's on every (re)load
        self.config = config
        self.poll_seconds = poll_seconds
        self.features = KernelFeatures()
        self.manager = ProgramManager(self.features)
        self.state = AgentState()
        self.collector = AgentCollector(self.manager, self.state)
        self.exposition = ExpositionCache()
        self.resolver = None
        self.server = None
        self.reporter = PodReporter()   # the pod's ProgramsLoaded condition (in a pod only)
        self.stopping = threading.Event()
        self._started = False

    # -- lifecycle ------------------------------------------------------
    def start(self) -> None:
        for m in ensure_pseudo_filesystems():
            if m.state == "failed":
                log.warning("pseudo filesystem missing", extra={"kv": {"path": m.path, "fstype": m.fstype,
                                                                       "error": m.error}})
        headers = self.features.headers
        if isinstance(headers, HeadersNotFound):
            raise StartupError(str(headers))
        log.info("kernel headers", extra={"kv": {"path": headers.path, "source": headers.source,
                                                 "version": headers.version or "unknown",
                                                 "matches_running_kernel": headers.exact}})
        self.state.info = {"kernel": self.features.release, "headers": headers.path,
                           "headers_source": headers.source}
        self._apply_labels(self.config)
        self.collector.node_addresses.get()   # warm up (netlink) before the first scrape
        self.resolver = self._start_resolver(self.config)
        self.state.resolver = self.resolver
        tls, authorizer = self._endpoint_security(self.config)
        try:
            self.server = serve(self.config.listen_host, self.config.listen_port, self.metrics_text, self.ready,
                                tls=tls, authorizer=authorizer)
            self.state.http = self.server
        except OSError as e:
            raise StartupError(f"listen: cannot serve on {self.config.listen}: {e.strerror or e}") from None
        log.info("serving", extra={"kv": {"listen": self.config.listen, "paths": "/metrics,/healthz,/readyz",
                                          **self._security_kv(self.config)}})
        self.state.configured = dict(self.config.programs)
        self.manager.apply(self.config.configured())
        self._release_compiler_memory()
        self._report_programs()
        self._started = True
        loaded = {i.name: i.attach for i in self.manager.running()}
        log.info("agent ready", extra={"kv": {"programs": ",".join(f"{n}:{a}" for n, a in loaded.items()) or "none",
                                              "failed": ",".join(self.manager.failed()) or "none"}})

    def _report_programs(self) -> None:
        self.reporter.report(self.manager.failed(), [i.name for i in self.manager.running()])

    def _release_compiler_memory(self) -> None:
        """One collection first (not served): it fills what scrapes cache from
        the kernel's BTF (drop reason names, bpf_prog_info offsets) while the
        BTF is still parsed; then the compile's memory goes (runtime/memory.py)."""
        try:
            self.collector.families()
        except Exception as e:   # a scrape will say so again; memory is released anyway
            log.warning("warm-up collection failed", extra={"kv": {"error": str(e)}})
        release_compiler_memory()

    def _start_resolver(self, config: AgentConfig):
        try:
            resolver = make_resolver(config)
            resolver.start()
        except Exception as e:   # a bad file, an unreadable kubeconfig, ...
            raise StartupError(f"resolver: {e}") from None
        return resolver

    @staticmethod
    def _endpoint_security(config: AgentConfig):
        """The serving certificate and the authorizer the config asks for (StartupError if unusable)."""
        tls = authorizer = None
        try:
            if config.tls is not None:
                tls = ServingCertificate(config.tls.cert_file, config.tls.key_file)
            if config.authorization is not None:
                authorizer = KubernetesAuthorizer(api_client(config.authorization.kubeconfig),
                                                  cache_seconds=config.authorization.cache_seconds)
        except (TLSConfigError, AuthConfigError) as e:
            raise StartupError(str(e)) from None
        return tls, authorizer

    @staticmethod
    def _security_kv(config: AgentConfig) -> dict:
        return {"metrics_tls": "on" if config.tls else "off",
                "metrics_authorization": "kubernetes" if config.authorization else "none"}

    def _apply_labels(self, config: AgentConfig) -> None:
        self.state.labels = config.labels
        logging.getLogger().setLevel(config.log_level.upper())

    def metrics_text(self) -> bytes:
        """One /metrics body: the collector's families, rendered by the exposition cache."""
        return self.exposition.render(self.collector.families())

    def ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "loading programs"
        if self.resolver is not None and not self.resolver.is_ready():
            return False, "resolver not ready"
        running = ",".join(sorted(i.name for i in self.manager.running())) or "none"
        return True, f"ready; programs: {running}"

    def run_forever(self) -> None:
        """Poll the config file until stopped."""
        digest = _file_digest(self.config_path)
        while not self.stopping.wait(self.poll_seconds):
            self.reporter.flush()   # a report the API server missed (it was down) goes again
            current = _file_digest(self.config_path)
            if current is None or current == digest:
                continue
            digest = current
            self.reload()

    def reload(self) -> bool:
        try:
            new = load_config(self.config_path, self.listen)
        except ConfigError as e:
            self.state.config_reload_errors += 1
            log.error("config refused; running set unchanged", extra={"kv": {"file": self.config_path,
                                                                            "error": str(e)}})
            return False
        if (new.listen_host, new.listen_port) != (self.config.listen_host, self.config.listen_port):
            log.warning("listen address changes need a restart; keeping the old one",
                        extra={"kv": {"listen": self.config.listen, "wanted": new.listen}})
        security_changed = (new.tls, new.authorization) != (self.config.tls, self.config.authorization)
        if security_changed:
            try:
                tls, authorizer = self._endpoint_security(new)
            except StartupError as e:
                self.state.config_reload_errors += 1
                log.error("config refused; running set unchanged", extra={"kv": {"file": self.config_path,
                                                                                "error": str(e)}})
                return False
        if new.resolver != self.config.resolver or new.node_name != self.config.node_name:
            try:
                resolver = self._start_resolver(new)
            except StartupError as e:
                self.state.config_reload_errors += 1
                log.error("config refused: new resolver failed; running set unchanged",
                          extra={"kv": {"error": str(e)}})
                return False
            old, self.resolver = self.resolver, resolver
            self.state.resolver = resolver
            old.stop()
        if security_changed:
            self.server.configure(tls, authorizer)
            log.info("metrics endpoint security changed", extra={"kv": self._security_kv(new)})
        self._apply_labels(new)
        self.state.configured = dict(new.programs)
        self.manager.apply(new.configured())
        self._release_compiler_memory()
        self._report_programs()
        self.config = new
        self.state.config_reloads += 1
        log.info("config applied", extra={"kv": {"file": self.config_path,
                                                 "programs": ",".join(new.programs) or "none"}})
        return True

    def stop(self) -> None:
        self.stopping.set()
        self.manager.stop_all()
        if self.resolver is not None:
            self.resolver.stop()
        if self.server is not None:
            self.server.shutdown()
        log.info("agent stopped; all programs detached")


def run(config_path: str, listen: str | None = None) -> int:
    setup_logging("info")
    try:
        config = load_config(config_path, listen)
    except ConfigError as e:
        log.error("invalid config", extra={"kv": {"file": config_path, "error": str(e)}})
        print(f"netprobe-agent: invalid config {config_path}: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    agent = Agent(config_path, config, listen=listen)

    def on_signal(signum, _frame):
        log.info("signal received, stopping", extra={"kv": {"signal": signal.Signals(signum).name}})
        agent.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
    except StartupError as e:
        log.error("cannot start", extra={"kv": {"error": str(e)}})
        print(f"netprobe-agent: {e}", file=sys.stderr)
        write_termination_message(str(e))
        agent.stop()
        return 1
    try:
        agent.run_forever()
    finally:
        agent.stop()
    return 0
