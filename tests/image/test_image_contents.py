"""What `make image` put into the image: the product, the header fallback, nothing else."""
from __future__ import annotations

import json
import re
import tarfile
from importlib import util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = util.spec_from_file_location("oci_pack", REPO / "hack" / "image" / "oci_pack.py")
oci_pack = util.module_from_spec(spec)
spec.loader.exec_module(oci_pack)


@pytest.fixture(scope="module")
def image(netprobe_image):
    archive, _ref = netprobe_image
    with tarfile.open(archive) as outer:
        read = lambda name: outer.extractfile(name).read()
        (entry,) = json.loads(read("index.json"))["manifests"]
        manifest = json.loads(read(f"blobs/sha256/{entry['digest'][7:]}"))
        config = json.loads(read(f"blobs/sha256/{manifest['config']['digest'][7:]}"))
        (layer,) = manifest["layers"]
        files, size = {}, 0
        with tarfile.open(fileobj=outer.extractfile(f"blobs/sha256/{layer['digest'][7:]}"), mode="r|gz") as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                files[name] = m
                size += m.size
                if name == "etc/passwd":
                    passwd = tar.extractfile(m).read().decode()
    return {"config": config, "files": files, "size": size, "compressed": layer["size"], "passwd": passwd}


def test_config_is_the_dockerfiles(image):
    want = oci_pack.dockerfile_config((REPO / "Dockerfile").read_text())
    got = image["config"]["config"]
    assert (got["Env"], got["Cmd"], got["WorkingDir"]) == (want["Env"], want["Cmd"], want["WorkingDir"])


def test_the_product_is_in(image):
    files = image["files"]
    for path in ("opt/netprobe/bin/netprobe-agent", "opt/netprobe/bin/netprobe-operator",
                 "opt/netprobe/bpf/netprobe.h", "opt/netprobe/bpf/tcp_rtt.c"):
        assert path in files, path
    assert any(re.match(r"usr/lib/python3/dist-packages/bcc/__init__\.py$", f) for f in files)
    assert any(re.match(r"opt/netprobe/lib/python3\.\d+/site-packages/node_agent/agent\.py$", f) for f in files)


def test_the_operators_uid_has_a_name(image):
    # kopf asks for the user name (getpass.getuser): the Deployment's uid 65532 needs an entry.
    assert re.search(r"^[a-z]+:x:65532:65532:", image["passwd"], re.M), image["passwd"]


def test_the_header_fallback_is_one_merged_tree(image):
    files = image["files"]
    trees = {m.group(1) for f in files if (m := re.match(r"opt/netprobe/kernel-headers/(linux-headers-[^/]+)/", f))}
    assert len(trees) == 1, trees
    (tree,) = trees
    root = f"opt/netprobe/kernel-headers/{tree}"
    for path in ("include/generated/autoconf.h", "include/linux/skbuff.h", "include/uapi/linux/tcp.h",
                 "arch/x86/include/generated/asm/syscalls_64.h", "arch/x86/include/asm/ptrace.h"):
        assert f"{root}/{path}" in files, path


def test_nothing_else(image):
    files = image["files"]
    banned = [f for f in files if "netprobe_testbed" in f or f.startswith(("usr/share/doc/", "usr/share/man/",
              "usr/share/locale/", "var/lib/apt/lists/", "var/cache/apt/")) and not files[f].isdir()]
    assert banned == [], banned[:10]
    assert "opt/netprobe/bin/netprobe-cluster" not in files
    assert not [f for f in files if re.match(r"usr/bin/(gcc|cc|g\+\+|make)(-\d+)?$", f)]
    assert not [f for f in files if f.startswith("opt/netprobe/lib/") and "/pip/" in f]


def test_size(image):
    print(f"image: {image['size'] / 2**20:.0f} MiB unpacked, {image['compressed'] / 2**20:.0f} MiB compressed")
    # A regression guard, not a target: BCC's LLVM alone is about half of it.
    assert image["size"] < 600 * 2**20
