"""The agent's one way to reach the API server, shared by the resolver and the
/metrics authorizer: in a pod its ServiceAccount, elsewhere a kubeconfig."""
from __future__ import annotations

import os
from typing import Any


def api_client(kubeconfig: str | None, who: str, error: type[Exception]) -> Any:
    """A kubernetes ApiClient; `error` (its message prefixed with `who`) when the
    credentials cannot be loaded."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            if kubeconfig is not None and not os.path.isfile(kubeconfig):
                raise error(f"{who}: kubeconfig {kubeconfig!r} does not exist")
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration,
                                    persist_config=False)
    except ConfigException as exc:
        where = kubeconfig or "in-cluster service account / $KUBECONFIG / ~/.kube/config"
        raise error(f"{who}: cannot load credentials ({where}): {exc}") from None
    return client.ApiClient(configuration)
