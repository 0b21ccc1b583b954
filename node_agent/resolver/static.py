"""Pod identities from a file (docs/agent-config.md): for the demo, the
tests, and nodes that want fixed names. The file is polled and re-read when
it changes; a bad new version is refused (the old mapping stays, the error
is logged and counted)."""
from __future__ import annotations

import hashlib
import logging
import threading
import time

import yaml
from node_agent.resolver.base import IPAddress, PodRef, Resolver, SourceHealth, normalize_ip

log = logging.getLogger(__name__)


class StaticFileError(ValueError):
    pass


def parse_static_file(text: str, path: str = "pods file") -> dict[IPAddress, PodRef]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise StaticFileError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or set(data) - {"pods"}:
        raise StaticFileError(f"{path}: expected a mapping with the single field 'pods'")
    pods = data.get("pods") or []
    if not isinstance(pods, list):
        raise StaticFileError(f"{path}: pods: expected a list")
    by_ip: dict[IPAddress, PodRef] = {}
    for i, entry in enumerate(pods):
        where = f"{path}: pods[{i}]"
        if not isinstance(entry, dict):
            raise StaticFileError(f"{where}: expected a mapping")
        unknown = set(entry) - {"namespace", "pod", "workload", "ips"}
        if unknown:
            raise StaticFileError(f"{where}.{sorted(unknown)[0]}: unknown field")
        for required in ("namespace", "pod", "ips"):
            if required not in entry:
                raise StaticFileError(f"{where}.{required}: required")
        for text_field in ("namespace", "pod", "workload"):
            if text_field in entry and not isinstance(entry[text_field], str):
                raise StaticFileError(f"{where}.{text_field}: expected a string")
        if not isinstance(entry["ips"], list):
            raise StaticFileError(f"{where}.ips: expected a list of addresses")
        ref = PodRef(entry["namespace"], entry["pod"], entry.get("workload", ""))
        for j, raw in enumerate(entry["ips"]):
            try:
                ip = normalize_ip(str(raw))
            except ValueError:
                raise StaticFileError(f"{where}.ips[{j}]: not an IP address: {raw!r}") from None
            if ip in by_ip and by_ip[ip] != ref:
                raise StaticFileError(f"{where}.ips[{j}]: {ip} already belongs to "
                                      f"{by_ip[ip].namespace}/{by_ip[ip].pod}")
            by_ip[ip] = ref
    return by_ip


class StaticResolver(Resolver):
    def __init__(self, path: str, poll_seconds: float = 1.0):
        self.path = path
        self.poll_seconds = poll_seconds
        self._by_ip: dict[IPAddress, PodRef] = {}
        self._digest = ""
        self._loaded_at = 0.0       # when a version of the file was last taken
        self._synced_at = 0.0       # when the file was last read and found good (changed or not)
        self._loads = 0
        self._reload_errors = 0
        self._stale = False         # the last read failed or was refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> bool:
        """(Re)read the file if it changed; True if a new mapping was taken."""
        with open(self.path, "rb") as f:
            raw = f.read()
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._digest:
            self._synced_at, self._stale = time.time(), False
            return False
        self._by_ip = parse_static_file(raw.decode(errors="replace"), self.path)   # one atomic swap
        self._digest, self._loaded_at = digest, time.time()
        self._synced_at, self._stale = self._loaded_at, False
        self._loads += 1
        pods = len(set(self._by_ip.values()))
        log.info("static resolver loaded", extra={"kv": {"file": self.path, "pods": pods,
                                                         "addresses": len(self._by_ip)}})
        return True

    def start(self) -> None:
        self.load()   # errors at start are the caller's to report
        self._thread = threading.Thread(target=self._poll, name="static-resolver", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.load()
            except (OSError, StaticFileError) as e:
                self._reload_errors += 1
                self._stale = True
                self._digest = ""   # retry at the next poll
                log.error("static resolver file refused; keeping the previous mapping",
                          extra={"kv": {"file": self.path, "error": str(e)}})

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def lookup(self, ip: IPAddress) -> PodRef | None:
        return self._counted(self._by_ip.get(ip))

    def is_ready(self) -> bool:
        return self._loaded_at > 0

    def sources(self) -> list[SourceHealth]:
        # The file is one source, "watched" by polling; a refused version is an error restart.
        return [SourceHealth("file", len(set(self._by_ip.values())), 0, self._loads, self._synced_at,
                             self._stale, {"error": self._reload_errors})]
