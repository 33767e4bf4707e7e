"""The built-in ``gcs`` resource type: Concourse's resource protocol over Google Cloud Storage.

The executables ``check``, ``in`` and ``out`` next to this file are three-line
shims into :func:`main`. Everything lives in this one module because the scripts
run inside step pods where ``shared`` is not importable: the standard library
and ``google-cloud-storage`` (installed in JetBridge's image) only.

Source and params follow the community gcs-resource (frodenas/gcs-resource), so
a pipeline written for it works unchanged:

* ``source``: ``bucket`` (required); exactly one of ``regexp`` (objects whose
  names match, versioned by the first capture group, or the group named
  ``version``, compared as semantic versions) or ``versioned_file`` (one object,
  versioned by its generations); ``json_key`` (a service account key's JSON;
  without it, application default credentials, or anonymous access when there
  are none); ``skip_download``; ``initial_path`` / ``initial_version`` with
  ``initial_content_text`` / ``initial_content_binary``.
* ``in`` params: ``skip_download``, ``unpack`` (tar, zip, gzip, gzipped tar).
* ``out`` params: ``file`` (required; a glob under the step's directory that must
  match exactly one file), ``predefined_acl``, ``content_type``, ``cache_control``.

Versions are ``{"path": <object name>}`` with ``regexp`` and
``{"generation": <generation>}`` with ``versioned_file``. ``check`` follows
Concourse's protocol: the given version first when it still exists, then every
newer one. ``STORAGE_EMULATOR_HOST`` (read by google-cloud-storage itself)
points the scripts at an emulator; without ``json_key`` they then connect
anonymously.

Secrets never reach stderr: every line printed passes through a
:class:`Redactor` that knows the key, its private key and each of its lines.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import glob
import gzip
import json
import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import traceback
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

import google.auth
import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.oauth2 import service_account

#: What every secret is replaced with in anything printed.
MASK = "***"

#: OAuth scope of the credentials: ``out`` writes objects and may set their ACL.
SCOPE = "https://www.googleapis.com/auth/devstorage.full_control"

#: Lines of a private key shorter than this are not secret on their own (blank or
#: base64 padding); the BEGIN/END markers are skipped separately.
MIN_SECRET_LINE = 8

#: ``predefinedAcl`` values GCS accepts for an object (``publicReadWrite``, listed
#: by gcs-resource's README, applies to buckets only and GCS refuses it here).
PREDEFINED_ACLS = (
    "authenticatedRead",
    "bucketOwnerFullControl",
    "bucketOwnerRead",
    "private",
    "projectPrivate",
    "publicRead",
)

#: An IAM permission named in a GCS error message, e.g. ``storage.objects.list``.
PERMISSION_RE = re.compile(r"\bstorage\.[a-zA-Z]+\.[a-zA-Z]+\b")

#: A regexp section that is a plain name: escaped or ordinary characters, no
#: operators (the same test gcs-resource uses to find the prefix to list).
_SPECIAL = r"\\*.\[\](){}?|^$+"
LITERAL_SECTION_RE = re.compile(rf"(?:\\[{_SPECIAL}]|[^{_SPECIAL}])*")
UNESCAPE_RE = re.compile(rf"\\([{_SPECIAL}])")

#: A semantic version, leniently: a leading ``v`` and missing minor or patch
#: numbers are accepted (``1`` is ``1.0.0``), as gcs-resource pads them.
SEMVER_RE = re.compile(
    r"v?(?P<major>\d+)(?:\.(?P<minor>\d+))?(?:\.(?P<patch>\d+))?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)

#: Names found in a listing shown in an error message; more would drown the line.
SHOWN_NAMES = 5

#: Copy buffer for unpacking: few system calls, little memory.
CHUNK = 1024 * 1024

SOURCE_KEYS = frozenset(
    {
        "bucket",
        "json_key",
        "regexp",
        "versioned_file",
        "skip_download",
        "initial_path",
        "initial_version",
        "initial_content_text",
        "initial_content_binary",
    }
)
IN_PARAMS = frozenset({"skip_download", "unpack"})
OUT_PARAMS = frozenset({"file", "predefined_acl", "content_type", "cache_control"})


class ResourceError(Exception):
    """A failure the user can act on; printed as one line, and the script exits 1."""


class MetadataField(TypedDict):
    """One ``{"name", "value"}`` entry of a response's metadata, as Concourse shows it."""

    name: str
    value: str


Version = dict[str, str]
Action = Callable[[Mapping[str, Any], Sequence[str], "Redactor"], Any]


# --------------------------------------------------------------------------- secrets


class Redactor:
    """Masks known secrets in text about to be printed."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def from_source(cls, source: object) -> Redactor:
        """Collect every secret a raw ``source`` holds, before it is even validated."""
        if not isinstance(source, Mapping):
            return cls()
        key = source.get("json_key")
        secrets: list[str] = []
        info: object = key
        if isinstance(key, str):
            secrets.append(key.strip())
            with contextlib.suppress(ValueError):
                info = json.loads(key)
        if isinstance(info, Mapping):
            for name in ("private_key", "private_key_id"):
                value = info.get(name)
                if isinstance(value, str):
                    secrets.append(value.strip())
                    # JSON escapes the newlines; the raw key text may be echoed too.
                    secrets.append(json.dumps(value)[1:-1])
            private_key = info.get("private_key")
            if isinstance(private_key, str):
                secrets += [
                    line.strip()
                    for line in private_key.replace("\\n", "\n").splitlines()
                    if len(line.strip()) >= MIN_SECRET_LINE and not line.startswith("-----")
                ]
        return cls(secrets)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def log(message: str) -> None:
    """Tell the build's log (stderr: stdout is the response)."""
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, kw_only=True)
class Source:
    """The resource's ``source``, validated."""

    bucket: str
    regexp: re.Pattern[str] | None
    """Object names matching this whole pattern are the versions."""
    versioned_file: str | None
    """The one object whose generations are the versions."""
    json_key: Mapping[str, Any] | None
    """The service account key, parsed; ``None`` for default or anonymous credentials."""
    skip_download: bool
    initial_path: str | None
    initial_version: str | None
    initial_content: bytes
    """What ``in`` writes for the initial version (empty unless configured)."""

    @property
    def pattern(self) -> str:
        """The regexp as written in the pipeline."""
        assert self.regexp is not None
        return self.regexp.pattern

    def url(self, name: str = "") -> str:
        """``gs://bucket/name``, for messages."""
        return f"gs://{self.bucket}/{name}"


def parse_request(raw: str) -> dict[str, Any]:
    """The JSON object Concourse writes on stdin."""
    try:
        request = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ResourceError(f"stdin is not valid JSON: {e}") from None
    if not isinstance(request, dict):
        raise ResourceError(f"stdin must be a JSON object, found {type(request).__name__}")
    return request


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ResourceError(f"{where}.{key} must be a string, found {type(value).__name__}")
    return value


def _bool(obj: Mapping[str, Any], key: str, where: str, default: bool = False) -> bool:
    """A boolean; gcs-resource also takes the strings ``"true"`` and ``"false"``."""
    value = obj.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ResourceError(f"{where}.{key} must be true or false, found {value!r}")
    return value


def _warn_unknown(obj: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    # Concourse's resources ignore unknown keys; say so, since it is usually a typo.
    for key in sorted(set(obj) - known):
        log(f"warning: ignoring {where}.{key}: the gcs type does not know it")


def _json_key(value: object) -> Mapping[str, Any] | None:
    if value is None or value == "":
        return None
    info: object = value
    if isinstance(value, str):
        try:
            info = json.loads(value)
        except json.JSONDecodeError as e:
            # The position only: the text itself is the secret.
            raise ResourceError(
                f"source.json_key is not valid JSON (line {e.lineno} column {e.colno}); "
                "it must hold the contents of a service account key file"
            ) from None
    if not isinstance(info, Mapping):
        raise ResourceError("source.json_key must hold a service account key: a JSON object")
    if info.get("type") != "service_account":
        raise ResourceError(
            f"source.json_key is not a service account key: its type is {info.get('type')!r}, "
            "not 'service_account'"
        )
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        raise ResourceError(f"source.json_key is missing {', '.join(missing)}")
    return info


def parse_source(raw: object) -> Source:
    """Validate ``source``; a problem raises :class:`ResourceError` naming the field."""
    if not isinstance(raw, dict):
        raise ResourceError("source must be a JSON object with at least a bucket")
    _warn_unknown(raw, SOURCE_KEYS, "source")
    bucket = _optional_str(raw, "bucket", "source")
    if bucket is None or not bucket.strip():
        raise ResourceError("source.bucket is required: the name of the bucket")
    if bucket.startswith("gs://") or "/" in bucket:
        raise ResourceError(f"source.bucket must be a bucket name, not a path: found {bucket!r}")
    pattern = _optional_str(raw, "regexp", "source")
    versioned_file = _optional_str(raw, "versioned_file", "source")
    if (pattern is None) == (versioned_file is None):
        raise ResourceError(
            "source must set exactly one of regexp (objects by name) and versioned_file "
            "(one object's generations)" + ("; found both" if pattern is not None else "")
        )
    regexp = None
    if pattern is not None:
        try:
            regexp = re.compile(pattern)
        except re.error as e:
            raise ResourceError(f"source.regexp {pattern!r} is not a valid regexp: {e}") from None
        if regexp.groups == 0:
            raise ResourceError(
                f"source.regexp {pattern!r} has no capture group: put the version in "
                "parentheses, e.g. release-(.*).tgz"
            )
    initial_path = _optional_str(raw, "initial_path", "source")
    initial_version = _optional_str(raw, "initial_version", "source")
    if initial_path is not None and regexp is None:
        raise ResourceError("source.initial_path goes with regexp; use initial_version instead")
    if initial_version is not None and versioned_file is None:
        raise ResourceError("source.initial_version goes with versioned_file; use initial_path")
    if initial_path is not None and regexp is not None and not regexp.fullmatch(initial_path):
        raise ResourceError(f"source.initial_path {initial_path!r} does not match source.regexp")
    text = _optional_str(raw, "initial_content_text", "source")
    binary = _optional_str(raw, "initial_content_binary", "source")
    if text is not None and binary is not None:
        raise ResourceError(
            "set only one of source.initial_content_text and initial_content_binary"
        )
    content = b""
    if text is not None:
        content = text.encode()
    elif binary is not None:
        try:
            content = base64.b64decode(binary, validate=True)
        except binascii.Error as e:
            raise ResourceError(f"source.initial_content_binary is not base64: {e}") from None
    return Source(
        bucket=bucket.strip(),
        regexp=regexp,
        versioned_file=versioned_file,
        json_key=_json_key(raw.get("json_key")),
        skip_download=_bool(raw, "skip_download", "source"),
        initial_path=initial_path,
        initial_version=initial_version,
        initial_content=content,
    )


def _params(request: Mapping[str, Any], known: frozenset[str]) -> Mapping[str, Any]:
    params = request.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ResourceError(f"params must be a JSON object, found {type(params).__name__}")
    _warn_unknown(params, known, "params")
    return params


def _version(request: Mapping[str, Any], source: Source) -> str | None:
    """The ``path`` or ``generation`` of the request's version, if there is one."""
    version = request.get("version")
    if version is None or version == {}:
        return None
    key = "path" if source.regexp is not None else "generation"
    value = version.get(key) if isinstance(version, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ResourceError(f'version must be {{"{key}": "..."}} or null, found {version!r}')
    if key == "generation" and not value.isdigit():
        raise ResourceError(f"version.generation must be a number, found {value!r}")
    return value


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True, kw_only=True)
class SemVer:
    """A version captured from an object's name, ordered as semantic versions are."""

    text: str
    """The capture as it appears in the name (the ``version`` file holds this)."""
    key: tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]
    """major, minor, patch, 1 for a release (0 for a pre-release), pre-release ids."""


def parse_semver(text: str) -> SemVer | None:
    """``text`` as a version, or ``None`` when it is not one (``latest``, ``1.x``)."""
    m = SEMVER_RE.fullmatch(text)
    if m is None:
        return None
    pre = m["pre"]
    ids = tuple(
        # Numeric identifiers rank below alphanumeric ones, and compare as numbers.
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in (pre.split(".") if pre else ())
    )
    key = (int(m["major"]), int(m["minor"] or 0), int(m["patch"] or 0), 0 if pre else 1, ids)
    return SemVer(text=text, key=key)


@dataclass(frozen=True, kw_only=True)
class Extraction:
    """An object whose name matches the regexp, and the version its name holds."""

    path: str
    version: SemVer


def version_group(regexp: re.Pattern[str]) -> int | str:
    """The group holding the version: the one named ``version``, else the first."""
    return "version" if "version" in regexp.groupindex and regexp.groups > 1 else 1


def extract(path: str, regexp: re.Pattern[str]) -> Extraction | None:
    """``path``'s version when the whole name matches and the capture is a version."""
    m = regexp.fullmatch(path)
    if m is None:
        return None
    captured = m.group(version_group(regexp))
    version = parse_semver(captured) if captured is not None else None
    return Extraction(path=path, version=version) if version is not None else None


def list_prefix(pattern: str) -> str:
    """The leading folders of ``pattern`` that are plain names: the prefix to list.

    ``builds/release-(.*)\\.tgz`` lists ``builds/``; ``(dev|prod)/app-(.*)`` lists
    everything. The last section (the file name) never counts.
    """
    sections = pattern.split("/")[:-1]
    literal: list[str] = []
    for section in sections:
        if not LITERAL_SECTION_RE.fullmatch(section):
            break
        literal.append(UNESCAPE_RE.sub(r"\1", section))
    return "".join(f"{s}/" for s in literal)


# --------------------------------------------------------------------------- GCS


def make_client(source: Source) -> storage.Client:
    """A storage client with the source's credentials, else default ones, else anonymous."""
    if source.json_key is not None:
        try:
            # google-auth leaves this (and AnonymousCredentials) untyped.
            credentials: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                source.json_key, scopes=[SCOPE]
            )
        except (ValueError, TypeError) as e:
            raise ResourceError(f"source.json_key cannot be used: {e}") from None
        project = source.json_key.get("project_id")
        return storage.Client(project=project or None, credentials=credentials)
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=None, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
    try:
        credentials, project = google.auth.default(scopes=[SCOPE])
    except google.auth.exceptions.DefaultCredentialsError:
        log("no source.json_key and no default credentials: accessing the bucket anonymously")
        return storage.Client.create_anonymous_client()
    return storage.Client(project=project or None, credentials=credentials)


def _gcs_reason(error: api_exceptions.GoogleAPICallError) -> str:
    """GCS's own message, without the method and URL the client puts in front."""
    message = str(error.message or error)
    method_url, sep, reason = message.partition(": ")
    if sep and method_url.split(" ", 1)[0] in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        message = reason
    if message.startswith("{"):
        # Uploads and downloads carry GCS's JSON error body as it came.
        with contextlib.suppress(ValueError, AttributeError):
            body, _ = json.JSONDecoder().raw_decode(message)
            message = str(body["error"]["message"])
    return " ".join(message.split())


@contextlib.contextmanager
def gcs_errors(source: Source, doing: str, permission: str) -> Iterator[None]:
    """Turn what the client raises while ``doing`` into one clear :class:`ResourceError`.

    ``permission`` is the IAM permission the call needs; a 403 names the one GCS
    reported, or this one when GCS's message does not say.
    """
    try:
        yield
    except api_exceptions.Forbidden as e:
        reason = _gcs_reason(e)
        found = PERMISSION_RE.search(reason)
        needed = found.group(0) if found else permission
        raise ResourceError(
            f"permission denied {doing}: the credentials need {needed} on bucket "
            f"{source.bucket} (GCS said: {reason})"
        ) from None
    except api_exceptions.Unauthorized as e:
        raise ResourceError(
            f"GCS refused the credentials {doing} (401: {_gcs_reason(e)}); check source.json_key"
        ) from None
    except api_exceptions.GoogleAPICallError as e:
        code = f"{e.code} " if e.code else ""
        raise ResourceError(f"GCS failed {doing}: {code}{_gcs_reason(e)}") from None
    except google.auth.exceptions.RefreshError as e:
        raise ResourceError(
            f"cannot get an access token {doing}: {e}; check source.json_key"
        ) from None
    except (google.auth.exceptions.TransportError, requests.ConnectionError) as e:
        raise ResourceError(f"cannot reach GCS {doing}: {type(e).__name__}") from None


def list_objects(
    client: storage.Client, source: Source, prefix: str, *, versions: bool
) -> list[storage.Blob]:
    """Every object under ``prefix`` (every generation with ``versions``)."""
    doing = f"listing {source.url(prefix)}"
    with gcs_errors(source, doing, "storage.objects.list"):
        try:
            return list(client.list_blobs(source.bucket, prefix=prefix, versions=versions))
        except api_exceptions.NotFound:
            raise ResourceError(f"bucket {source.bucket} not found ({doing})") from None


def bucket_extractions(client: storage.Client, source: Source) -> list[Extraction]:
    """The objects matching the regexp, oldest version first."""
    assert source.regexp is not None
    prefix = list_prefix(source.pattern)
    names = [blob.name for blob in list_objects(client, source, prefix, versions=False)]
    found: list[Extraction] = []
    not_versions: list[str] = []
    for name in names:
        extraction = extract(name, source.regexp)
        if extraction is not None:
            found.append(extraction)
        elif source.regexp.fullmatch(name):
            not_versions.append(name)
    if not_versions:
        shown = ", ".join(not_versions[:SHOWN_NAMES])
        log(f"ignoring {len(not_versions)} matching objects whose capture is no version: {shown}")
    if not found:
        log(
            f"no object in {source.url()} matches regexp {source.pattern!r}"
            f" ({len(names)} objects under {source.url(prefix)})"
        )
    # The path breaks ties, so the order never depends on the listing's.
    return sorted(found, key=lambda x: (x.version.key, x.path))


def generations(client: storage.Client, source: Source) -> list[storage.Blob]:
    """The versioned file's generations, oldest first."""
    assert source.versioned_file is not None
    blobs = list_objects(client, source, source.versioned_file, versions=True)
    exact = [b for b in blobs if b.name == source.versioned_file and b.generation is not None]
    return sorted(exact, key=lambda b: int(b.generation))


def blob_url(source: Source, blob: storage.Blob) -> str:
    """What gcs-resource writes to ``url``: the media link, else ``gs://`` and generation."""
    if blob.media_link:
        return str(blob.media_link)
    suffix = f"#{blob.generation}" if source.versioned_file and blob.generation else ""
    return source.url(blob.name) + suffix


def metadata(name: str, url: str | None) -> list[MetadataField]:
    """What Concourse shows next to a version."""
    fields = [MetadataField(name="filename", value=os.path.basename(name))]
    if url:
        fields.append(MetadataField(name="url", value=url))
    return fields


# --------------------------------------------------------------------------- check


def check(request: Mapping[str, Any], args: Sequence[str], redactor: Redactor) -> list[Version]:
    """``/opt/resource/check``: the given version if it still exists and every newer one."""
    source = parse_source(request.get("source"))
    current = _version(request, source)
    client = make_client(source)
    if source.regexp is not None:
        found = bucket_extractions(client, source)
        if not found:
            return [{"path": source.initial_path}] if source.initial_path else []
        given = extract(current, source.regexp) if current is not None else None
        if given is None:
            if current is not None:
                log(f"version {current} does not match source.regexp; reporting the latest")
            return [{"path": found[-1].path}]
        return [{"path": x.path} for x in found if x.version.key >= given.version.key]
    gens = generations(client, source)
    if not gens:
        log(f"{source.url(source.versioned_file or '')} does not exist")
        return [{"generation": source.initial_version}] if source.initial_version else []
    numbers = [int(b.generation) for b in gens]
    if current is not None:
        newer = [n for n in numbers if n >= int(current)]
        if newer:
            return [{"generation": str(n)} for n in newer]
    return [{"generation": str(numbers[-1])}]


# --------------------------------------------------------------------------- in


def _safe_parts(name: str) -> tuple[str, ...]:
    """An archive entry's path components; ValueError says why it may not be written."""
    if "\0" in name:
        raise ValueError("has a NUL byte in its name")
    if name.startswith("/"):
        raise ValueError("has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ValueError("has a '..' component")
    return parts


def _tamed(mode: int) -> int:
    """Permissions as tarfile's ``data`` filter leaves them: no setuid, no group write."""
    mode = (mode & 0o755) | 0o600
    if not mode & 0o100:
        mode &= ~0o111
    return mode


class Unpacker:
    """Extracts one archive into a fresh staging directory, refusing anything unsafe.

    Refused, naming the entry: absolute paths, ``..`` components, writing through
    a symbolic link, links whose target is absolute or leads outside (checked
    again once every entry is in, since a link may lead through a later one),
    hard links to anything but a regular file extracted before, and special files.
    """

    def __init__(self, staging: Path, archive_name: str) -> None:
        self.root = staging
        self.archive_name = archive_name
        self.files: set[str] = set()
        self.links: list[tuple[str, Path]] = []

    def _refuse(self, name: str, why: str) -> ResourceError:
        return ResourceError(
            f"params.unpack: {self.archive_name} entry {name!r} {why}; nothing was unpacked"
        )

    def _parts(self, name: str) -> tuple[str, ...]:
        try:
            return _safe_parts(name)
        except ValueError as e:
            raise self._refuse(name, str(e)) from None

    def _parent(self, parts: tuple[str, ...], name: str) -> Path:
        """The entry's parent, made a real directory; a link or file in the way is refused."""
        path = self.root
        for part in parts[:-1]:
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                path.mkdir(mode=0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file"
                raise self._refuse(name, f"goes through {what} ({part})")
        return path

    def directory(self, name: str) -> None:
        parts = self._parts(name)
        if not parts:
            return  # the archive's root: that is the staging directory
        path = self._parent(parts, name) / parts[-1]
        try:
            path.mkdir(mode=0o755)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise self._refuse(name, "is a directory where a file or link is") from None

    def file(self, name: str, content: IO[bytes], mode: int, mtime: float | None) -> None:
        parts = self._parts(name)
        if not parts:
            raise self._refuse(name, "names the archive's root but is not a directory")
        path = self._parent(parts, name) / parts[-1]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise self._refuse(name, "appears twice") from None
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(content, out, CHUNK)
        os.chmod(path, _tamed(mode))
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        self.files.add("/".join(parts))

    def symlink(self, name: str, target: str) -> None:
        parts = self._parts(name)
        if not parts:
            raise self._refuse(name, "names the archive's root but is not a directory")
        if not target or target.startswith("/") or "\0" in target:
            raise self._refuse(name, f"is a link to {target!r}, not a relative path inside")
        lexical = os.path.normpath(os.path.join(*parts[:-1], target) if parts[:-1] else target)
        if lexical == ".." or lexical.startswith("../"):
            raise self._refuse(name, f"is a link to {target!r}, outside the archive")
        path = self._parent(parts, name) / parts[-1]
        try:
            os.symlink(target, path)
        except FileExistsError:
            raise self._refuse(name, "appears twice") from None
        self.links.append((name, path))

    def hardlink(self, name: str, target: str) -> None:
        parts = self._parts(name)
        try:
            target_rel = "/".join(_safe_parts(target))
        except ValueError as e:
            raise self._refuse(name, f"is a hard link to {target!r}, which {e}") from None
        if not parts or target_rel not in self.files:
            raise self._refuse(
                name, f"is a hard link to {target!r}, not to a file extracted before it"
            )
        path = self._parent(parts, name) / parts[-1]
        try:
            os.link(self.root / target_rel, path, follow_symlinks=False)
        except FileExistsError:
            raise self._refuse(name, "appears twice") from None
        self.files.add("/".join(parts))

    def check_links(self) -> None:
        """Every link, resolved through the links it leads through, stays inside."""
        root = os.path.realpath(self.root)
        for name, path in self.links:
            resolved = os.path.realpath(path)
            if resolved != root and not resolved.startswith(root + os.sep):
                raise self._refuse(name, "is a link that leads outside the archive")

    def tar(self, archive: Path) -> None:
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    if member.isdir():
                        self.directory(member.name)
                    elif member.isreg():
                        content = tar.extractfile(member)
                        assert content is not None  # a regular file always has a reader
                        self.file(member.name, content, member.mode, member.mtime)
                    elif member.issym():
                        self.symlink(member.name, member.linkname)
                    elif member.islnk():
                        self.hardlink(member.name, member.linkname)
                    else:
                        raise self._refuse(member.name, "is a device, fifo or other special file")
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ResourceError(
                f"params.unpack: {self.archive_name} is a damaged tar archive: {e}"
            ) from None

    def zip(self, archive: Path) -> None:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    if info.is_dir():
                        self.directory(info.filename)
                    elif stat.S_ISLNK(mode):
                        self.symlink(info.filename, zf.read(info).decode("utf-8", "replace"))
                    elif mode and not stat.S_ISREG(mode):
                        raise self._refuse(info.filename, "is a special file")
                    else:
                        with zf.open(info) as content:
                            self.file(info.filename, content, (mode & 0o777) or 0o644, None)
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as e:
            # NotImplementedError: a compression method zipfile does not know.
            raise ResourceError(
                f"params.unpack: {self.archive_name} is a damaged zip archive: {e}"
            ) from None


def archive_kind(path: Path) -> str | None:
    """``gzip``, ``zip`` or ``tar`` from the file's first bytes, or ``None``."""
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[257:262] == b"ustar":
        return "tar"
    # Old (v7) tar has no magic; bzip2 and xz tarballs are tar too.
    with contextlib.suppress(tarfile.TarError, OSError, EOFError):
        if tarfile.is_tarfile(path):
            return "tar"
    return None


def _gunzipped_name(name: str) -> str:
    if name.endswith(".tgz"):
        return name[: -len(".tgz")] + ".tar"
    if name.endswith(".gz") and len(name) > len(".gz"):
        return name[: -len(".gz")]
    return name + ".uncompressed"


def unpack(archive: Path) -> None:
    """Unpack ``archive`` next to itself, as gcs-resource's ``unpack`` does.

    A gzipped tar or zip is ungzipped and unpacked; another gzipped file is
    ungzipped next to the archive. The archive itself is kept.
    """
    dest = archive.parent
    kind = archive_kind(archive)
    if kind is None:
        raise ResourceError(f"params.unpack: {archive.name} is not a tar, zip or gzip file")
    gunzipped: Path | None = None
    try:
        if kind == "gzip":
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=".jetbridge-gunzip-")
            gunzipped = Path(tmp)
            try:
                with gzip.open(archive) as src, os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            except (gzip.BadGzipFile, EOFError, zlib.error) as e:
                raise ResourceError(
                    f"params.unpack: {archive.name} is a damaged gzip file: {e}"
                ) from None
            kind = archive_kind(gunzipped)
            if kind is None:
                target = dest / _gunzipped_name(archive.name)
                if target.exists():
                    raise ResourceError(f"params.unpack: {target.name} already exists in {dest}")
                gunzipped.rename(target)
                gunzipped = None
                return
        _extract(gunzipped or archive, kind, dest, archive.name)
    finally:
        if gunzipped is not None:
            gunzipped.unlink(missing_ok=True)


def _extract(path: Path, kind: str, dest: Path, archive_name: str) -> None:
    """Extract into a staging directory, check it whole, then move its entries into ``dest``."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".jetbridge-unpack-"))
    try:
        _extract_checked(path, kind, dest, staging, archive_name)
    except OSError as e:
        # Writing failed (disk full, a name too long) or a compressor saw bad data.
        raise ResourceError(
            f"params.unpack: cannot unpack {archive_name}: {e.strerror or e}; nothing was unpacked"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_checked(path: Path, kind: str, dest: Path, staging: Path, archive_name: str) -> None:
    """Unpack into ``staging``; only once every entry and link passed, move them to ``dest``."""
    unpacker = Unpacker(staging, archive_name)
    if kind == "zip":
        unpacker.zip(path)
    else:
        unpacker.tar(path)
    unpacker.check_links()
    entries = sorted(os.listdir(staging))
    for entry in entries:
        if os.path.lexists(dest / entry):
            raise ResourceError(
                f"params.unpack: {archive_name} entry {entry!r} would replace "
                f"{dest / entry}; nothing was unpacked"
            )
    for entry in entries:
        os.rename(staging / entry, dest / entry)


def _local_path(source: Source, dest: Path, name: str) -> Path:
    """Where the object ``name`` goes in ``dest``: its base name, which must be a file name."""
    base = os.path.basename(name)
    if base in ("", ".", ".."):
        # A folder placeholder (``builds/``), or a name that would write outside DEST.
        raise ResourceError(f"{source.url(name)} has no file name to download it as")
    return dest / base


def _download(client: storage.Client, source: Source, blob: storage.Blob, dest: Path) -> Path:
    """Download ``blob`` (that exact generation) to ``dest``; the file written."""
    target = _local_path(source, dest, str(blob.name))
    exact = client.bucket(source.bucket).blob(blob.name, generation=blob.generation)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".jetbridge-download-")
    os.close(fd)
    try:
        with gcs_errors(source, f"downloading {source.url(blob.name)}", "storage.objects.get"):
            exact.download_to_filename(tmp, client=client)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    size = target.stat().st_size
    log(f"downloaded {source.url(blob.name)} (generation {blob.generation}, {size} bytes)")
    return target


def _find(
    client: storage.Client, source: Source, name: str, generation: str | None
) -> storage.Blob:
    """The object ``name`` (at ``generation``), or a message saying what exists instead."""
    blobs = list_objects(client, source, name, versions=generation is not None)
    exact = [b for b in blobs if b.name == name]
    if generation is not None:
        matching = [b for b in exact if str(b.generation) == generation]
        if not matching:
            found = ", ".join(str(b.generation) for b in exact[-SHOWN_NAMES:]) or "none"
            raise ResourceError(
                f"generation {generation} of {source.url(name)} not found "
                f"(generations found: {found}); was it deleted, or is versioning off?"
            )
        return matching[0]
    if not exact:
        raise ResourceError(f"object {source.url(name)} not found; was it deleted?")
    return exact[0]


def get(request: Mapping[str, Any], args: Sequence[str], redactor: Redactor) -> dict[str, Any]:
    """``/opt/resource/in DEST``: the version's object in DEST, with ``url`` and version files."""
    if len(args) != 1:
        raise ResourceError("usage: in DEST (the directory to fetch into)")
    dest = Path(args[0])
    source = parse_source(request.get("source"))
    current = _version(request, source)
    params = _params(request, IN_PARAMS)
    skip = _bool(params, "skip_download", "params", default=source.skip_download)
    unpack_it = _bool(params, "unpack", "params")
    dest.mkdir(parents=True, exist_ok=True)

    if source.regexp is not None:
        if current is not None and current == source.initial_path:
            _local_path(source, dest, current).write_bytes(source.initial_content)
            url = None
            path = current
        else:
            client = make_client(source)
            if current is None:
                found = bucket_extractions(client, source)
                if not found:
                    raise ResourceError(
                        f"no object in {source.url()} matches regexp {source.pattern!r}"
                    )
                current = found[-1].path
            blob = _find(client, source, current, None)
            if not skip:
                downloaded = _download(client, source, blob, dest)
                if unpack_it:
                    unpack(downloaded)
            url = blob_url(source, blob)
            (dest / "url").write_text(url)
            path = current
        m = source.regexp.fullmatch(path)
        captured = m.group(version_group(source.regexp)) if m is not None else None
        if captured is not None:
            (dest / "version").write_text(captured)
        return {"version": {"path": path}, "metadata": metadata(path, url)}

    name = source.versioned_file
    assert name is not None
    if current is not None and current == source.initial_version:
        _local_path(source, dest, name).write_bytes(source.initial_content)
        (dest / "generation").write_text(current)
        return {"version": {"generation": current}, "metadata": metadata(name, None)}
    client = make_client(source)
    if current is None:
        gens = generations(client, source)
        if not gens:
            raise ResourceError(f"{source.url(name)} does not exist")
        current = str(gens[-1].generation)
    blob = _find(client, source, name, current)
    if not skip:
        downloaded = _download(client, source, blob, dest)
        if unpack_it:
            unpack(downloaded)
    url = blob_url(source, blob)
    (dest / "url").write_text(url)
    (dest / "generation").write_text(current)
    return {"version": {"generation": current}, "metadata": metadata(name, url)}


# --------------------------------------------------------------------------- out


def _local_file(src: Path, params: Mapping[str, Any]) -> Path:
    """The one file ``params.file`` matches under ``src``."""
    pattern = _optional_str(params, "file", "params")
    if pattern is None:
        raise ResourceError(
            "params.file is required: a glob, relative to the step's directory, matching "
            "the one file to upload"
        )
    root = src.resolve()
    matches = sorted(glob.glob(os.path.join(glob.escape(str(src)), pattern)))
    inside = [Path(m) for m in matches if Path(m).resolve().is_relative_to(root)]
    files = [m for m in inside if m.is_file()]
    if not files:
        found = sorted(p.name for p in src.iterdir()) if src.is_dir() else []
        shown = ", ".join(found[:SHOWN_NAMES]) or "nothing"
        raise ResourceError(
            f"params.file {pattern!r} matches no file under {src} (found there: {shown})"
        )
    if len(files) > 1:
        shown = ", ".join(str(f.relative_to(src)) for f in files[:SHOWN_NAMES])
        raise ResourceError(
            f"params.file {pattern!r} matches {len(files)} files ({shown}); it must match one"
        )
    return files[0]


def _object_name(source: Source, local: Path) -> str:
    """Where ``local`` goes: the regexp's folder (which must be a plain path), or the file."""
    if source.versioned_file is not None:
        return source.versioned_file
    assert source.regexp is not None
    folder, _, _ = source.pattern.rpartition("/")
    if folder and not all(LITERAL_SECTION_RE.fullmatch(s) for s in folder.split("/")):
        raise ResourceError(
            f"cannot upload with source.regexp {source.pattern!r}: its folder part is a "
            "pattern, not a path; put the pattern in the file name only"
        )
    name = (UNESCAPE_RE.sub(r"\1", folder) + "/" if folder else "") + local.name
    if not source.regexp.fullmatch(name):
        raise ResourceError(
            f"{local.name} would be uploaded as {name}, which does not match source.regexp "
            f"{source.pattern!r}: check would never see it"
        )
    return name


def put(request: Mapping[str, Any], args: Sequence[str], redactor: Redactor) -> dict[str, Any]:
    """``/opt/resource/out SRC``: upload the file ``params.file`` names to the bucket."""
    if len(args) != 1:
        raise ResourceError("usage: out SRC (the directory holding the build's artifacts)")
    src = Path(args[0])
    source = parse_source(request.get("source"))
    params = _params(request, OUT_PARAMS)
    local = _local_file(src, params)
    name = _object_name(source, local)
    acl = _optional_str(params, "predefined_acl", "params")
    if acl is not None and acl not in PREDEFINED_ACLS:
        raise ResourceError(
            f"params.predefined_acl must be one of {', '.join(PREDEFINED_ACLS)}; found {acl!r}"
        )
    content_type = _optional_str(params, "content_type", "params")
    cache_control = _optional_str(params, "cache_control", "params")
    client = make_client(source)
    blob = client.bucket(source.bucket).blob(name)
    if cache_control is not None:
        blob.cache_control = cache_control
    log(f"uploading {local.relative_to(src)} to {source.url(name)}")
    with gcs_errors(source, f"uploading to {source.url(name)}", "storage.objects.create"):
        try:
            blob.upload_from_filename(
                str(local), content_type=content_type, predefined_acl=acl, client=client
            )
        except api_exceptions.NotFound:
            raise ResourceError(f"bucket {source.bucket} not found (uploading {name})") from None
    url = blob_url(source, blob)
    log(f"uploaded {source.url(name)} (generation {blob.generation})")
    if source.regexp is not None:
        return {"version": {"path": name}, "metadata": metadata(name, url)}
    return {"version": {"generation": str(blob.generation)}, "metadata": metadata(name, url)}


# --------------------------------------------------------------------------- main


def main(action: Action) -> int:
    """Run one protocol action: request from stdin, response to stdout, one-line errors."""
    redactor = Redactor()
    try:
        request = parse_request(sys.stdin.read())
        redactor = Redactor.from_source(request.get("source"))
        response = action(request, sys.argv[1:], redactor)
    except ResourceError as e:
        print(f"error: {redactor.scrub(' '.join(str(e).split()))}", file=sys.stderr)
        return 1
    except Exception as e:
        print(redactor.scrub(traceback.format_exc()), file=sys.stderr)
        print(f"error: internal error: {redactor.scrub(repr(e))}", file=sys.stderr)
        return 1
    json.dump(response, sys.stdout)
    sys.stdout.write("\n")
    return 0
