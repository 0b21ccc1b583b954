"""logfmt logs: one line per event, fields a person and Loki can both read.

    log.info("program loaded", extra={"kv": {"program": "tcp_rtt", "attach": "tracepoint"}})
"""
from __future__ import annotations

import logging
import sys
import time
import traceback


def _quote(value) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"time={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        for k, v in (getattr(record, "kv", None) or {}).items():
            parts.append(f"{k}={_quote(v)}")
        if record.exc_info:
            parts.append(f"exception={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    root = logging.getLogger()
    if not any(isinstance(h.formatter, LogfmtFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LogfmtFormatter())
        root.handlers[:] = [handler]
    root.setLevel(level.upper())


class OnceLog:
    """An error that recurs (every scrape, every connection) is logged once, as one
    line naming where it was raised; repeats go to debug. No traceback floods."""

    def __init__(self, logger: logging.Logger, remember: int = 64):
        self.logger, self.remember = logger, remember
        self._seen: set[tuple[str, str]] = set()

    def error(self, what: str, exc: BaseException, **context) -> None:
        key = (what, f"{type(exc).__name__}: {exc}")
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
        kv = {**context, "error": key[1], "where": where}
        if key in self._seen:
            self.logger.debug(what + " (again)", extra={"kv": kv})
            return
        if len(self._seen) < self.remember:
            self._seen.add(key)
        self.logger.error(what, extra={"kv": kv})
