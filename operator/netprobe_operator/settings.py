"""Operator settings from the environment (set by manifests/operator-deployment.yaml)."""
from __future__ import annotations

import os
from dataclasses import dataclass

FIELD_MANAGER = "netprobe-operator"
API_GROUP = "netprobe.io"
API_VERSION = "v1alpha1"
PROBE_PLURAL = "networkprobes"

# Labels on everything the operator creates; child watches select on MANAGED_BY.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "netprobe-operator"
LABEL_PROBE = "netprobe.io/probe"


@dataclass(frozen=True)
class OperatorSettings:
    namespace: str = "netprobe-system"
    agent_image: str = "ghcr.io/netprobe/netprobe:0.1.0"
    agent_service_account: str = "netprobe-agent"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "OperatorSettings":
        env = os.environ if env is None else env
        default = cls()
        return cls(
            namespace=env.get("NETPROBE_NAMESPACE") or default.namespace,
            agent_image=env.get("NETPROBE_AGENT_IMAGE") or default.agent_image,
            agent_service_account=(
                env.get("NETPROBE_AGENT_SERVICE_ACCOUNT") or default.agent_service_account
            ),
        )
