"""hack/image/oci_pack.py: the archive layout ctr, docker load and podman load read."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from importlib import util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = util.spec_from_file_location("oci_pack", REPO / "hack" / "image" / "oci_pack.py")
oci_pack = util.module_from_spec(spec)
spec.loader.exec_module(oci_pack)


def test_the_dockerfile_gives_the_image_config():
    config = oci_pack.dockerfile_config((REPO / "Dockerfile").read_text())
    env = dict(e.split("=", 1) for e in config["Env"])
    assert config["Cmd"] == ["netprobe-operator"] and config["WorkingDir"] == "/"
    assert env["PATH"].startswith("/opt/netprobe/bin:") and env["NETPROBE_BPF_DIR"] == "/opt/netprobe/bpf"
    assert env["NETPROBE_KERNEL_HEADERS"] == "/opt/netprobe/kernel-headers"


@pytest.mark.parametrize("text, says", [
    ("FROM x\nCMD netprobe-operator\nENV A=1\n", "JSON (exec) form"),
    ("FROM x\nENV A\nCMD [\"a\"]\n", "NAME=value"),
    ("FROM x\nCMD [\"a\"]\n", "no ENV"),
])
def test_dockerfile_forms_it_cannot_read_are_named(text, says):
    with pytest.raises(oci_pack.DockerfileError, match=re.escape(says)):
        oci_pack.dockerfile_config(text)


def _layer(tmp_path: Path) -> Path:
    path = tmp_path / "rootfs.tar"
    with tarfile.open(path, "w") as tar:
        data = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("bin/hello")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_is_an_oci_layout_and_a_docker_archive(tmp_path):
    layer = _layer(tmp_path)
    out = tmp_path / "image.tar"
    result = oci_pack.pack(layer, {"Env": ["PATH=/bin"], "Cmd": ["hello"]}, "localhost/t:1", out)
    with tarfile.open(out) as tar:
        read = lambda name: tar.extractfile(name).read()
        blobs = {m.name for m in tar.getmembers() if m.name.startswith("blobs/")}
        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        (entry,) = json.loads(read("index.json"))["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == "localhost/t:1"
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1"
        assert entry["digest"] == result["manifest"]
        # Every digest is the sha256 of its blob, every size its length.
        for name in blobs:
            assert hashlib.sha256(read(name)).hexdigest() == name.rsplit("/", 1)[1]
        manifest = json.loads(read(f"blobs/sha256/{entry['digest'][7:]}"))
        config = json.loads(read(f"blobs/sha256/{manifest['config']['digest'][7:]}"))
        (layer_desc,) = manifest["layers"]
        compressed = read(f"blobs/sha256/{layer_desc['digest'][7:]}")
        assert len(compressed) == layer_desc["size"]
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()]
        assert gzip.decompress(compressed) == layer.read_bytes()
        assert config["config"]["Cmd"] == ["hello"] and config["os"] == "linux"
        (docker,) = json.loads(read("manifest.json"))
        assert docker["RepoTags"] == ["localhost/t:1"]
        assert {docker["Config"], *docker["Layers"]} <= blobs


def test_the_command_line_refuses_a_reference_without_tag(tmp_path):
    layer = _layer(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "hack" / "image" / "oci_pack.py"), "--layer", str(layer),
                           "--dockerfile", str(REPO / "Dockerfile"), "--ref", "localhost/t",
                           "--out", str(tmp_path / "x.tar")], capture_output=True, text=True)
    assert proc.returncode == 1 and "needs a tag" in proc.stderr and "Traceback" not in proc.stderr
