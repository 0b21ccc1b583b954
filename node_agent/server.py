"""HTTP endpoints: /metrics, /healthz, /readyz, bounded, optionally TLS + Kubernetes auth.

One asyncio event loop (one thread) accepts and reads every connection, so an
idle or slow connection costs a socket and a few KiB, never a thread. Work that
blocks runs in fixed pools: one thread renders scrapes (one at a time), two
ask the API server about tokens (node_agent/auth.py), one answers /readyz
(the agent's readiness takes a lock a program compile holds). Bounds (Limits):

- at most `max_connections` open connections. When full, the oldest one that
  has not sent a complete request yet (handshaking, dripping its headers, idle
  between keep-alive requests) is closed to make room; only when every slot is
  busy answering is the new connection closed. So thousands of half-open
  connections cannot lock the kubelet's probes out;
- a deadline for the TLS handshake plus the first request's head
  (`head_timeout`, from accept: slow drips included), an idle timeout between
  keep-alive requests, a write timeout;
- request heads over `max_head_bytes` get 431, bodies are refused (400);
- a scrape whose client is gone by the time its turn comes is not computed.

TLS (when configured) is chosen per connection by its first byte (0x16, a TLS
handshake record): /metrics is served only over TLS then, while /healthz and
/readyz also answer plain HTTP on the same port, for the kubelet's probes.
Client disconnects, timeouts and failed handshakes are counted and logged at
debug (one line), never as tracebacks.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from node_agent.logs import OnceLog

log = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16          # first byte of a TLS record carrying a handshake
PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256
    head_timeout: float = 10.0      # accept -> TLS handshake -> complete request head
    idle_timeout: float = 90.0      # between keep-alive requests (> the usual 30/60 s scrape interval)
    write_timeout: float = 30.0
    max_head_bytes: int = 16384
    auth_pending: int = 16          # token reviews waiting for the API server at once


class _Conn:
    __slots__ = ("sock", "peer", "task", "busy", "tls", "reader", "writer", "accepted", "generation")

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self.task: asyncio.Task | None = None
        self.busy = False             # answering a request: not evictable
        self.tls = False
        self.generation = -1          # of the serving certificate the TLS session was made with
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.accepted = time.monotonic()

    def gone(self) -> bool:
        """The client closed its side or the connection broke."""
        if self.writer is None or self.writer.transport.is_closing():
            return True
        return self.reader.at_eof()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Endpoint:
    """The agent's HTTP server. start() binds (OSError if it cannot), shutdown() stops."""

    def __init__(self, host: str, port: int, metrics: Callable[[], bytes],
                 ready: Callable[[], tuple[bool, str]], *, tls=None, authorizer=None,
                 limits: Limits = Limits()):
        self.host, self.port = host, port
        self.metrics, self.ready = metrics, ready
        self.tls = tls                   # node_agent.tls.ServingCertificate or None
        self.authorizer = authorizer     # node_agent.auth.KubernetesAuthorizer or None
        self.limits = limits
        self.requests: dict[tuple[str, str], int] = defaultdict(int)     # (path, code)
        self.dropped: dict[str, int] = defaultdict(int)                  # reason
        self._conns: dict[_Conn, None] = {}                              # accept order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._scrape_pool = ThreadPoolExecutor(1, thread_name_prefix="scrape")
        self._auth_pool = ThreadPoolExecutor(2, thread_name_prefix="auth")
        # ready() may wait for the program manager's lock (held through a BCC compile):
        # never on the event loop.
        self._ready_pool = ThreadPoolExecutor(1, thread_name_prefix="ready")
        self._auth_pending = 0
        self._scrape_lock: asyncio.Lock | None = None
        self._errors = OnceLog(log)
        self._stopped = threading.Event()

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> "Endpoint":
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="http", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._scrape_lock = asyncio.Lock()
        accept = self._loop.create_task(self._accept_loop())
        started.set()
        try:
            self._loop.run_until_complete(accept)
        except asyncio.CancelledError:
            pass
        finally:
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
            self._stopped.set()

    def shutdown(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        def stop():
            for t in asyncio.all_tasks(self._loop):
                t.cancel()
        try:
            self._loop.call_soon_threadsafe(stop)
        except RuntimeError:   # loop already closed
            pass
        self._stopped.wait(10)
        if self._sock is not None:
            self._sock.close()
        for pool in (self._scrape_pool, self._auth_pool, self._ready_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def configure(self, tls=None, authorizer=None) -> None:
        """Swap TLS / authorization (config reload); new connections see the new ones."""
        self.tls, self.authorizer = tls, authorizer

    def _loop_exception(self, loop, context) -> None:
        exc = context.get("exception")
        log.debug("http: event loop", extra={"kv": {"message": context.get("message", ""),
                                                    "error": repr(exc) if exc else ""}})

    # -- accepting ---------------------------------------------------------
    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, addr = await loop.sock_accept(self._sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:   # EMFILE/ENFILE: wait for connections to close
                self._errors.error("http: accept failed", e)
                await asyncio.sleep(0.1)
                continue
            sock.setblocking(False)
            if len(self._conns) >= self.limits.max_connections and not self._evict_one():
                self.dropped["too_many_connections"] += 1
                sock.close()
                continue
            conn = _Conn(sock, addr[0])
            self._conns[conn] = None
            conn.task = loop.create_task(self._serve(conn))
            # Closed only once its task is over: an fd closed while the task still
            # watches it could be reused by the next accept and unwatched by mistake.
            conn.task.add_done_callback(lambda _t, s=sock: s.close())

    def _evict_one(self) -> bool:
        for conn in self._conns:      # oldest first
            if not conn.busy:
                self.dropped["evicted"] += 1
                self._close(conn)
                if conn.task is not None:
                    conn.task.cancel()
                return True
        return False

    def _close(self, conn: _Conn) -> None:
        """Free the slot now; the socket closes when the connection's task ends."""
        self._conns.pop(conn, None)
        if conn.writer is not None:
            conn.writer.transport.abort()

    # -- one connection ----------------------------------------------------
    async def _serve(self, conn: _Conn) -> None:
        try:
            await self._open(conn)
            deadline = conn.accepted + self.limits.head_timeout
            while True:
                try:
                    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"),
                                                  max(0.0, deadline - time.monotonic()))
                except asyncio.LimitOverrunError:
                    await self._answer(conn, "other", 431, b"request head too large\n", close=True)
                    return
                except asyncio.IncompleteReadError as e:
                    if e.partial:
                        self._drop(conn, "client_gone", "closed mid-request")
                    return   # a keep-alive connection closed between requests: normal
                conn.busy = True
                keep = await self._request(conn, head)
                if not keep:
                    return
                conn.busy = False
                deadline = time.monotonic() + self.limits.idle_timeout
        except asyncio.CancelledError:
            pass        # evicted or shutting down
        except (asyncio.TimeoutError, TimeoutError):
            self._drop(conn, "timeout", "no complete request in time")
        except _TLSFailed as e:
            self._drop(conn, "tls_handshake", str(e))
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self._drop(conn, "client_gone", f"{type(e).__name__}: {e}")
        except Exception as e:   # a bug here: one line with context, the connection closed
            self._drop(conn, "error", "")
            self._errors.error("http: connection failed", e, client=conn.peer)
        finally:
            self._close(conn)

    def _drop(self, conn: _Conn, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        log.debug("http: connection dropped", extra={"kv": {"client": conn.peer, "reason": reason,
                                                            "detail": detail}})

    async def _open(self, conn: _Conn) -> None:
        """Plain or TLS by the first byte, within the head deadline."""
        loop = asyncio.get_running_loop()
        remaining = lambda: max(0.01, conn.accepted + self.limits.head_timeout - time.monotonic())
        tls = self.tls
        context = None
        if tls is not None:
            first = await asyncio.wait_for(self._peek(conn.sock), remaining())
            if not first:
                raise ConnectionResetError("closed before sending anything")
            if first[0] == TLS_HANDSHAKE:
                context = tls.context()
                conn.generation = tls.generation
        reader = asyncio.StreamReader(limit=self.limits.max_head_bytes, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await asyncio.wait_for(loop.connect_accepted_socket(
                lambda: protocol, conn.sock, ssl=context,
                ssl_handshake_timeout=remaining() if context else None), remaining())
        except (ssl.SSLError, ConnectionError, asyncio.TimeoutError, TimeoutError) as e:
            if context is None:
                raise
            raise _TLSFailed(f"{type(e).__name__}: {e}") from None
        conn.tls = context is not None
        conn.reader = reader
        conn.writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    @staticmethod
    async def _peek(sock: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(sock.fileno())
        return sock.recv(1, socket.MSG_PEEK)

    # -- one request -------------------------------------------------------
    async def _request(self, conn: _Conn, head: bytes) -> bool:
        """Answer one request; True to keep the connection for the next."""
        try:
            method, target, version, headers = _parse(head)
        except _BadRequest as e:
            await self._answer(conn, "other", e.status, f"{e}\n".encode(), close=True)
            return False
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        tls = self.tls
        if conn.tls and (tls is None or (tls.context() and conn.generation != tls.generation)):
            keep = False   # the certificate changed: the next request gets a new handshake
        path = target.split("?", 1)[0]
        label = path if path in PATHS else "other"
        if method not in ("GET", "HEAD"):
            await self._answer(conn, label, 405, b"only GET and HEAD\n", close=True,
                               extra=(("Allow", "GET, HEAD"),))
            return False
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await self._answer(conn, label, 400, b"requests with a body are not served\n", close=True)
            return False
        head_only = method == "HEAD"
        if path == "/healthz":
            return await self._answer(conn, label, 200, b"ok\n", close=not keep, head_only=head_only)
        if path == "/readyz":
            try:
                ok, why = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                    self._ready_pool, self.ready), self.limits.write_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                ok, why = False, "readiness check timed out"
            return await self._answer(conn, label, 200 if ok else 503, (why + "\n").encode(),
                                      close=not keep, head_only=head_only)
        if path != "/metrics":
            return await self._answer(conn, label, 404, b"not found\n", close=not keep, head_only=head_only)
        if self.tls is not None and not conn.tls:
            await self._answer(conn, label, 400, b"this port serves /metrics over HTTPS only\n", close=True)
            return False
        authorizer = self.authorizer
        if authorizer is not None:
            denied = await self._authorize(authorizer, headers.get("authorization", ""))
            if denied is not None:
                status, message, extra = denied
                return await self._answer(conn, label, status, message.encode(), close=not keep,
                                          extra=extra, head_only=head_only)
        return await self._scrape(conn, label, keep, head_only)

    async def _authorize(self, authorizer, header: str):
        """None when allowed, else (status, body, extra headers)."""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, "a bearer token is required\n", (("WWW-Authenticate", 'Bearer realm="netprobe"'),)
        cached = authorizer.cached(token)
        if cached is None:
            if self._auth_pending >= self.limits.auth_pending:
                return 503, "too many token reviews pending, retry\n", (("Retry-After", "1"),)
            self._auth_pending += 1
            try:
                cached = await asyncio.get_running_loop().run_in_executor(
                    self._auth_pool, authorizer.review, token)
            finally:
                self._auth_pending -= 1
        if cached.status == 200:
            return None
        extra = (("WWW-Authenticate", 'Bearer realm="netprobe"'),) if cached.status == 401 else ()
        return cached.status, cached.message + "\n", extra

    async def _scrape(self, conn: _Conn, label: str, keep: bool, head_only: bool) -> bool:
        async with self._scrape_lock:       # one scrape at a time; queued ones wait here
            if conn.gone():
                self._drop(conn, "client_gone", "gone before its scrape was computed")
                return False
            try:
                body = await asyncio.get_running_loop().run_in_executor(self._scrape_pool, self.metrics)
            except Exception as e:
                self._errors.error("scrape failed", e, client=conn.peer)
                return await self._answer(conn, label, 500, f"scrape failed: {type(e).__name__}\n".encode(),
                                          close=not keep)
        return await self._answer(conn, label, 200, body, close=not keep, ctype=CONTENT_TYPE_LATEST,
                                  head_only=head_only)

    async def _answer(self, conn: _Conn, label: str, status: int, body: bytes, *, close: bool,
                      ctype: str = "text/plain; charset=utf-8", extra=(), head_only: bool = False) -> bool:
        self.requests[(label, str(status))] += 1
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in extra]
        if close:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        conn.writer.write(data)
        await asyncio.wait_for(conn.writer.drain(), self.limits.write_timeout)
        log.debug("http", extra={"kv": {"client": conn.peer, "path": label, "status": status}})
        return not close

    # -- self-metrics ------------------------------------------------------
    def families(self) -> list:
        conns = GaugeMetricFamily("netprobe_agent_http_connections",
                                  "Open connections to the agent's HTTP port.")
        conns.add_metric([], len(self._conns))
        requests = CounterMetricFamily("netprobe_agent_http_requests",
                                       "Requests answered, by path (/metrics, /healthz, /readyz, other) "
                                       "and status code (401/403: refused by authentication/authorization).",
                                       labels=["path", "code"])
        for (path, code), n in sorted(list(self.requests.items())):   # a copy: the loop thread adds keys
            requests.add_metric([path, code], n)
        dropped = CounterMetricFamily(
            "netprobe_agent_http_connections_dropped",
            "Connections closed without an answer: evicted (made room for a new one), "
            "too_many_connections, timeout, tls_handshake, client_gone, error.",
            labels=["reason"])
        for reason, n in sorted(list(self.dropped.items())):
            dropped.add_metric([reason], n)
        out = [conns, requests, dropped]
        if self.tls is not None:
            out += self.tls.families()
        return out


class _TLSFailed(Exception):
    pass


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _parse(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1].startswith("/"):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(400, "unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return method, target, version, headers


def serve(host: str, port: int, metrics: Callable[[], bytes], ready: Callable[[], tuple[bool, str]],
          **kw) -> Endpoint:
    """Start serving in a thread; returns the endpoint (call .shutdown() to stop)."""
    return Endpoint(host, port, metrics, ready, **kw).start()
