"""netprobe-agent: the node agent's command line.

    netprobe-agent --config FILE [--listen HOST:PORT]
                                          run (serve /metrics, /healthz, /readyz)
    netprobe-agent doctor                 what this node supports, per program
    netprobe-agent validate FILE          check a config file, exit non-zero if invalid
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netprobe-agent", description="eBPF node agent of netprobe")
    parser.add_argument("command", nargs="?", choices=("run", "doctor", "validate"), default="run")
    parser.add_argument("file", nargs="?", help="config file (validate)")
    parser.add_argument("--config", help="config file (docs/agent-config.md)")
    # The DaemonSet passes its container port here: the port of the probes and of
    # the Service then comes from the pod spec itself, never from a ConfigMap
    # mount that can lag a rollout by a kubelet sync (the file's `listen` cannot
    # be reloaded, so a stale first read would stick).
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address of /metrics, /healthz, /readyz; replaces the config file's `listen`")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from node_agent.doctor import main as doctor
        return doctor()
    if args.command == "validate":
        path = args.file or args.config
        if not path:
            parser.error("validate needs a config file")
        from node_agent.config import ConfigError, load_config
        try:
            load_config(path)
        except ConfigError as e:
            print(f"netprobe-agent: invalid config {path}: {e}", file=sys.stderr)
            return 2
        print(f"{path}: valid")
        return 0
    if not args.config:
        parser.error("--config FILE is required")
    if args.listen is not None:
        from node_agent.config import ConfigError, parse_listen
        try:
            parse_listen(args.listen)
        except ConfigError as e:
            parser.error(f"--listen: {e.message}")
    from node_agent.agent import run
    return run(args.config, listen=args.listen)


if __name__ == "__main__":
    sys.exit(main())
