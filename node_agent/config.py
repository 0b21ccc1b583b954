"""The agent's config file (docs/agent-config.md), validated whole.

Every error names the field it is about ("programs.tcp_rtt.max_entries: ...")
so an operator rendering the file, or a person writing it, can fix it.
"""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from node_agent.programs import CATALOGUE
from node_agent.runtime.spec import ProgramSpec

LOG_LEVELS = ("debug", "info", "warning", "error")
ALWAYS_LABELS = ("namespace", "pod")
OPTIONAL_LABELS = ("workload", "peer_namespace", "peer_pod", "peer_workload")
KUBERNETES_PEERS = ("cluster", "node")


class ConfigError(ValueError):
    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}" if field_path else message)
        self.field = field_path
        self.message = message


@dataclass(frozen=True)
class StaticResolverConfig:
    file: str


@dataclass(frozen=True)
class KubernetesResolverConfig:
    peers: str = "cluster"
    deleted_pod_grace_seconds: float = 60.0
    kubeconfig: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    cert_file: str
    key_file: str


@dataclass(frozen=True)
class AuthorizationConfig:
    cache_seconds: float = 30.0
    kubeconfig: str | None = None


@dataclass(frozen=True)
class AgentConfig:
    listen_host: str
    listen_port: int
    node_name: str
    log_level: str
    labels: tuple[str, ...]                 # namespace, pod, then the optional ones asked for
    resolver: StaticResolverConfig | KubernetesResolverConfig
    programs: dict[str, dict[str, Any]] = field(default_factory=dict)   # name -> full options
    digest: str = ""                        # of the file's bytes
    tls: TLSConfig | None = None            # /metrics over HTTPS
    authorization: AuthorizationConfig | None = None   # bearer token -> TokenReview + SubjectAccessReview

    def configured(self) -> dict[str, tuple[ProgramSpec, dict[str, Any]]]:
        """What the runtime runs: each program's description with its options."""
        return {name: (CATALOGUE[name], options) for name, options in self.programs.items()}

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where, f"expected a mapping, got {type(value).__name__}")
    return value


def _unknown(data: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(path, f"unknown field (allowed: {', '.join(allowed)})")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a string, got {type(value).__name__} {value!r}")
    return value


def parse_listen(value: Any) -> tuple[str, int]:
    text = _string(value, "listen")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("listen", f"expected host:port, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "0.0.0.0", int(port)


def _labels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ALWAYS_LABELS
    if not isinstance(value, list):
        raise ConfigError("labels", f"expected a list, got {type(value).__name__}")
    for i, label in enumerate(value):
        if label not in ALWAYS_LABELS + OPTIONAL_LABELS:
            raise ConfigError(f"labels[{i}]", f"unknown label {label!r} "
                              f"(allowed: {', '.join(ALWAYS_LABELS + OPTIONAL_LABELS)})")
    return ALWAYS_LABELS + tuple(l for l in OPTIONAL_LABELS if l in value)


def _resolver(value: Any) -> StaticResolverConfig | KubernetesResolverConfig:
    data = _mapping(value, "resolver")
    _unknown(data, ("static", "kubernetes"), "resolver")
    if len(data) != 1:
        raise ConfigError("resolver", "exactly one of static, kubernetes is required")
    if "static" in data:
        static = _mapping(data["static"], "resolver.static")
        _unknown(static, ("file",), "resolver.static")
        if "file" not in static:
            raise ConfigError("resolver.static.file", "required")
        return StaticResolverConfig(_string(static["file"], "resolver.static.file"))
    kube = _mapping(data["kubernetes"], "resolver.kubernetes")
    _unknown(kube, ("peers", "deleted_pod_grace_seconds", "kubeconfig"), "resolver.kubernetes")
    peers = kube.get("peers", "cluster")
    if peers not in KUBERNETES_PEERS:
        raise ConfigError("resolver.kubernetes.peers", f"must be one of {', '.join(KUBERNETES_PEERS)}, got {peers!r}")
    grace = kube.get("deleted_pod_grace_seconds", 60)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise ConfigError("resolver.kubernetes.deleted_pod_grace_seconds",
                          f"expected a number >= 0, got {grace!r}")
    kubeconfig = kube.get("kubeconfig")
    if kubeconfig is not None:
        _string(kubeconfig, "resolver.kubernetes.kubeconfig")
    return KubernetesResolverConfig(peers, float(grace), kubeconfig)


def _tls(value: Any) -> TLSConfig | None:
    if value is None:
        return None
    data = _mapping(value, "tls")
    _unknown(data, ("cert_file", "key_file"), "tls")
    for key in ("cert_file", "key_file"):
        if key not in data:
            raise ConfigError(f"tls.{key}", "required")
    return TLSConfig(_string(data["cert_file"], "tls.cert_file"), _string(data["key_file"], "tls.key_file"))


def _authorization(value: Any, tls: TLSConfig | None) -> AuthorizationConfig | None:
    if value is None:
        return None
    data = _mapping(value, "authorization")
    _unknown(data, ("kubernetes",), "authorization")
    if "kubernetes" not in data:
        raise ConfigError("authorization.kubernetes", "required (the only authorizer)")
    kube = _mapping(data["kubernetes"], "authorization.kubernetes")
    _unknown(kube, ("cache_seconds", "kubeconfig"), "authorization.kubernetes")
    cache = kube.get("cache_seconds", 30)
    if isinstance(cache, bool) or not isinstance(cache, (int, float)) or not 0 <= cache <= 600:
        raise ConfigError("authorization.kubernetes.cache_seconds", f"expected a number in 0..600, got {cache!r}")
    kubeconfig = kube.get("kubeconfig")
    if kubeconfig is not None:
        _string(kubeconfig, "authorization.kubernetes.kubeconfig")
    if tls is None:
        raise ConfigError("authorization", "needs tls: a bearer token must not cross the network in clear text")
    return AuthorizationConfig(float(cache), kubeconfig)


def _programs(value: Any) -> dict[str, dict[str, Any]]:
    data = _mapping(value, "programs")
    programs = {}
    for name, raw in data.items():
        where = f"programs.{name}"
        spec = CATALOGUE.get(name)
        if spec is None:
            raise ConfigError(where, f"unknown program (catalogue: {', '.join(CATALOGUE)})")
        given = _mapping(raw, where)
        _unknown(given, tuple(o.name for o in spec.options), where)
        options = spec.defaults()
        for key, val in given.items():
            try:
                options[key] = spec.option(key).validate(val)
            except ValueError as e:
                raise ConfigError(f"{where}.{key}", str(e)) from None
        programs[name] = options
    return programs


def parse_config(text: str) -> AgentConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"not valid YAML: {e}") from None
    data = _mapping(data, "(top level)")
    _unknown(data, ("listen", "node_name", "log_level", "labels", "resolver", "programs", "tls",
                    "authorization"), "")
    host, port = parse_listen(data.get("listen", "0.0.0.0:9435"))
    node_name = data.get("node_name") or os.environ.get("NODE_NAME") or socket.gethostname()
    node_name = _string(node_name, "node_name")
    log_level = data.get("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    if "resolver" not in data:
        raise ConfigError("resolver", "required (static or kubernetes)")
    tls = _tls(data.get("tls"))
    return AgentConfig(
        listen_host=host, listen_port=port, node_name=node_name, log_level=log_level,
        labels=_labels(data.get("labels")), resolver=_resolver(data["resolver"]),
        programs=_programs(data.get("programs")),
        digest=hashlib.sha256(text.encode()).hexdigest(),
        tls=tls, authorization=_authorization(data.get("authorization"), tls),
    )


def load_config(path: str, listen: str | None = None) -> AgentConfig:
    """The file's config; `listen` (the --listen flag), when given, replaces the
    file's `listen` (in a pod the port is the pod spec's, see cli.py)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    config = parse_config(text)
    if listen is None:
        return config
    host, port = parse_listen(listen)
    return replace(config, listen_host=host, listen_port=port)
