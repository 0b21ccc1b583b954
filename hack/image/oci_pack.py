"""Pack a root filesystem tar into an image archive that containerd, Docker and Podman load.

    python3 oci_pack.py --layer rootfs.tar --dockerfile Dockerfile --ref localhost/netprobe:dev --out image.tar

The archive holds one gzip layer in an OCI image layout (index.json, oci-layout,
blobs/sha256/...) and, next to it, the docker-archive manifest.json pointing at
the same blobs, so `ctr -n k8s.io images import`, `docker load` and `podman load`
all accept it. The image configuration (ENV, WORKDIR, CMD) is read from the
Dockerfile, so the two build paths cannot drift. Standard library only.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shlex
import sys
import tarfile
import tempfile
from pathlib import Path

EPOCH = "1970-01-01T00:00:00Z"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}


class DockerfileError(ValueError):
    pass


def dockerfile_config(text: str) -> dict:
    """ENV, WORKDIR and CMD of a Dockerfile (the simple forms this project uses)."""
    logical = re.sub(r"\\\n", " ", text)
    env: dict[str, str] = {}
    config: dict = {}
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ENV":
            for token in shlex.split(rest, comments=False):
                if "=" not in token:
                    raise DockerfileError(f"ENV needs NAME=value pairs, got {token!r}")
                name, value = token.split("=", 1)
                env[name] = value
        elif word == "WORKDIR":
            config["WorkingDir"] = rest.strip()
        elif word == "CMD":
            try:
                cmd = json.loads(rest)
            except json.JSONDecodeError as err:
                raise DockerfileError(f"CMD must be in JSON (exec) form: {err}") from None
            config["Cmd"] = cmd
    if not env or "Cmd" not in config:
        raise DockerfileError("the Dockerfile sets no ENV or no CMD")
    config["Env"] = [f"{k}={v}" for k, v in env.items()]
    return config


class _Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)


def compress_layer(layer: Path, blob_dir: Path) -> tuple[str, str, int]:
    """gzip the layer into blob_dir; (diff_id, digest, size)."""
    tmp = blob_dir / ".layer.tmp"
    diff = hashlib.sha256()
    with open(tmp, "wb") as raw:
        hashing = _Hashing(raw)
        with open(layer, "rb") as src, gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0,
                                                     compresslevel=6) as gz:
            while chunk := src.read(1 << 20):
                diff.update(chunk)
                gz.write(chunk)
    digest = hashing.sha.hexdigest()
    os.replace(tmp, blob_dir / digest)
    return f"sha256:{diff.hexdigest()}", f"sha256:{digest}", hashing.size


def _blob(blob_dir: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blob_dir / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def pack(layer: Path, image_config: dict, ref: str, out: Path,
         created_by: str = "hack/image/build.sh (mmdebstrap + install.sh)") -> dict:
    """Write `out`; image_config is the OCI config's "config" (Env, Cmd, WorkingDir...)."""
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise ValueError(f"image reference {ref!r} needs a tag (name:tag)")
    arch = ARCHES.get(platform.machine(), platform.machine())
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        blob_dir = Path(tmp) / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        diff_id, layer_digest, layer_size = compress_layer(layer, blob_dir)
        config = {
            "architecture": arch, "os": "linux", "created": EPOCH, "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": EPOCH, "created_by": created_by}],
        }
        config_digest, config_size = _blob(blob_dir, _canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = _blob(blob_dir, _canonical(manifest))
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "platform": {"architecture": arch, "os": "linux"},
                # containerd and Docker name the image from the first, Podman from the second.
                "annotations": {"io.containerd.image.name": ref,
                                "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]},
            }],
        }
        docker_manifest = [{"Config": f"blobs/sha256/{config_digest[7:]}", "RepoTags": [ref],
                            "Layers": [f"blobs/sha256/{layer_digest[7:]}"]}]
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
            add_bytes("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
            add_bytes("index.json", _canonical(index))
            add_bytes("manifest.json", _canonical(docker_manifest))
            for blob in sorted(blob_dir.iterdir()):
                info = tar.gettarinfo(str(blob), arcname=f"blobs/sha256/{blob.name}")
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(blob, "rb") as f:
                    tar.addfile(info, f)
        os.replace(partial, out)
    return {"ref": ref, "manifest": manifest_digest, "layer_bytes": layer.stat().st_size,
            "compressed_bytes": layer_size, "archive_bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", type=Path, required=True, help="root filesystem as a tar")
    parser.add_argument("--dockerfile", type=Path, required=True)
    parser.add_argument("--ref", required=True, help="image reference, e.g. localhost/netprobe:dev")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = pack(args.layer, dockerfile_config(args.dockerfile.read_text()), args.ref, args.out)
    except (OSError, ValueError) as err:
        print(f"oci_pack: error={json.dumps(str(err))}", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
