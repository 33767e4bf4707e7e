"""The built-in ``git`` resource type: Concourse's resource protocol over the git CLI.

The executables ``check``, ``in`` and ``out`` next to this file are three-line
shims into :func:`main`. Everything lives in this one module because the scripts
run inside step pods where ``shared`` is not importable: standard library and the
``git`` binary only (Python 3.10 or newer).

Source and params follow concourse/git-resource's names, so a pipeline written
for Concourse's git resource works unchanged for the subset implemented here:

* ``source``: ``uri`` (required), ``branch``, ``private_key``, ``username``,
  ``password``, ``git_config``, ``tag_filter``, ``paths``, ``ignore_paths``.
* ``in`` params: ``depth``; ``submodules`` is not supported and says so.
* ``out`` params: ``repository`` (required), ``branch``, ``tag``, ``tag_prefix``,
  ``force``, ``rebase``.

Versions are ``{"ref": <commit sha>}``, or with ``tag_filter``
``{"ref": <tag name>, "commit": <commit sha>}`` as in Concourse.

Secrets never reach stderr: credentials given in an https ``uri`` are moved out
of it and handed to git by a credential helper reading the environment, a
private key goes to a 0600 file that is removed afterwards, and every line this
module prints passes through a :class:`Redactor` that knows the secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import quote, unquote, urlsplit, urlunsplit

#: What every secret is replaced with in anything printed.
MASK = "***"

#: Environment variables the credential helper reads; never on a command line.
USERNAME_ENV = "JETBRIDGE_GIT_USERNAME"
PASSWORD_ENV = "JETBRIDGE_GIT_PASSWORD"

#: A git credential helper that answers ``get`` from the two variables above, so
#: the password is in no argv (visible in ``ps``) and in no file.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    f'echo "username=${{{USERNAME_ENV}}}"; '
    f'test -n "${{{PASSWORD_ENV}}}" && echo "password=${{{PASSWORD_ENV}}}"; }}; f'
)

#: How often ``out`` with ``rebase`` fetches, rebases and pushes again when the
#: branch moved in between; three races lost in a row means something else is wrong.
REBASE_ATTEMPTS = 3

#: Lines of a private key shorter than this are not secret on their own (blank or
#: a fragment of base64 padding); the BEGIN/END markers are skipped separately.
MIN_SECRET_LINE = 8

#: git_config names whose values are credentials, and so are masked like a password.
SECRET_CONFIG_RE = re.compile(r"extraheader|password|token|secret", re.IGNORECASE)

#: A version ref that ``check`` can look up: a full or abbreviated object name.
SHA_RE = re.compile(r"[0-9a-fA-F]{4,64}")

#: ``scheme://user:password@`` anywhere in a text: the password part is masked.
URL_PASSWORD_RE = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/@\s:]*):[^/@\s]*@")


class ResourceError(Exception):
    """A failure the user can act on; printed as one line, and the script exits 1."""


class GitError(ResourceError):
    """A git command failed; the message carries git's own reason, already scrubbed."""


class MetadataField(TypedDict):
    """One ``{"name", "value"}`` entry of a response's metadata, as Concourse shows it."""

    name: str
    value: str


Version = dict[str, str]
Action = Callable[[Mapping[str, Any], Sequence[str], "Redactor"], Any]


# --------------------------------------------------------------------------- secrets


class Redactor:
    """Masks known secrets, and the password part of any URL, in text about to be printed."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    @classmethod
    def from_source(cls, source: object) -> Redactor:
        """Collect every secret a raw ``source`` object holds, before it is even validated."""
        if not isinstance(source, Mapping):
            return cls()
        secrets: list[str] = []
        password = source.get("password")
        if isinstance(password, str):
            secrets += [password, quote(password, safe="")]
        key = source.get("private_key")
        if isinstance(key, str):
            secrets.append(key.strip())
            secrets += [
                line.strip()
                for line in key.splitlines()
                if len(line.strip()) >= MIN_SECRET_LINE and not line.startswith("-----")
            ]
        for entry in source.get("git_config") or ():
            # e.g. http.extraHeader "Authorization: Bearer ...", a common way to pass a token.
            if isinstance(entry, Mapping) and SECRET_CONFIG_RE.search(str(entry.get("name"))):
                secrets.append(str(entry.get("value")))
        uri = source.get("uri")
        if isinstance(uri, str):
            with contextlib.suppress(ValueError):
                url_password = urlsplit(uri).password
                if url_password:
                    secrets += [url_password, unquote(url_password)]
        return cls(secrets)

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return URL_PASSWORD_RE.sub(rf"\1:{MASK}@", text)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, kw_only=True)
class Source:
    """The resource's ``source``, validated."""

    uri: str
    """Where the repository is, with any https credentials moved to the fields below."""
    display_uri: str
    """``uri`` safe to print: the password of any other URL masked."""
    branch: str | None
    """The branch to track; ``None`` means the remote's default HEAD."""
    private_key: str | None
    username: str | None
    password: str | None
    git_config: tuple[tuple[str, str], ...]
    """``(name, value)`` pairs given to every git command as ``-c name=value``."""
    tag_filter: str | None
    """A glob on tag names; when set, versions are tags instead of commits."""
    paths: tuple[str, ...]
    """Only commits touching these pathspecs are versions (empty: every commit)."""
    ignore_paths: tuple[str, ...]
    """Commits touching only these pathspecs are not versions."""

    @property
    def pathspec(self) -> list[str]:
        """``paths`` and ``ignore_paths`` as git pathspecs (empty when neither is set)."""
        if not self.paths and not self.ignore_paths:
            return []
        return [*(self.paths or (".",)), *(f":(exclude){p}" for p in self.ignore_paths)]


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


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ResourceError(f"{where}.{key} must be a list of non-empty strings, found {value!r}")
    return tuple(value)


def _bool(obj: Mapping[str, Any], key: str, where: str) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ResourceError(f"{where}.{key} must be true or false, found {value!r}")
    return value


def _git_config(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    pairs: list[tuple[str, str]] = []
    if isinstance(value, list):
        for entry in value:
            if not isinstance(entry, dict):
                break
            name, setting = entry.get("name"), entry.get("value")
            if not isinstance(name, str) or not name or "=" in name or setting is None:
                break
            if isinstance(setting, bool):
                setting = str(setting).lower()
            pairs.append((name, str(setting)))
        else:
            return tuple(pairs)
    raise ResourceError(
        f'source.git_config must be a list of {{"name": ..., "value": ...}}, found {value!r}'
    )


def parse_source(raw: object) -> Source:
    """Validate ``source``; a problem raises :class:`ResourceError` naming the field."""
    if not isinstance(raw, dict):
        raise ResourceError("source must be a JSON object with at least a uri")
    uri = _optional_str(raw, "uri", "source")
    if uri is None or not uri.strip():
        raise ResourceError("source.uri is required and must not be empty")
    uri = uri.strip()
    if uri.startswith("-"):
        # git would read it as an option (--upload-pack=... runs a command).
        raise ResourceError(f"source.uri must be a URL or a path, found {uri!r}")
    username = _optional_str(raw, "username", "source")
    password = _optional_str(raw, "password", "source")
    try:
        parts = urlsplit(uri)
        url_user, url_password = parts.username, parts.password
    except ValueError as e:
        raise ResourceError(f"source.uri is not a valid URL: {e}") from None
    if parts.scheme in ("http", "https") and (url_user or url_password):
        # Credentials in the URL would be stored in .git/config and echoed by
        # git; hand them to the credential helper instead.
        username = username or (unquote(url_user) if url_user else None)
        password = password or (unquote(url_password) if url_password else None)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        uri = urlunsplit(parts._replace(netloc=netloc))
    if password is not None and username is None:
        raise ResourceError("source.password is set but source.username is not; set both")
    for name, value in (("username", username), ("password", password)):
        if value is not None and "\n" in value:
            raise ResourceError(f"source.{name} must not contain a newline")
    return Source(
        uri=uri,
        display_uri=URL_PASSWORD_RE.sub(rf"\1:{MASK}@", uri),
        branch=_optional_str(raw, "branch", "source"),
        private_key=_optional_str(raw, "private_key", "source"),
        username=username,
        password=password,
        git_config=_git_config(raw.get("git_config")),
        tag_filter=_optional_str(raw, "tag_filter", "source"),
        paths=_str_list(raw, "paths", "source"),
        ignore_paths=_str_list(raw, "ignore_paths", "source"),
    )


def _params(request: Mapping[str, Any]) -> Mapping[str, Any]:
    params = request.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ResourceError(f"params must be a JSON object, found {type(params).__name__}")
    return params


# --------------------------------------------------------------------------- git


class Git:
    """Runs the git CLI for one source: same config, credentials and scrubbing every time."""

    def __init__(self, source: Source, *, redactor: Redactor, ssh_key: Path | None) -> None:
        self.source = source
        self.redactor = redactor
        config = [*source.git_config]
        if source.username is not None:
            # The empty value first clears helpers from system or user config.
            config += [("credential.helper", ""), ("credential.helper", CREDENTIAL_HELPER)]
        # Last, so git_config cannot switch it off: local file remotes must work.
        config.append(("protocol.file.allow", "always"))
        self._prefix = ["git"]
        for name, value in config:
            self._prefix += ["-c", f"{name}={value}"]
        env = dict(os.environ)
        env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
        # Never wait for a human: no password prompt, no key passphrase prompt.
        env.pop("GIT_ASKPASS", None)
        env.pop("SSH_ASKPASS", None)
        if source.username is not None:
            env[USERNAME_ENV] = source.username
            env[PASSWORD_ENV] = source.password or ""
        if ssh_key is not None:
            # Concourse's git resource does not verify host keys either: a step
            # pod has no known_hosts, and the key, not the host, is the secret.
            env["GIT_SSH_COMMAND"] = shlex.join(
                [
                    "ssh",
                    "-i",
                    str(ssh_key),
                    "-o", "IdentitiesOnly=yes",
                    "-o", "BatchMode=yes",
                    "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null",
                    "-o", "LogLevel=ERROR",
                ]
            )  # fmt: skip
        self._env = env

    def log(self, message: str) -> None:
        """Tell the build's log, with secrets masked."""
        print(self.redactor.scrub(message), file=sys.stderr, flush=True)

    def run(
        self, *args: str, cwd: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``git ARGS``; with ``check``, a non-zero exit raises :class:`GitError`."""
        done = subprocess.run(
            [*self._prefix, *args],
            cwd=cwd,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        result = subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode("utf-8", "replace"),
            done.stderr.decode("utf-8", "replace"),
        )
        if check and result.returncode != 0:
            raise GitError(f"git {args[0]} failed: {self.reason(result.stderr)}")
        return result

    def reason(self, stderr: str) -> str:
        """The one line of git's stderr that says why it failed, scrubbed."""
        lines = [
            line.strip()
            for line in stderr.splitlines()
            if line.strip() and not line.startswith(("warning:", "hint:"))
        ]
        found = [i for i, line in enumerate(lines) if line.startswith(("fatal:", "error:"))]
        if not found:
            return self.redactor.scrub(lines[-1] if lines else "no error output")
        first = found[0]
        reason = lines[first]
        if reason.endswith("Could not read from remote repository.") and first > 0:
            # Says nothing on its own; the transport (ssh) said why on the line before.
            reason = f"{lines[first - 1]} ({reason})"
        return self.redactor.scrub(reason)

    def out(self, *args: str, cwd: Path | None = None) -> str:
        """Stdout of ``git ARGS``, stripped."""
        return self.run(*args, cwd=cwd).stdout.strip()

    def resolve(self, rev: str, *, cwd: Path) -> str | None:
        """The commit ``rev`` names in the repository at ``cwd``, or ``None``."""
        if not rev or rev.startswith("-"):
            return None
        found = self.run(
            "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=cwd, check=False
        )
        if found.returncode != 0:
            return None
        return found.stdout.strip() or None


@contextlib.contextmanager
def open_git(source: Source, redactor: Redactor) -> Iterator[Git]:
    """A :class:`Git` for ``source``; its private key file exists only inside the block."""
    if source.private_key is None:
        yield Git(source, redactor=redactor, ssh_key=None)
        return
    key_dir = Path(tempfile.mkdtemp(prefix="jetbridge-git-key-"))  # mode 0700
    try:
        key_file = key_dir / "id"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            # ssh refuses a key whose last line has no newline.
            f.write(source.private_key.strip() + "\n")
        yield Git(source, redactor=redactor, ssh_key=key_file)
    finally:
        shutil.rmtree(key_dir, ignore_errors=True)


def remote_head(git: Git) -> tuple[str | None, str | None]:
    """``(branch, sha)`` of the tracked branch on the remote.

    Without ``source.branch`` that is the remote's default HEAD; ``(None, None)``
    when the repository has no commits yet. A configured branch that does not
    exist is an error.
    """
    source = git.source
    try:
        if source.branch is None:
            listing = git.out("ls-remote", "--symref", source.uri, "HEAD")
        else:
            listing = git.out("ls-remote", source.uri, f"refs/heads/{source.branch}")
    except GitError as e:
        raise ResourceError(f"cannot list refs of {source.display_uri}: {e}") from None
    branch, sha = source.branch, None
    for line in listing.splitlines():
        target, _, name = line.partition("\t")
        if target.startswith("ref: refs/heads/"):
            branch = target.removeprefix("ref: refs/heads/")
        elif name in ("HEAD", f"refs/heads/{source.branch}"):
            sha = target
    if sha is None and source.branch is not None:
        raise ResourceError(f"branch {source.branch} not found in {source.display_uri}")
    return branch, sha


def commit_metadata(git: Git, sha: str, *, cwd: Path, branch: str | None) -> list[MetadataField]:
    """What Concourse shows next to a version: commit, author, dates, branch, message."""
    fields = ["commit", "author", "author_date", "committer", "committer_date", "message"]
    shown = git.out(
        "show", "--no-patch", "--format=%H%x00%an <%ae>%x00%ai%x00%cn <%ce>%x00%ci%x00%s", sha,
        cwd=cwd,
    )  # fmt: skip
    metadata = [
        MetadataField(name=name, value=value)
        for name, value in zip(fields, shown.split("\x00"), strict=False)
    ]
    if branch:
        metadata.insert(5, MetadataField(name="branch", value=branch))
    return metadata


# --------------------------------------------------------------------------- check


def _parse_version(request: Mapping[str, Any]) -> Version | None:
    version = request.get("version")
    if version is None or version == {}:
        return None
    if not isinstance(version, dict) or not isinstance(version.get("ref"), str):
        raise ResourceError(f'version must be {{"ref": "..."}} or null, found {version!r}')
    return {k: str(v) for k, v in version.items()}


@contextlib.contextmanager
def cache_repo(git: Git) -> Iterator[Path]:
    """A bare, blob-less clone of the source under ``$TMPDIR``, locked against other checks.

    Only trees and commits are fetched (``--filter=blob:none``): that is all
    ``git rev-list -- PATHS`` needs, and a fraction of the repository's size.
    """
    root = Path(tempfile.gettempdir()) / "jetbridge-git-cache"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = hashlib.sha256(git.source.uri.encode()).hexdigest()[:16]
    repo = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (repo / "HEAD").exists():
            shutil.rmtree(repo, ignore_errors=True)
            git.run("init", "--quiet", "--bare", str(repo))
            # A named remote, not a URL on each fetch: a partial clone needs one.
            git.run("config", "remote.origin.url", git.source.uri, cwd=repo)
        yield repo


def fetch_into_cache(git: Git, repo: Path, refspecs: Sequence[str]) -> None:
    """Fetch ``refspecs`` from the source; a cache that will not fetch is rebuilt once."""
    args = ["fetch", "--quiet", "--filter=blob:none", "--no-tags", "--prune", "origin", *refspecs]
    try:
        git.run(*args, cwd=repo)
    except GitError:
        # The cache may be damaged (a check killed mid-fetch); start it afresh.
        # A remote that is down fails again here, with git's reason.
        shutil.rmtree(repo, ignore_errors=True)
        git.run("init", "--quiet", "--bare", str(repo))
        git.run("config", "remote.origin.url", git.source.uri, cwd=repo)
        try:
            git.run(*args, cwd=repo)
        except GitError as e:
            raise ResourceError(f"cannot fetch from {git.source.display_uri}: {e}") from None


def _rev_list(git: Git, repo: Path, *revs: str, pathspec: Sequence[str]) -> list[str]:
    tail = ["--", *pathspec] if pathspec else []
    return git.out("rev-list", "--first-parent", *revs, *tail, cwd=repo).split()


def check_commits(git: Git, version: Version | None) -> list[Version]:
    """Commits of the tracked branch, from ``version`` on, that touch the source's paths."""
    source = git.source
    branch, latest = remote_head(git)
    if branch is None or latest is None:
        git.log(f"{source.display_uri} has no commits yet")
        return []
    pathspec = source.pathspec
    ref = version["ref"] if version else None
    if not pathspec and ref in (None, latest):
        # The common case needs no clone: ls-remote already answered.
        return [{"ref": latest}]
    tip = f"refs/heads/{branch}"
    with cache_repo(git) as repo:
        fetch_into_cache(git, repo, [f"+{tip}:{tip}"])
        start = None
        if ref is not None and SHA_RE.fullmatch(ref):
            start = git.resolve(ref, cwd=repo)
        if start is not None:
            on_branch = git.run("merge-base", "--is-ancestor", start, tip, cwd=repo, check=False)
            if on_branch.returncode != 0:
                start = None
        if ref is not None and start is None:
            git.log(f"version {ref} is no longer on branch {branch}; reporting the latest")
        if start is None:
            return [{"ref": sha} for sha in _rev_list(git, repo, "-1", tip, pathspec=pathspec)]
        newer = _rev_list(git, repo, "--reverse", f"{start}..{tip}", pathspec=pathspec)
        still_valid = _rev_list(git, repo, "-1", start, pathspec=pathspec) == [start]
        if still_valid:
            return [{"ref": sha} for sha in [start, *newer]]
        if newer:
            return [{"ref": sha} for sha in newer]
        return [{"ref": sha} for sha in _rev_list(git, repo, "-1", tip, pathspec=pathspec)]


def check_tags(git: Git, version: Version | None) -> list[Version]:
    """Tags matching ``tag_filter``, oldest first, from ``version`` on (or just the newest)."""
    source = git.source
    assert source.tag_filter is not None
    refspecs = ["+refs/tags/*:refs/tags/*"]
    merged: list[str] = []
    if source.branch is not None:
        # As in Concourse: with a branch, only tags reachable from it count.
        tip = f"refs/heads/{source.branch}"
        refspecs.append(f"+{tip}:{tip}")
        merged = ["--merged", tip]
    with cache_repo(git) as repo:
        if source.branch is not None:
            remote_head(git)  # a clear message when the branch does not exist
        fetch_into_cache(git, repo, refspecs)
        listing = git.out(
            "for-each-ref", "--sort=creatordate",
            "--format=%(refname:strip=2)%00%(objectname)%00%(*objectname)",
            *merged, "refs/tags/",
            cwd=repo,
        )  # fmt: skip
    tags: list[Version] = []
    for line in listing.splitlines():
        name, sha, peeled = line.split("\x00")
        # fnmatch like `git tag --list`: `*` also matches `/`.
        if fnmatch.fnmatchcase(name, source.tag_filter):
            tags.append({"ref": name, "commit": peeled or sha})
    if version is not None:
        for i, tag in enumerate(tags):
            if tag["ref"] == version["ref"] and version.get("commit") in (None, tag["commit"]):
                return tags[i:]
        git.log(f"tag {version['ref']} no longer matches; reporting the latest")
    return tags[-1:]


def check(request: Mapping[str, Any], args: Sequence[str], redactor: Redactor) -> list[Version]:
    """``/opt/resource/check``: the versions from the given one on, oldest first."""
    source = parse_source(request.get("source"))
    version = _parse_version(request)
    with open_git(source, redactor) as git:
        if source.tag_filter is not None:
            return check_tags(git, version)
        return check_commits(git, version)


# --------------------------------------------------------------------------- in


def _depth(params: Mapping[str, Any]) -> int:
    depth = params.get("depth", 0)
    if depth is None:
        return 0
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ResourceError(f"params.depth must be a positive integer, found {depth!r}")
    return depth


def _fetch_ref(git: Git, dest: Path, ref: str, depth: int) -> str | None:
    """Find ``ref`` in the clone at ``dest``, fetching harder each time it is missing."""
    sha = git.resolve(ref, cwd=dest)
    if sha is None and not ref.startswith("-"):
        # Not on the cloned branch, or older than the shallow clone reaches:
        # ask for it by name (servers speaking protocol v2 serve any commit).
        depth_args = [f"--depth={depth}"] if depth else []
        fetched = git.run("fetch", "--quiet", *depth_args, "origin", ref, cwd=dest, check=False)
        if fetched.returncode == 0:
            sha = git.resolve(ref, cwd=dest) or git.resolve("FETCH_HEAD", cwd=dest)
    if sha is None and (dest / ".git" / "shallow").exists():
        git.log(f"{ref} is older than depth {depth}; fetching the whole history")
        git.run("fetch", "--quiet", "--unshallow", "origin", cwd=dest, check=False)
        sha = git.resolve(ref, cwd=dest)
    return sha


def get(request: Mapping[str, Any], args: Sequence[str], redactor: Redactor) -> dict[str, Any]:
    """``/opt/resource/in DEST``: the exact commit of the version, checked out in DEST."""
    if len(args) != 1:
        raise ResourceError("usage: in DEST (the directory to fetch into)")
    dest = Path(args[0])
    source = parse_source(request.get("source"))
    version = _parse_version(request)
    if version is None:
        raise ResourceError('version is required: {"ref": "<commit sha or tag>"}')
    ref = version["ref"]
    params = _params(request)
    depth = _depth(params)
    with open_git(source, redactor) as git:
        branch_args = ["--branch", source.branch] if source.branch else []
        depth_args = [f"--depth={depth}"] if depth else []
        git.log(
            f"cloning {source.display_uri}"
            + (f" branch {source.branch}" if source.branch else "")
            + (f" at depth {depth}" if depth else "")
        )
        dest.mkdir(parents=True, exist_ok=True)
        try:
            git.run(
                "clone", "--quiet", "--single-branch", *branch_args, *depth_args,
                "--", source.uri, str(dest),
            )  # fmt: skip
        except GitError as e:
            raise ResourceError(f"cannot clone {source.display_uri}: {e}") from None
        cloned = git.run("symbolic-ref", "--quiet", "--short", "HEAD", cwd=dest, check=False)
        branch = source.branch or cloned.stdout.strip() or None
        sha = _fetch_ref(git, dest, ref, depth)
        if sha is None:
            raise ResourceError(f"ref {ref} not found in {source.display_uri}")
        git.run("-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha, cwd=dest)
        if (dest / ".gitmodules").exists() or params.get("submodules") not in (None, "none"):
            git.log("note: submodules are not fetched by the built-in git resource")
        metadata = commit_metadata(git, sha, cwd=dest, branch=branch)
        message = git.out("show", "--no-patch", "--format=%B", sha, cwd=dest)
        committer = git.out("show", "--no-patch", "--format=%ce", sha, cwd=dest)
        # The same files Concourse's git resource leaves for tasks to read.
        for name, content in (
            ("ref", ref),
            ("short_ref", sha[:7]),
            ("commit_message", message),
            ("committer", committer),
        ):
            (dest / ".git" / name).write_text(content + "\n", encoding="utf-8")
        git.log(f"checked out {sha} ({metadata[-1]['value']})")
    return {"version": version, "metadata": metadata}


# --------------------------------------------------------------------------- out


def _repository_dir(src: Path, params: Mapping[str, Any]) -> Path:
    name = params.get("repository")
    found = sorted(p.name for p in src.iterdir() if p.is_dir()) if src.is_dir() else []
    listing = f" (found: {', '.join(found) or 'nothing'})"
    if not isinstance(name, str) or not name.strip():
        raise ResourceError(
            "params.repository is required: the name of the directory to push, under "
            f"{src}{listing}"
        )
    repo = (src / name).resolve()
    if not repo.is_relative_to(src.resolve()) or not repo.is_dir():
        raise ResourceError(f"params.repository: {name!r} is not a directory under {src}{listing}")
    return repo


def _tag_name(src: Path, params: Mapping[str, Any]) -> str | None:
    tag_file = _optional_str(params, "tag", "params")
    if tag_file is None:
        return None
    path = (src / tag_file).resolve()
    if not path.is_relative_to(src.resolve()) or not path.is_file():
        raise ResourceError(f"params.tag: {tag_file!r} is not a file under {src}")
    name = path.read_text(encoding="utf-8").strip()
    if not name:
        raise ResourceError(f"params.tag: {tag_file} is empty; it must hold the tag's name")
    name = (_optional_str(params, "tag_prefix", "params") or "") + name
    if name.startswith("-"):
        raise ResourceError(f"params.tag: {name!r} is not a valid tag name")
    return name


def _identity(git: Git, repo: Path) -> list[str]:
    """``-c user.*`` for the committer of rebased commits, when nobody configured one."""
    configured = git.run("config", "user.email", cwd=repo, check=False).stdout.strip()
    if configured or os.environ.get("GIT_COMMITTER_EMAIL") or os.environ.get("EMAIL"):
        return []
    return ["-c", "user.name=JetBridge", "-c", "user.email=jetbridge@localhost"]


def _push(git: Git, repo: Path, refspec: str, *, force: bool) -> str | None:
    """Push; ``None`` on success, else the reason the remote rejected it."""
    args = ["push", "--porcelain", *(["--force"] if force else []), git.source.uri, refspec]
    pushed = git.run(*args, cwd=repo, check=False)
    if pushed.returncode == 0:
        return None
    # Porcelain lines: "<flag>\t<from>:<to>\t<summary> (<reason>)"; "!" is rejected.
    for line in pushed.stdout.splitlines():
        flag, _, rest = line.partition("\t")
        if flag == "!":
            return git.redactor.scrub(rest.split("\t")[-1])
    raise ResourceError(f"cannot push to {git.source.display_uri}: {git.reason(pushed.stderr)}")


def _rebase_and_push(git: Git, repo: Path, branch: str) -> None:
    """Rebase HEAD onto the remote branch and push, again if someone pushed in between."""
    reason = None
    for _ in range(REBASE_ATTEMPTS):
        exists = git.out("ls-remote", git.source.uri, f"refs/heads/{branch}")
        if exists:
            git.run("fetch", "--quiet", git.source.uri, f"refs/heads/{branch}", cwd=repo)
            rebased = git.run(*_identity(git, repo), "rebase", "FETCH_HEAD", cwd=repo, check=False)
            if rebased.returncode != 0:
                git.run("rebase", "--abort", cwd=repo, check=False)
                raise ResourceError(
                    f"cannot rebase onto branch {branch} of {git.source.display_uri}: "
                    f"{git.reason(rebased.stdout + rebased.stderr)}"
                )
        reason = _push(git, repo, f"HEAD:refs/heads/{branch}", force=False)
        if reason is None:
            return
        git.log(f"push rejected ({reason}); rebasing again")
    raise ResourceError(
        f"push to branch {branch} of {git.source.display_uri} was rejected {REBASE_ATTEMPTS} "
        f"times, even after rebasing ({reason})"
    )


def put(request: Mapping[str, Any], args: Sequence[str], redactor: Redactor) -> dict[str, Any]:
    """``/opt/resource/out SRC``: push the HEAD of SRC/<repository> to the branch."""
    if len(args) != 1:
        raise ResourceError("usage: out SRC (the directory holding the build's artifacts)")
    src = Path(args[0])
    source = parse_source(request.get("source"))
    params = _params(request)
    repo = _repository_dir(src, params)
    tag = _tag_name(src, params)
    force, rebase = _bool(params, "force", "params"), _bool(params, "rebase", "params")
    if force and rebase:
        raise ResourceError("params.force and params.rebase cannot both be true")
    with open_git(source, redactor) as git:
        head = git.resolve("HEAD", cwd=repo)
        if head is None:
            raise ResourceError(
                f"params.repository: {repo} is not a git repository with at least one commit"
            )
        branch = _optional_str(params, "branch", "params") or source.branch
        if branch is None:
            branch, _ = remote_head(git)
        if branch is None:
            raise ResourceError(
                f"no branch to push to: {source.display_uri} has no default branch; "
                "set source.branch or params.branch"
            )
        git.log(f"pushing {head} to branch {branch} of {source.display_uri}")
        if rebase:
            _rebase_and_push(git, repo, branch)
        else:
            reason = _push(git, repo, f"HEAD:refs/heads/{branch}", force=force)
            if reason is not None:
                raise ResourceError(
                    f"push to branch {branch} of {source.display_uri} was rejected ({reason}); "
                    "set params.rebase to rebase onto it, or params.force to overwrite it"
                )
        sha = git.out("rev-parse", "HEAD", cwd=repo)
        metadata = commit_metadata(git, sha, cwd=repo, branch=branch)
        if tag is not None:
            if git.run("check-ref-format", f"refs/tags/{tag}", check=False).returncode != 0:
                raise ResourceError(f"params.tag: {tag!r} is not a valid tag name")
            git.run("tag", "--force", tag, sha, cwd=repo)
            reason = _push(git, repo, f"refs/tags/{tag}", force=force)
            if reason is not None:
                raise ResourceError(
                    f"push of tag {tag} to {source.display_uri} was rejected "
                    f"({reason}); set params.force to move it"
                )
            metadata.append(MetadataField(name="tag", value=tag))
        git.log(f"pushed {sha}")
    return {"version": {"ref": sha}, "metadata": metadata}


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
