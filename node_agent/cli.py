"""netprobe-agent: the node agent's command line.

    netprobe-agent --config FILE          run (serve /metrics, /healthz, /readyz)
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
    from node_agent.agent import run
    return run(args.config)


if __name__ == "__main__":
    sys.exit(main())
