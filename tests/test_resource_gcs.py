"""The built-in gcs resource, run as Concourse runs it: an executable, JSON in, JSON out.

The scripts run as subprocesses against ``gcp-storage-emulator`` on a free
loopback port (``STORAGE_EMULATOR_HOST``, which google-cloud-storage reads
itself), so what is checked is what a pipeline sees: stdout, stderr, the exit
code, the files in the destination and the objects in the bucket afterwards.
What the emulator cannot do (refuse with 403, issue tokens for a service
account) comes from a small fake GCS on loopback as well.

The emulator keeps no old generations (no object versioning), so for
``versioned_file`` it behaves as a bucket without versioning: a replaced
generation is gone.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from shared.resources import RESOURCE_DIRS

GCS_DIR = RESOURCE_DIRS["gcs"]
BUCKET = "jb-releases"

#: A script run against loopback takes well under a second; a hung one fails the test.
SCRIPT_TIMEOUT = 60

#: Release objects under builds/, in the order of their versions (semver, not names).
RELEASES = [
    "builds/release-1.2.tgz",
    "builds/release-1.9.0.tgz",
    "builds/release-1.10.0.tgz",
    "builds/release-2.0.0-rc.1.tgz",
    "builds/release-2.0.0-rc.2.tgz",
    "builds/release-2.0.0.tgz",
]
REGEXP = r"builds/release-(.*)\.tgz"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """gcp-storage-emulator on a free loopback port, with the bucket made; its URL."""
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    # Port 0 lets the kernel choose; the bound address is the one to use.
    host, port = server._api._httpd.server_address
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def gcs(emulator: str) -> Iterator[storage.Client]:
    """A client of the emulator, whose bucket is empty at the start of each test."""
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": emulator},
    )
    for blob in client.list_blobs(BUCKET):
        blob.delete()
    yield client


@pytest.fixture
def env(tmp_path: Path, emulator: str) -> dict[str, str]:
    """The scripts' environment: the emulator, and no credentials of this machine's."""
    home = tmp_path / "home"
    home.mkdir()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_", "STORAGE_EMULATOR"))
    }
    clean.update(
        HOME=str(home),
        STORAGE_EMULATOR_HOST=emulator,
        # `#!/usr/bin/env python3` finds the test's interpreter, which has the client library.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return clean


def upload(gcs: storage.Client, name: str, data: bytes | str) -> storage.Blob:
    blob = gcs.bucket(BUCKET).blob(name)
    blob.upload_from_string(data)
    return blob


def run(
    script: str, request: Mapping[str, Any], *args: str | Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``/opt/resource/<script>`` the way Concourse does."""
    return subprocess.run(
        [str(GCS_DIR / script), *map(str, args)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON response of a run that must have succeeded."""
    assert done.returncode == 0, f"exit {done.returncode}, stderr:\n{done.stderr}"
    return json.loads(done.stdout)


def failed(done: subprocess.CompletedProcess[str]) -> str:
    """The error line of a run that must have failed, and printed nothing on stdout."""
    assert done.returncode == 1, f"exit {done.returncode}, stdout: {done.stdout!r}"
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return errors[0]


def regexp_source(**extra: Any) -> dict[str, Any]:
    return {"bucket": BUCKET, "regexp": REGEXP, **extra}


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("script", ["check", "in", "out"])
def test_scripts_are_self_contained_executables(script: str) -> None:
    path = GCS_DIR / script
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    module = (GCS_DIR / "_gcsresource.py").read_text()
    # `shared` is not importable in a step's pod.
    assert "import shared" not in module and "from shared" not in module


# --------------------------------------------------------------------------- check


@pytest.mark.parametrize(
    ("source", "version", "want"),
    [
        ({}, None, ["builds/release-2.0.0.tgz"]),
        (
            {},
            "builds/release-1.9.0.tgz",
            RELEASES[1:],
        ),
        ({}, "builds/release-2.0.0.tgz", ["builds/release-2.0.0.tgz"]),
        ({}, "builds/release-1.5.0.tgz", RELEASES[1:]),
        ({}, "elsewhere/x-1.0.tgz", ["builds/release-2.0.0.tgz"]),
        (
            {"regexp": r"builds/(?P<kind>release)-(?P<version>[0-9.]+)\.tgz"},
            "builds/release-1.10.0.tgz",
            ["builds/release-1.10.0.tgz", "builds/release-2.0.0.tgz"],
        ),
        ({"regexp": r"(?:builds|other)/release-(1\..*)\.tgz"}, None, ["builds/release-1.10.0.tgz"]),
    ],
    ids=[
        "latest",
        "from-a-version-semver-order",
        "at-latest",
        "from-a-deleted-version",
        "version-of-another-regexp",
        "named-version-group",
        "no-literal-prefix",
    ],
)
def test_check_by_regexp_lists_versions_oldest_first(
    gcs: storage.Client,
    env: dict[str, str],
    source: dict[str, Any],
    version: str | None,
    want: list[str],
) -> None:
    for name in [*reversed(RELEASES), "builds/release-latest.tgz", "builds/notes.txt"]:
        upload(gcs, name, name)
    request = {"source": regexp_source(**source), "version": version and {"path": version}}
    assert ok(run("check", request, env=env)) == [{"path": p} for p in want]


def test_check_by_regexp_with_nothing_matching_reports_nothing_and_says_why(
    gcs: storage.Client, env: dict[str, str]
) -> None:
    upload(gcs, "builds/notes.txt", "x")
    done = run("check", {"source": regexp_source(), "version": None}, env=env)
    assert ok(done) == []
    assert f"no object in gs://{BUCKET}/ matches regexp" in done.stderr

    initial = regexp_source(initial_path="builds/release-0.0.0.tgz")
    assert ok(run("check", {"source": initial}, env=env)) == [{"path": "builds/release-0.0.0.tgz"}]


def test_check_by_versioned_file_reports_the_live_generation(
    gcs: storage.Client, env: dict[str, str]
) -> None:
    source = {"bucket": BUCKET, "versioned_file": "state/terraform.tfstate"}
    assert ok(run("check", {"source": source}, env=env)) == []

    first = upload(gcs, "state/terraform.tfstate", "v1").generation
    upload(gcs, "state/terraform.tfstate.backup", "not this one")
    [version] = ok(run("check", {"source": source}, env=env))
    assert version == {"generation": str(first)}
    assert ok(run("check", {"source": source, "version": version}, env=env)) == [version]

    second = upload(gcs, "state/terraform.tfstate", "v2").generation
    assert second > first
    # Without versioning the first generation is gone: only the new one is left.
    after = ok(run("check", {"source": source, "version": version}, env=env))
    assert after == [{"generation": str(second)}]


# --------------------------------------------------------------------------- in


def test_in_by_regexp_fetches_the_object_with_url_and_version_files(
    gcs: storage.Client, env: dict[str, str], tmp_path: Path
) -> None:
    blob = upload(gcs, "builds/release-1.10.0.tgz", b"the release")
    upload(gcs, "builds/release-2.0.0.tgz", b"a newer one")
    dest = tmp_path / "release"
    request = {"source": regexp_source(), "version": {"path": "builds/release-1.10.0.tgz"}}

    response = ok(run("in", request, dest, env=env))

    assert (dest / "release-1.10.0.tgz").read_bytes() == b"the release"
    assert (dest / "version").read_text() == "1.10.0"
    url = (dest / "url").read_text()
    assert url == blob.media_link
    assert response == {
        "version": {"path": "builds/release-1.10.0.tgz"},
        "metadata": [
            {"name": "filename", "value": "release-1.10.0.tgz"},
            {"name": "url", "value": url},
        ],
    }
    assert sorted(p.name for p in dest.iterdir()) == ["release-1.10.0.tgz", "url", "version"]


def test_in_by_versioned_file_fetches_that_generation(
    gcs: storage.Client, env: dict[str, str], tmp_path: Path
) -> None:
    generation = str(upload(gcs, "state/app.json", b'{"v": 1}').generation)
    source = {"bucket": BUCKET, "versioned_file": "state/app.json"}

    response = ok(
        run(
            "in", {"source": source, "version": {"generation": generation}}, tmp_path / "d", env=env
        )
    )

    assert response["version"] == {"generation": generation}
    assert (tmp_path / "d" / "app.json").read_bytes() == b'{"v": 1}'
    assert (tmp_path / "d" / "generation").read_text() == generation
    assert generation in (tmp_path / "d" / "url").read_text()


@pytest.mark.parametrize(
    ("source_skip", "param", "downloaded"),
    [(None, True, False), (True, None, False), (True, "false", True), (None, None, True)],
    ids=["param", "source", "param-overrides-source", "default"],
)
def test_in_skip_download_writes_only_the_version_files(
    gcs: storage.Client,
    env: dict[str, str],
    tmp_path: Path,
    source_skip: bool | None,
    param: bool | str | None,
    downloaded: bool,
) -> None:
    upload(gcs, "builds/release-1.2.tgz", b"x")
    source = regexp_source(**({"skip_download": source_skip} if source_skip is not None else {}))
    params = {"skip_download": param} if param is not None else {}
    request = {"source": source, "version": {"path": "builds/release-1.2.tgz"}, "params": params}
    ok(run("in", request, tmp_path / "d", env=env))
    assert (tmp_path / "d" / "release-1.2.tgz").exists() == downloaded
    assert (tmp_path / "d" / "version").read_text() == "1.2"


def test_in_of_the_initial_version_writes_its_content_without_gcs(
    env: dict[str, str], tmp_path: Path
) -> None:
    content = base64.b64encode(b"\x00seed").decode()
    source = regexp_source(
        bucket="no-such-bucket",
        initial_path="builds/release-0.0.0.tgz",
        initial_content_binary=content,
    )
    request = {"source": source, "version": {"path": "builds/release-0.0.0.tgz"}}
    ok(run("in", request, tmp_path / "d", env=env))
    assert (tmp_path / "d" / "release-0.0.0.tgz").read_bytes() == b"\x00seed"
    assert (tmp_path / "d" / "version").read_text() == "0.0.0"


def test_in_never_writes_outside_dest_whatever_the_object_is_called(
    env: dict[str, str], tmp_path: Path
) -> None:
    source = {"bucket": BUCKET, "regexp": r"dist/(.*)", "initial_path": "dist/.."}
    dest = tmp_path / "build" / "d"
    error = failed(run("in", {"source": source, "version": {"path": "dist/.."}}, dest, env=env))
    assert error == f"error: gs://{BUCKET}/dist/.. has no file name to download it as"
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["d"]


@pytest.mark.parametrize(
    ("source", "version", "message"),
    [
        (
            regexp_source(),
            {"path": "builds/release-9.9.9.tgz"},
            "object gs://jb-releases/builds/release-9.9.9.tgz not found",
        ),
        (
            regexp_source(regexp=r"builds/nightly-(.*)\.tgz"),
            None,
            "no object in gs://jb-releases/ matches regexp",
        ),
        (
            {"bucket": BUCKET, "versioned_file": "builds/release-1.2.tgz"},
            {"generation": "12345"},
            "generation 12345 of gs://jb-releases/builds/release-1.2.tgz not found (generations found: ",
        ),
        (
            regexp_source(bucket="no-such-bucket"),
            {"path": "builds/release-1.2.tgz"},
            "bucket no-such-bucket not found",
        ),
    ],
    ids=["object-gone", "nothing-matches", "generation-gone", "no-bucket"],
)
def test_in_of_something_missing_fails_naming_it(
    gcs: storage.Client,
    env: dict[str, str],
    tmp_path: Path,
    source: dict[str, Any],
    version: dict[str, str] | None,
    message: str,
) -> None:
    upload(gcs, "builds/release-1.2.tgz", b"x")
    upload(gcs, "builds/notes.txt", b"x")
    request = {"source": source, "version": version}
    assert message in failed(run("in", request, tmp_path / "d", env=env))


# --------------------------------------------------------------------------- unpack


@dataclass
class Entry:
    """One member of a test archive."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file, dir, symlink, hardlink, fifo
    target: str = ""
    mode: int = 0o644


def make_tar(entries: list[Entry], *, compress: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if compress else "w") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.mtime = 1_700_000_000
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif e.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, e.target
            elif e.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, e.target
            elif e.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                info.size = len(e.data)
            tar.addfile(info, io.BytesIO(e.data) if e.kind == "file" else None)
    return out.getvalue()


def make_zip(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for e in entries:
            info = zipfile.ZipInfo(e.name)
            if e.kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, e.target)
            else:
                info.external_attr = (stat.S_IFREG | e.mode) << 16
                zf.writestr(info, e.data)
    return out.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


GOOD = [
    Entry("bin", kind="dir"),
    Entry("bin/tool", b"#!/bin/sh\n", mode=0o4755),
    Entry("README", b"read me"),
    Entry("docs/guide.md", b"guide"),
    Entry("current", kind="symlink", target="bin/tool"),
    Entry("docs/readme", kind="symlink", target="../README"),
    Entry("copy", kind="hardlink", target="README"),
]


@pytest.mark.parametrize(
    ("name", "archive", "want"),
    [
        ("app.tar", make_tar(GOOD), {"README": b"read me", "bin/tool": b"#!/bin/sh\n"}),
        ("app.tgz", make_tar(GOOD, compress=True), {"docs/guide.md": b"guide", "copy": b"read me"}),
        ("app.zip", make_zip([e for e in GOOD if e.kind == "file"]), {"docs/guide.md": b"guide"}),
        ("notes.txt.gz", gzipped(b"plain text"), {"notes.txt": b"plain text"}),
    ],
    ids=["tar", "gzipped-tar", "zip", "gzipped-file"],
)
def test_in_unpacks_an_archive_next_to_it(
    gcs: storage.Client,
    env: dict[str, str],
    tmp_path: Path,
    name: str,
    archive: bytes,
    want: dict[str, bytes],
) -> None:
    upload(gcs, f"dist/{name}", archive)
    source = {"bucket": BUCKET, "regexp": r"dist/(.*)"}
    request = {"source": source, "version": {"path": f"dist/{name}"}, "params": {"unpack": True}}
    dest = tmp_path / "d"

    ok(run("in", request, dest, env=env))

    assert (dest / name).read_bytes() == archive, "the archive itself is kept"
    for path, content in want.items():
        assert (dest / path).read_bytes() == content
    if name.endswith(("tar", "tgz")):
        assert os.readlink(dest / "current") == "bin/tool"
        assert (dest / "docs/readme").read_bytes() == b"read me"
        mode = stat.S_IMODE((dest / "bin/tool").stat().st_mode)
        assert mode == 0o755, "setuid is dropped, the execute bits kept"
    assert not [p for p in dest.iterdir() if p.name.startswith(".jetbridge")]


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (
            make_tar([Entry("ok.txt", b"x"), Entry("/etc/evil", b"x")]),
            "entry '/etc/evil' has an absolute path",
        ),
        (
            make_tar([Entry("ok.txt", b"x"), Entry("a/../../evil", b"x")]),
            "entry 'a/../../evil' has a '..' component",
        ),
        (
            make_tar([Entry("passwd", kind="symlink", target="/etc/passwd")]),
            "is a link to '/etc/passwd'",
        ),
        (
            make_tar([Entry("up", kind="symlink", target="../outside")]),
            "is a link to '../outside', outside",
        ),
        (
            # Each link stays inside on its own; together they lead out.
            make_tar(
                [
                    Entry("here", kind="symlink", target="."),
                    Entry("out", kind="symlink", target="here/.."),
                ]
            ),
            "entry 'out' is a link that leads outside the archive",
        ),
        (
            make_tar([Entry("dir", kind="symlink", target="."), Entry("dir/x", b"x")]),
            "entry 'dir/x' goes through a symbolic link",
        ),
        (
            make_tar([Entry("h", kind="hardlink", target="/etc/passwd")]),
            "is a hard link to '/etc/passwd'",
        ),
        (make_tar([Entry("p", kind="fifo")]), "entry 'p' is a device, fifo or other special file"),
        (make_zip([Entry("../evil", b"x")]), "entry '../evil' has a '..' component"),
        (make_zip([Entry("l", kind="symlink", target="/etc")]), "is a link to '/etc'"),
        (b"just some bytes", "app.bin is not a tar, zip or gzip file"),
        (make_tar([Entry("x", b"y" * 4096)])[:1024], "app.bin is a damaged tar archive"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "symlink-absolute",
        "symlink-up",
        "symlink-chain",
        "through-symlink",
        "hardlink-outside",
        "fifo",
        "zip-dotdot",
        "zip-symlink",
        "not-an-archive",
        "truncated",
    ],
)
def test_in_refuses_an_unsafe_archive_and_unpacks_nothing(
    gcs: storage.Client, env: dict[str, str], tmp_path: Path, archive: bytes, message: str
) -> None:
    upload(gcs, "dist/app.bin", archive)
    source = {"bucket": BUCKET, "regexp": r"dist/(.*)"}
    request = {"source": source, "version": {"path": "dist/app.bin"}, "params": {"unpack": True}}
    dest = tmp_path / "build" / "d"

    error = failed(run("in", request, dest, env=env))

    assert message in error
    assert sorted(p.name for p in dest.iterdir()) == ["app.bin"]
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["d"]


# --------------------------------------------------------------------------- out


def test_out_by_regexp_uploads_into_the_regexps_folder_and_check_sees_it(
    gcs: storage.Client, env: dict[str, str], tmp_path: Path
) -> None:
    upload(gcs, "builds/release-1.2.tgz", b"old")
    src = tmp_path / "build"
    (src / "out").mkdir(parents=True)
    (src / "out" / "release-1.10.0.tgz").write_bytes(b"new release")
    (src / "out" / "notes.txt").write_text("not this")
    params = {
        "file": "out/release-*.tgz",
        "content_type": "application/octet-stream",
        "cache_control": "max-age=60",
        "predefined_acl": "publicRead",
    }

    response = ok(run("out", {"source": regexp_source(), "params": params}, src, env=env))

    name = "builds/release-1.10.0.tgz"
    assert response["version"] == {"path": name}
    assert response["metadata"][0] == {"name": "filename", "value": "release-1.10.0.tgz"}
    blob = gcs.bucket(BUCKET).get_blob(name)
    assert blob is not None
    assert blob.content_type == "application/octet-stream"
    assert blob.cache_control == "max-age=60"
    # Last: a download resets the blob's properties from the response's headers.
    assert blob.download_as_bytes() == b"new release"
    checked = ok(
        run(
            "check",
            {"source": regexp_source(), "version": {"path": "builds/release-1.2.tgz"}},
            env=env,
        )
    )
    assert checked == [{"path": "builds/release-1.2.tgz"}, {"path": name}]


def test_out_by_versioned_file_reports_the_new_generation(
    gcs: storage.Client, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "state.json").write_text('{"serial": 2}')
    source = {"bucket": BUCKET, "versioned_file": "state/app.json"}

    response = ok(
        run("out", {"source": source, "params": {"file": "state.json"}}, tmp_path, env=env)
    )

    blob = gcs.bucket(BUCKET).get_blob("state/app.json")
    assert blob is not None
    assert response["version"] == {"generation": str(blob.generation)}
    assert blob.download_as_bytes() == b'{"serial": 2}'
    assert ok(run("check", {"source": source}, env=env)) == [response["version"]]


@pytest.mark.parametrize(
    ("source", "params", "message"),
    [
        (regexp_source(), {}, "params.file is required"),
        (regexp_source(), {"file": "out/*.zip"}, "params.file 'out/*.zip' matches no file under"),
        (
            regexp_source(),
            {"file": "out/*"},
            "params.file 'out/*' matches 2 files (out/notes.txt, out/release-1.0.tgz)",
        ),
        (regexp_source(), {"file": "../secret*"}, "params.file '../secret*' matches no file"),
        (
            regexp_source(),
            {"file": "out/notes.txt"},
            "notes.txt would be uploaded as builds/notes.txt, which does not match",
        ),
        (
            {"bucket": BUCKET, "regexp": r"(dev|prod)/app-(.*)\.tgz"},
            {"file": "out/*.tgz"},
            "its folder part is a pattern",
        ),
        (
            regexp_source(),
            {"file": "out/*.tgz", "predefined_acl": "publicReadWrite"},
            "params.predefined_acl must be one of",
        ),
        (
            regexp_source(bucket="no-such-bucket"),
            {"file": "out/*.tgz"},
            "bucket no-such-bucket not found",
        ),
    ],
    ids=[
        "no-file",
        "no-match",
        "two-matches",
        "outside-src",
        "name-not-matching",
        "pattern-folder",
        "bucket-acl",
        "no-bucket",
    ],
)
def test_out_with_bad_params_fails_clearly_and_uploads_nothing(
    gcs: storage.Client,
    env: dict[str, str],
    tmp_path: Path,
    source: dict[str, Any],
    params: dict[str, Any],
    message: str,
) -> None:
    src = tmp_path / "build"
    (src / "out").mkdir(parents=True)
    (src / "out" / "release-1.0.tgz").write_bytes(b"x")
    (src / "out" / "notes.txt").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside the step's directory")

    error = failed(run("out", {"source": source, "params": params}, src, env=env))

    assert message in error
    assert list(gcs.list_blobs(BUCKET)) == []


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"regexp": REGEXP}, "source.bucket is required"),
        ({"bucket": "gs://x/y", "regexp": REGEXP}, "source.bucket must be a bucket name"),
        ({"bucket": BUCKET}, "source must set exactly one of regexp"),
        ({"bucket": BUCKET, "regexp": REGEXP, "versioned_file": "f"}, "found both"),
        ({"bucket": BUCKET, "regexp": "builds/release.tgz"}, "has no capture group"),
        ({"bucket": BUCKET, "regexp": "builds/(.*"}, "is not a valid regexp"),
        ({"bucket": "no-such-bucket", "regexp": REGEXP}, "bucket no-such-bucket not found"),
        ({"bucket": "no-such-bucket", "versioned_file": "f"}, "bucket no-such-bucket not found"),
    ],
    ids=[
        "no-bucket",
        "bucket-url",
        "neither",
        "both",
        "no-group",
        "bad-regexp",
        "missing-bucket",
        "missing-bucket-versioned",
    ],
)
def test_check_with_a_bad_source_fails_with_one_clear_line(
    gcs: storage.Client, env: dict[str, str], source: dict[str, Any], message: str
) -> None:
    assert message in failed(run("check", {"source": source}, env=env))


def test_unknown_keys_are_ignored_with_a_warning(gcs: storage.Client, env: dict[str, str]) -> None:
    done = run("check", {"source": regexp_source(regex="typo")}, env=env)
    assert ok(done) == []
    assert "warning: ignoring source.regex" in done.stderr


# --------------------------------------------------------------------------- credentials


@dataclass
class FakeGcs:
    """A loopback stand-in for Google: a token endpoint, and GCS refusing everything.

    Refusals carry the JSON error GCS sends when the caller lacks an IAM permission.
    """

    url: str
    token_status: int = 200
    token_requests: list[dict[str, str]] = field(default_factory=list)


def _permission(method: str, path: str) -> str:
    if method == "POST":
        return "storage.objects.create"
    if path.rstrip("/").endswith("/o") or "/o?" in path:
        return "storage.objects.list"
    return "storage.objects.get"


@pytest.fixture
def fake_gcs() -> Iterator[FakeGcs]:
    state = FakeGcs(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path == "/token":
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                state.token_requests.append(form)
                if state.token_status != 200:
                    self._answer(state.token_status, {"error": "invalid_grant"})
                else:
                    self._answer(200, {"access_token": "tok-123", "expires_in": 3600})
                return
            permission = _permission(self.command, self.path)
            message = (
                f"ci@proj.iam.gserviceaccount.com does not have {permission} access to the "
                f"Google Cloud Storage bucket. Permission '{permission}' denied on resource "
                "(or it may not exist)."
            )
            self._answer(403, {"error": {"code": 403, "message": message}})

        do_GET = do_POST = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture(scope="module")
def private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def json_key(private_key: str, token_uri: str) -> str:
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": private_key,
            "client_email": "ci@proj.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        }
    )


def corrupted(pem: str) -> str:
    """The key with its second line of base64 replaced: valid PEM, no valid key inside."""
    lines = pem.splitlines()
    lines[2] = "A" * len(lines[2])
    return "\n".join(lines) + "\n"


def secrets_of(key: str) -> list[str]:
    """What must never be printed: the key id and every line of the private key."""
    info = json.loads(key)
    lines = [line for line in info["private_key"].splitlines() if not line.startswith("-----")]
    return [info["private_key_id"], *lines]


@pytest.mark.parametrize(
    ("script", "permission"),
    [
        ("check", "storage.objects.list"),
        ("in", "storage.objects.list"),
        ("out", "storage.objects.create"),
    ],
)
def test_a_403_names_the_missing_permission_and_the_bucket(
    fake_gcs: FakeGcs, env: dict[str, str], tmp_path: Path, script: str, permission: str
) -> None:
    env["STORAGE_EMULATOR_HOST"] = fake_gcs.url
    (tmp_path / "release-1.0.tgz").write_bytes(b"x")
    request = {
        "source": regexp_source(),
        "version": {"path": "builds/release-1.0.tgz"},
        "params": {"file": "release-*.tgz"},
    }
    args = [tmp_path / "dest"] if script == "in" else [tmp_path] if script == "out" else []

    error = failed(run(script, request, *args, env=env))

    assert f"the credentials need {permission} on bucket {BUCKET}" in error
    assert error.startswith("error: permission denied ")


def test_json_key_authenticates_as_the_service_account(
    gcs: storage.Client, fake_gcs: FakeGcs, env: dict[str, str], private_key: str
) -> None:
    upload(gcs, "builds/release-1.0.tgz", b"x")
    key = json_key(private_key, f"{fake_gcs.url}/token")
    done = run("check", {"source": regexp_source(json_key=key)}, env=env)
    assert ok(done) == [{"path": "builds/release-1.0.tgz"}]
    # The key was used: JWTs signed by it, naming the service account, bought the tokens.
    assert fake_gcs.token_requests
    for token_request in fake_gcs.token_requests:
        claims = token_request["assertion"].split(".")[1]
        payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        assert payload["iss"] == "ci@proj.iam.gserviceaccount.com"
    for secret in secrets_of(key):
        assert secret not in done.stderr


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda pem, uri: pem, "source.json_key is not valid JSON (line 1 column 1)"),
        (
            lambda pem, uri: json.dumps({"type": "authorized_user"}),
            "source.json_key is not a service account key",
        ),
        (
            lambda pem, uri: json_key(corrupted(pem), uri),
            "source.json_key cannot be used",
        ),
        (
            lambda pem, uri: json_key(pem, uri),
            "cannot get an access token listing gs://jb-releases/builds/",
        ),
    ],
    ids=["not-json", "not-a-service-account", "bad-private-key", "token-refused"],
)
def test_a_bad_json_key_fails_clearly_and_is_never_printed(
    fake_gcs: FakeGcs,
    env: dict[str, str],
    private_key: str,
    make_key: Any,
    message: str,
) -> None:
    fake_gcs.token_status = 400
    key = make_key(private_key, f"{fake_gcs.url}/token")
    done = run("check", {"source": regexp_source(json_key=key)}, env=env)
    assert message in failed(done)
    for secret in secrets_of(json_key(private_key, "")):
        assert secret not in done.stderr
