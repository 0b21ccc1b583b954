# One image for the operator and the node agent.
# Debian bookworm: BCC comes from Debian's python3-bpfcc (not on PyPI), so the
# image uses Debian's Python 3.11 and a venv that sees the system site-packages.
# Kernel headers are NOT in the image: the DaemonSet mounts the node's
# /lib/modules and /usr/src, and the agent finds them there (docs/agent.md).
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc bpfcc-tools iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY node_agent/ node_agent/
COPY operator/ operator/
COPY hack/netprobe_testbed/ hack/netprobe_testbed/

RUN python3 -m venv --system-site-packages /opt/netprobe \
 && /opt/netprobe/bin/pip install --no-cache-dir /src \
 && /opt/netprobe/bin/python -c "import bcc, netprobe_operator.handlers, node_agent" \
 && rm -rf /src

# The BPF C sources, compiled by BCC on the node at run time.
COPY bpf/ /opt/netprobe/bpf/

ENV PATH=/opt/netprobe/bin:$PATH \
    NETPROBE_BPF_DIR=/opt/netprobe/bpf \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /
# The agent runs as root with added capabilities (the DaemonSet sets them); the
# operator Deployment runs as 65532.
CMD ["netprobe-operator"]
