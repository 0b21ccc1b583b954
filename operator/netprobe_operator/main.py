"""`netprobe-operator` / `python -m netprobe_operator`: kopf, with our handlers module.

The handlers are loaded as a module (`-m netprobe_operator.handlers`), never by
file path: a path would put operator/netprobe_operator/ first on sys.path.
"""
from __future__ import annotations

import os
import sys

from .settings import OperatorSettings

LIVENESS_DEFAULT = "http://0.0.0.0:8080/healthz"


def kopf_arguments(env: dict[str, str] | None = None, extra: list[str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    config = OperatorSettings.from_env(env)
    args = [
        "run",
        "--module", "netprobe_operator.handlers",
        # Children live in one namespace; NetworkProbes are cluster-scoped and kopf
        # watches cluster-scoped resources cluster-wide in this mode too.
        "--namespace", config.namespace,
        # One replica (the Deployment uses Recreate): no peering objects needed.
        "--standalone",
        "--liveness", env.get("NETPROBE_LIVENESS_ENDPOINT", LIVENESS_DEFAULT),
    ]
    return args + list(extra or [])


def main(argv: list[str] | None = None) -> None:
    import kopf.cli  # late: `--help` of our own CLI should not need kopf's import time

    extra = list(sys.argv[1:] if argv is None else argv)
    sys.exit(kopf.cli.main(args=kopf_arguments(extra=extra), prog_name="netprobe-operator"))


if __name__ == "__main__":
    main()
