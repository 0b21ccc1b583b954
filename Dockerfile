# One image for the operator and the node agent. Build it with `make image`
# (docs/getting-started.md): with Docker or Podman from this file; without
# them, hack/image/build.sh makes the same image from Debian's packages
# (mmdebstrap) and reads ENV, WORKDIR and CMD from this file. Both run the same
# hack/image/install.sh: what goes into the image is defined there, once.
# Debian bookworm: BCC comes from Debian's python3-bpfcc (not on PyPI), so the
# image uses Debian's Python 3.11 and a venv that sees the system site-packages.
FROM debian:bookworm-slim

# The sources are bind-mounted, never copied into a layer; install.sh takes only
# the product's files (no test bed, no tests) and cleans up in the same layer.
RUN --mount=type=bind,source=.,target=/src sh /src/hack/image/install.sh /src

# NETPROBE_KERNEL_HEADERS: the image's fallback header tree (node_agent/kernel/headers.py).
ENV PATH=/opt/netprobe/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    NETPROBE_BPF_DIR=/opt/netprobe/bpf \
    NETPROBE_KERNEL_HEADERS=/opt/netprobe/kernel-headers \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /
# The agent runs as root with added capabilities (the DaemonSet sets them); the
# operator Deployment runs as 65532.
CMD ["netprobe-operator"]
