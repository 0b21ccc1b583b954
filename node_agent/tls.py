"""The serving certificate of /metrics: loaded from files, reloaded when they change.

In a pod the files come from a Secret volume, which the kubelet updates by
swapping a symlink (`..data`) to a new directory: the files' inode changes,
so the identity checked is (device, inode, mtime, size) of the files the
paths resolve to. A changed pair is loaded into a new SSLContext, which new
connections get; a pair that does not load (a half-written update, a key
that does not match) keeps the old context, is logged once and counted, and
is retried when the files change again. No restart, no dropped scrape.
"""
from __future__ import annotations

import logging
import os
import ssl
import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)


class TLSConfigError(ValueError):
    pass


def _identity(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def _not_after(cert_pem: bytes) -> float:
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(cert_pem)
    when = getattr(cert, "not_valid_after_utc", None)
    if when is None:          # cryptography < 42: a naive datetime in UTC
        import calendar
        return float(calendar.timegm(cert.not_valid_after.utctimetuple()))
    return when.timestamp()


class ServingCertificate:
    def __init__(self, cert_file: str, key_file: str, check_every: float = 1.0):
        self.cert_file, self.key_file = cert_file, key_file
        self.check_every = check_every
        self.reloads = 0
        self.reload_errors = 0
        self.generation = 0
        self._lock = threading.Lock()
        self._checked = 0.0
        self._failed_identity = None
        try:
            self._identity = self._files_identity()
            self._context, self.not_after = self._load()
        except (OSError, ssl.SSLError, ValueError) as e:
            raise TLSConfigError(f"tls: cannot load {cert_file} / {key_file}: {_describe(e)}") from None

    def _files_identity(self):
        return _identity(self.cert_file), _identity(self.key_file)

    def _load(self) -> tuple[ssl.SSLContext, float]:
        with open(self.cert_file, "rb") as f:
            cert_pem = f.read()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(self.cert_file, self.key_file)
        return context, _not_after(cert_pem)

    def context(self) -> ssl.SSLContext:
        """The current context, after a reload if the files changed (checked at most every second)."""
        now = time.monotonic()
        if now - self._checked >= self.check_every:
            with self._lock:
                if now - self._checked >= self.check_every:
                    self._checked = now
                    self._maybe_reload()
        return self._context

    def _maybe_reload(self) -> None:
        try:
            identity = self._files_identity()
        except OSError as e:
            identity = ("missing", str(e))
        if identity == self._identity or identity == self._failed_identity:
            return
        try:
            context, not_after = self._load()
        except (OSError, ssl.SSLError, ValueError) as e:
            self._failed_identity = identity
            self.reload_errors += 1
            log.error("tls: new certificate not loaded; serving the previous one",
                      extra={"kv": {"cert_file": self.cert_file, "key_file": self.key_file,
                                    "error": _describe(e)}})
            return
        self._identity, self._failed_identity = identity, None
        self._context, self.not_after = context, not_after
        self.generation += 1
        self.reloads += 1
        log.info("tls: certificate reloaded", extra={"kv": {
            "cert_file": self.cert_file,
            "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))}})

    def families(self) -> list:
        expiry = GaugeMetricFamily("netprobe_agent_tls_certificate_expiry_timestamp_seconds",
                                   "When the certificate /metrics is served with expires (Unix time).")
        expiry.add_metric([], self.not_after)
        reloads = CounterMetricFamily("netprobe_agent_tls_reloads",
                                      "Changed certificate files loaded without a restart.")
        reloads.add_metric([], self.reloads)
        errors = CounterMetricFamily("netprobe_agent_tls_reload_errors",
                                     "Changed certificate files that did not load (the previous one is kept).")
        errors.add_metric([], self.reload_errors)
        return [expiry, reloads, errors]


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}" + (f" ({e.filename})" if e.filename else "")
    return f"{type(e).__name__}: {e}"
