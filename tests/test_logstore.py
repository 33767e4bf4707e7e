"""The log store: one contract, two implementations (a directory, a GCS bucket).

The GCS store is the real ``google-cloud-storage`` client against
``gcp-storage-emulator`` on loopback (a free port, anonymous credentials); its
error mapping is checked by injecting HTTP faults with ``responses`` (429, 503,
403, 401, 404 and a timeout), asserting the JetBridge error a handler would see.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from click.testing import CliRunner
from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from shared.cli import cli
from shared.errors import (
    ConfigurationError,
    JetBridgeError,
    LogStoreForbidden,
    LogStoreUnavailable,
    PermanentError,
    TemporaryError,
)
from shared.local import LocalCI
from shared.logstore import DirectoryLogStore, LogStore, make_log_store
from shared.logstore_gcs import RETRY, GcsLogStore
from shared.settings import Settings

BUCKET = "jb-logs"
#: An endpoint nothing listens on: ``responses`` answers every request before it leaves.
FAULTY = "http://storage.invalid"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    """gcp-storage-emulator on a free loopback port, with the bucket made."""
    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    # Port 0 lets the kernel choose; the bound address is the one to use.
    host, port = server._api._httpd.server_address
    server.url = f"http://{host}:{port}"
    yield server
    server.stop()


@pytest.fixture
def gcs(emulator: Any) -> storage.Client:
    emulator.wipe(keep_buckets=True)
    return client_for(emulator.url)


def client_for(endpoint: str) -> storage.Client:
    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


@pytest.fixture(params=["directory", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LogStore:
    if request.param == "directory":
        return DirectoryLogStore(tmp_path / "logs")
    return GcsLogStore(request.getfixturevalue("gcs"), bucket=BUCKET, prefix="ci")


@pytest.mark.parametrize(
    ("writes", "read", "expected"),
    [
        ([(7, "0", b"cloning...\ndone\n")], (7, "0"), b"cloning...\ndone\n"),
        ([(7, "0", b"first"), (7, "0", b"second")], (7, "0"), b"second"),
        ([(7, "1.0", b"")], (7, "1.0"), b""),
        ([(7, "2", b"\xff\xfe not utf-8 \x00")], (7, "2"), b"\xff\xfe not utf-8 \x00"),
        ([(7, "0", b"x")], (8, "0"), None),
        ([], (7, "0:check"), None),
    ],
    ids=["round-trip", "writing-again-replaces", "empty", "raw-bytes", "other-build", "never-kept"],
)
def test_a_log_reads_back_as_it_was_written(
    store: LogStore,
    writes: list[tuple[int, str, bytes]],
    read: tuple[int, str],
    expected: bytes | None,
) -> None:
    for build_id, key, data in writes:
        store.write(build_id, key, data)
    assert store.read(*read) == expected


@pytest.mark.parametrize(
    ("prefix", "name"),
    [("", "7/0:check.log"), ("ci", "ci/7/0:check.log"), ("/teams/ci/", "teams/ci/7/0:check.log")],
    ids=["no-prefix", "prefix", "prefix-with-slashes"],
)
def test_gcs_objects_are_named_prefix_build_step(
    gcs: storage.Client, prefix: str, name: str
) -> None:
    GcsLogStore(gcs, bucket=BUCKET, prefix=prefix).write(7, "0:check", b"log")
    assert [b.name for b in gcs.list_blobs(BUCKET)] == [name]


def test_the_factory_picks_the_directory_store_by_default(tmp_path: Path) -> None:
    logs = make_log_store(Settings(data_dir=tmp_path))
    assert isinstance(logs, DirectoryLogStore)
    logs.write(3, "1", b"here")
    assert (tmp_path / "logs" / "3" / "1.log").read_bytes() == b"here"


def test_the_factory_picks_gcs_with_the_client_given(gcs: storage.Client, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, log_store="gcs", log_bucket=BUCKET, log_prefix="p")
    logs = make_log_store(settings, client=gcs)
    logs.write(3, "1", b"there")
    assert gcs.bucket(BUCKET).blob("p/3/1.log").download_as_bytes() == b"there"
    assert not (tmp_path / "logs").exists()


def test_the_factory_makes_its_own_client_from_the_environment(
    emulator: Any, gcs: storage.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # STORAGE_EMULATOR_HOST is how google-cloud-storage itself is pointed at an emulator.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    settings = Settings(data_dir=tmp_path, log_store="gcs", log_bucket=BUCKET)
    make_log_store(settings).write(4, "0", b"made here")
    assert gcs.bucket(BUCKET).blob("4/0.log").download_as_bytes() == b"made here"


def test_jetbridge_logs_reads_the_gcs_store_a_local_build_wrote(
    emulator: Any, gcs: storage.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("JETBRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    env = {
        "JETBRIDGE_LOG_STORE": "gcs",
        "JETBRIDGE_LOG_BUCKET": BUCKET,
        "JETBRIDGE_LOG_PREFIX": "ci",
    }
    settings = Settings(data_dir=tmp_path, log_store="gcs", log_bucket=BUCKET, log_prefix="ci")
    pipeline = """
jobs:
- name: hello
  plan:
  - task: greet
    config:
      platform: linux
      run: {path: sh, args: [-c, "echo hello from the pod"]}
"""
    with LocalCI(settings) as ci:
        ci.set_pipeline("greeting", pipeline, {})
        build = ci.run_build("greeting", "hello", timeout=60)
    assert build.status == "succeeded"
    assert gcs.bucket(BUCKET).blob(f"ci/{build.id}/0.log").download_as_bytes() == (
        b"hello from the pod\n"
    )
    assert not (tmp_path / "logs").exists()  # nothing went to the directory store
    result = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path), "logs", str(build.id)], env=env, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "── task greet (succeeded)" in result.output
    assert "hello from the pod" in result.output


def fault(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "json": {"error": {"code": status, "message": message}}}


TIMEOUT = {"body": requests.exceptions.ReadTimeout("read timed out")}

# Each row: what GCS answers, the operation, the error JetBridge raises, words it must say.
FAULTS = [
    ("429-write", fault(429, "rate limit"), "write", LogStoreUnavailable, "could not write"),
    ("503-write", fault(503, "backend error"), "write", LogStoreUnavailable, "503 backend error"),
    ("503-read", fault(503, "backend error"), "read", LogStoreUnavailable, "could not read"),
    ("500-read", fault(500, "internal"), "read", LogStoreUnavailable, "500 internal"),
    ("timeout-write", TIMEOUT, "write", LogStoreUnavailable, "ReadTimeout"),
    ("timeout-read", TIMEOUT, "read", LogStoreUnavailable, "ReadTimeout"),
    (
        "403-write",
        fault(403, "does not have storage.objects.create access"),
        "write",
        LogStoreForbidden,
        "needs storage.objects.create (and storage.objects.delete to replace a log) "
        "on bucket 'jb-logs'",
    ),
    (
        "403-read",
        fault(403, "does not have storage.objects.get access"),
        "read",
        LogStoreForbidden,
        "needs storage.objects.get on bucket 'jb-logs'",
    ),
    ("401-write", fault(401, "invalid credentials"), "write", ConfigurationError, "credentials"),
    ("404-write", fault(404, "bucket not found"), "write", ConfigurationError, "does not exist"),
]


@pytest.mark.parametrize(
    ("answer", "verb", "error", "words"),
    [row[1:] for row in FAULTS],
    ids=[row[0] for row in FAULTS],
)
def test_gcs_faults_become_jetbridge_errors(
    answer: dict[str, Any], verb: str, error: type[JetBridgeError], words: str
) -> None:
    # No retry here: the point is the mapping of one answer (the default retry is bounded below).
    logs = GcsLogStore(client_for(FAULTY), bucket=BUCKET, prefix="ci", retry=None)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as faults:
        faults.add(responses.GET if verb == "read" else responses.POST, re.compile(".*"), **answer)
        with pytest.raises(error) as caught:
            logs.write(7, "2", b"log") if verb == "write" else logs.read(7, "2")
    assert words in str(caught.value)
    assert "gs://jb-logs/ci/7/2.log" in str(caught.value)
    # What the caller does about it: temporary → 503 and redelivery; permanent → recorded.
    assert isinstance(caught.value, TemporaryError) == (error is LogStoreUnavailable)
    assert isinstance(caught.value, PermanentError) == (error is not LogStoreUnavailable)


def test_a_missing_log_is_none_not_an_error() -> None:
    logs = GcsLogStore(client_for(FAULTY), bucket=BUCKET, retry=None)
    with responses.RequestsMock() as faults:
        faults.add(responses.GET, re.compile(".*"), **fault(404, "No such object"))
        assert logs.read(7, "2") is None


def test_the_default_retry_gives_up_within_an_event_delivery() -> None:
    # Knative waits for a handler's answer; past this the event is redelivered instead.
    assert RETRY.timeout is not None and RETRY.timeout <= 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JETBRIDGE_LOG_STORE": "s3"}, "JETBRIDGE_LOG_STORE must be one of directory, gcs"),
        ({"JETBRIDGE_LOG_STORE": "gcs"}, "JETBRIDGE_LOG_STORE=gcs needs JETBRIDGE_LOG_BUCKET"),
    ],
    ids=["unknown-store", "gcs-without-bucket"],
)
def test_impossible_log_settings_are_refused_at_start(env: dict[str, str], message: str) -> None:
    from shared.settings import load_settings

    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_settings(env)
