"""Webhooks: a git host's HTTP delivery verified and read into a ``Push``, and matched to jobs.

Pure: bytes and headers in, frozen dataclasses out; no database, no clock, no
settings. Three senders are understood, each verified before anything of the body
is read:

============  ==================================  ==========================  ========================
sender        signature                           event                       delivery id
============  ==================================  ==========================  ========================
GitHub        ``X-Hub-Signature-256``: HMAC-SHA256  ``X-GitHub-Event``          ``X-GitHub-Delivery``
GitLab        ``X-Gitlab-Token``: the secret        ``X-Gitlab-Event``          ``X-Gitlab-Event-UUID``
generic       ``X-JetBridge-Signature-256``         ``X-JetBridge-Event: push`` ``X-JetBridge-Delivery``
============  ==================================  ==========================  ========================

The generic webhook is for anything else that can sign a body (a script, another CI):
``POST /webhooks/<pipeline>`` with ``Content-Type: application/json``, a body
``{"repository": URL, "branch": NAME, "commit": SHA}`` and
``X-JetBridge-Signature-256: sha256=<hex HMAC-SHA256 of the body, keyed with the secret>``,
exactly GitHub's scheme under JetBridge's name (``signature`` computes it).

Knative's GitHubSource and GitLabSource deliver the same payloads as CloudEvents,
already verified by the source; ``parse_source_event`` reads those.

Every signature is compared in constant time, and no message here contains a
secret or a signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.errors import (
    EventError,
    MethodNotAllowed,
    NotFoundError,
    SignatureError,
    UnsupportedMediaType,
)
from shared.pipeline import GetStep, Pipeline, Step

#: The names a pipeline may have: they appear in webhook URLs and name files of a
#: mounted Kubernetes Secret (whose own entries start with ``..``, never matched here).
PIPELINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
#: The one name that matches and cannot be a pipeline's: ``/webhooks/`` names no pipeline.
RESERVED_NAME = "webhooks"

GITHUB = "github"
GITLAB = "gitlab"
GENERIC = "generic"

PUSH = "push"
PULL_REQUEST = "pull_request"

#: CloudEvent types of Knative's GitHubSource: this prefix and GitHub's event name.
GITHUB_SOURCE = "dev.knative.source.github."
#: CloudEvent types of Knative's GitLabSource: this prefix and the payload's ``object_kind``.
GITLAB_SOURCE = "dev.knative.sources.gitlab."
#: Older GitLabSource releases: this prefix and the ``X-Gitlab-Event`` header (``Push Hook``).
GITLAB_SOURCE_LEGACY = "dev.knative.sources.gitlabsource."

#: A delivery id is stored with the builds it starts: printable ASCII, as long as a column.
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,200}")
#: A commit as git names it: an abbreviated or full SHA-1 or SHA-256 object name.
_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")
#: What a deleted branch's "after" commit is.
_NULL_COMMIT = re.compile(r"0+")
#: ``user@host:path``, git's scp-like syntax for ssh.
_SCP_LIKE = re.compile(r"(?:[^@/:]+@)?(?P<host>[^@/:\[\]]+):(?P<path>(?!//).+)")

_GITHUB_PR_ACTIONS = ("opened", "reopened", "synchronize")
_GITLAB_MR_ACTIONS = ("open", "reopen", "update")


@dataclass(frozen=True, kw_only=True)
class Push:
    """New commits on a branch, from whichever sender: what a pipeline's git resources match."""

    provider: str
    """``github``, ``gitlab`` or ``generic``."""
    event: str
    """``push``, or ``pull_request`` (a GitLab merge request too): the head branch moved."""
    delivery: str
    """The sender's id for this delivery; a redelivery carries the same one."""
    repository: str
    """The repository as the sender named it first, for messages."""
    urls: frozenset[str]
    """Every URL the repository goes by, normalised (``normalise_url``)."""
    branch: str
    commit: str
    default_branch: str | None = None
    """The repository's default branch, which a resource with no ``branch`` tracks."""


@dataclass(frozen=True, kw_only=True)
class Ignored:
    """A genuine delivery that starts nothing (a ping, a tag, a closed pull request)."""

    provider: str
    event: str
    delivery: str
    reason: str


Delivery = Push | Ignored


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """A job a push starts, with its gets pinned to the pushed commit."""

    job: str
    versions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Get name → version (``{"ref": sha}``), as ``start_build`` takes them."""


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: how GitHub (and the generic webhook) sign ``body`` with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pipeline_from_path(path: str) -> str:
    """The pipeline a webhook URL names: ``/webhooks/<pipeline>`` (or ``/<pipeline>`` where the
    webhook function is mounted at ``/webhooks``)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] == "webhooks":
        parts = parts[1:]
    if len(parts) != 1 or parts[0] == RESERVED_NAME or not PIPELINE_NAME.fullmatch(parts[0]):
        raise NotFoundError(
            f"no webhook at {path[:200]!r}: webhooks are posted to /webhooks/<pipeline>"
        )
    return parts[0]


def parse_webhook(
    method: str, headers: Mapping[str, str], body: bytes, *, pipeline: str, secret: str | None
) -> Delivery:
    """Verify a webhook sent for ``pipeline`` and read it; raises before reading a byte unverified.

    ``secret`` is the pipeline's webhook secret, ``None`` when it has none (it then
    takes no webhooks). Raises ``MethodNotAllowed`` (405), ``NotFoundError`` (404),
    ``SignatureError`` (401), ``UnsupportedMediaType`` (415) or ``EventError`` (400).
    """
    if method.upper() != "POST":
        raise MethodNotAllowed(f"webhooks are sent with POST, not {method[:20]!r}")
    h = {k.lower(): v for k, v in headers.items()}
    provider, event = _provider(h)
    if not secret:
        raise NotFoundError(
            f"pipeline {pipeline!r} takes no webhooks: no secret is set for it "
            "(JETBRIDGE_WEBHOOK_SECRETS, or a file of that name in JETBRIDGE_WEBHOOK_SECRETS_DIR)"
        )
    _verify(provider, h, body, secret=secret, pipeline=pipeline)
    media = h.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        hint = " (set the webhook's content type to application/json)" if provider == GITHUB else ""
        raise UnsupportedMediaType(
            f"a webhook body must be application/json, found {media[:100] or 'no content type'!r}"
            + hint
        )
    payload = _json_object(body)
    header = {
        GITHUB: "x-github-delivery",
        GITLAB: "x-gitlab-event-uuid",
        GENERIC: "x-jetbridge-delivery",
    }
    delivery = _delivery_id(h.get(header[provider]), _title(header[provider]))
    if provider == GITHUB:
        return _github(event, delivery, payload)
    if provider == GITLAB:
        return _gitlab(event, delivery, payload)
    return _generic(event, delivery, payload)


def parse_source_event(type_: str, event_id: str, data: Any) -> Delivery | None:
    """A GitHubSource or GitLabSource CloudEvent read as a delivery; ``None`` for other types.

    The source verified the sender already; the CloudEvent id is the delivery id
    (GitHubSource sets it from ``X-GitHub-Delivery``).
    """
    if type_.startswith(GITHUB_SOURCE):
        provider, event = GITHUB, type_.removeprefix(GITHUB_SOURCE)
    elif type_.startswith(GITLAB_SOURCE):
        provider = GITLAB
        event = {"push": "Push Hook", "merge_request": "Merge Request Hook"}.get(
            type_.removeprefix(GITLAB_SOURCE), type_
        )
    elif type_.startswith(GITLAB_SOURCE_LEGACY):
        provider, event = GITLAB, type_.removeprefix(GITLAB_SOURCE_LEGACY)
    else:
        return None
    delivery = _delivery_id(event_id, "the CloudEvent id")
    if isinstance(data, bytes | str):
        data = _json_object(data.encode() if isinstance(data, str) else data)
    if not isinstance(data, dict):
        raise EventError(f"event {delivery} ({type_}): data must be the webhook's JSON object")
    return _github(event, delivery, data) if provider == GITHUB else _gitlab(event, delivery, data)


def source_event_types() -> tuple[str, ...]:
    """The source CloudEvent types that start builds, for messages and Knative Triggers."""
    return (
        GITHUB_SOURCE + PUSH,
        GITHUB_SOURCE + PULL_REQUEST,
        GITLAB_SOURCE + PUSH,
        GITLAB_SOURCE + "merge_request",
    )


# ---------------------------------------------------------------- who sent it, and proof


def _provider(h: Mapping[str, str]) -> tuple[str, str]:
    for header, provider in (
        ("x-github-event", GITHUB),
        ("x-gitlab-event", GITLAB),
        ("x-jetbridge-event", GENERIC),
    ):
        value = h.get(header, "").strip()
        if value:
            return provider, value
    raise EventError(
        "cannot tell who sent this webhook: expected an X-GitHub-Event, X-Gitlab-Event "
        "or X-JetBridge-Event header"
    )


def _verify(
    provider: str, h: Mapping[str, str], body: bytes, *, secret: str, pipeline: str
) -> None:
    if provider == GITLAB:
        token = h.get("x-gitlab-token")
        if not token:
            raise SignatureError(
                f"missing X-Gitlab-Token header: set the GitLab webhook's secret token to "
                f"pipeline {pipeline!r}'s webhook secret"
            )
        if not hmac.compare_digest(token.encode("utf-8", "replace"), secret.encode()):
            raise SignatureError(f"X-Gitlab-Token is not pipeline {pipeline!r}'s webhook secret")
        return
    header = "X-Hub-Signature-256" if provider == GITHUB else "X-JetBridge-Signature-256"
    given = h.get(header.lower())
    if not given:
        raise SignatureError(
            f"missing {header} header: the webhook must be signed with pipeline {pipeline!r}'s "
            "webhook secret (HMAC-SHA256 of the body, as sha256=<hex>)"
        )
    expected = signature(secret, body)
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected.encode()):
        raise SignatureError(
            f"{header} does not match the body signed with pipeline {pipeline!r}'s webhook secret"
        )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        reason = str(e)[:200] if isinstance(e, ValueError) else "nested too deeply"
        raise EventError(f"the webhook body is not JSON: {reason}") from None
    if not isinstance(payload, dict):
        raise EventError(f"the webhook body must be a JSON object, found {_kind(payload)}")
    return payload


def _delivery_id(value: str | None, what: str) -> str:
    if not value:
        raise EventError(
            f"missing {what} header: it identifies the delivery, so a redelivery starts nothing"
        )
    value = value.strip()
    if not _DELIVERY_ID.fullmatch(value):
        raise EventError(f"{what} must be 1 to 200 printable characters without spaces")
    return value


def _title(header: str) -> str:
    names = {
        "x-github-delivery": "X-GitHub-Delivery",
        "x-gitlab-event-uuid": "X-Gitlab-Event-UUID",
        "x-jetbridge-delivery": "X-JetBridge-Delivery",
    }
    return names[header]


# ---------------------------------------------------------------- payloads


class _Reader:
    """Fields of a payload, each checked, with the path of the one that is wrong."""

    def __init__(self, provider: str, event: str, payload: Mapping[str, Any]) -> None:
        self.where = f"{provider} {event}"
        self.payload = payload

    def get(self, path: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        value: Any = self.payload
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None and not required:
            return None
        if not isinstance(value, kind):
            expected = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            raise EventError(
                f"{self.where} payload: {path} must be {_a(expected)}, found {_kind(value)}"
            )
        return value

    def commit(self, path: str) -> str:
        value: str = self.get(path, str)
        if not _COMMIT.fullmatch(value):
            raise EventError(
                f"{self.where} payload: {path} must be a commit sha, found {value[:80]!r}"
            )
        return value.lower()

    def urls(self, *paths: str) -> tuple[str, frozenset[str]]:
        found = [v for p in paths if isinstance(v := self.get(p, str, required=False), str) and v]
        if not found:
            raise EventError(
                f"{self.where} payload: no repository URL (looked at {', '.join(paths)})"
            )
        return found[0], frozenset(normalise_url(u) for u in found)


def _github(event: str, delivery: str, payload: Mapping[str, Any]) -> Delivery:
    read = _Reader(GITHUB, event, payload)
    if event == PUSH:
        ref = read.get("ref", str)
        after = read.get("after", str)
        if read.get("deleted", bool, required=False) or _NULL_COMMIT.fullmatch(after):
            return Ignored(
                provider=GITHUB, event=event, delivery=delivery, reason=f"{ref} was deleted"
            )
        branch = _branch(ref)
        if branch is None:
            return Ignored(
                provider=GITHUB,
                event=event,
                delivery=delivery,
                reason=f"{ref[:200]} is not a branch: only branch pushes start builds",
            )
        repo, urls = read.urls(
            *(f"repository.{k}" for k in ("clone_url", "ssh_url", "git_url", "html_url", "svn_url"))
        )
        default = read.get("repository.default_branch", str, required=False)
        return Push(
            provider=GITHUB,
            event=PUSH,
            delivery=delivery,
            repository=repo,
            urls=urls,
            branch=branch,
            commit=read.commit("after"),
            default_branch=default,
        )
    if event == PULL_REQUEST:
        action = read.get("action", str)
        if action not in _GITHUB_PR_ACTIONS:
            return Ignored(
                provider=GITHUB,
                event=event,
                delivery=delivery,
                reason=f"pull request {action[:40]!r}: only {', '.join(_GITHUB_PR_ACTIONS)} start builds",
            )
        if read.get("pull_request.head.repo", dict, required=False) is None:
            return Ignored(
                provider=GITHUB,
                event=event,
                delivery=delivery,
                reason="the pull request's head repository no longer exists",
            )
        head = "pull_request.head"
        repo, urls = read.urls(
            *(
                f"{head}.repo.{k}"
                for k in ("clone_url", "ssh_url", "git_url", "html_url", "svn_url")
            )
        )
        return Push(
            provider=GITHUB,
            event=PULL_REQUEST,
            delivery=delivery,
            repository=repo,
            urls=urls,
            branch=read.get(f"{head}.ref", str),
            commit=read.commit(f"{head}.sha"),
            default_branch=read.get(f"{head}.repo.default_branch", str, required=False),
        )
    if event == "ping":
        return Ignored(
            provider=GITHUB,
            event=event,
            delivery=delivery,
            reason="pong: the webhook reaches JetBridge",
        )
    return Ignored(
        provider=GITHUB,
        event=event[:40],
        delivery=delivery,
        reason=f"GitHub {event[:40]!r} events start nothing; push and pull_request do",
    )


def _gitlab(event: str, delivery: str, payload: Mapping[str, Any]) -> Delivery:
    read = _Reader(GITLAB, event, payload)
    if event == "Push Hook":
        ref = read.get("ref", str)
        after = read.get("after", str)
        if _NULL_COMMIT.fullmatch(after):
            return Ignored(
                provider=GITLAB, event=PUSH, delivery=delivery, reason=f"{ref} was deleted"
            )
        branch = _branch(ref)
        if branch is None:
            return Ignored(
                provider=GITLAB,
                event=PUSH,
                delivery=delivery,
                reason=f"{ref[:200]} is not a branch: only branch pushes start builds",
            )
        repo, urls = read.urls(
            "project.git_http_url",
            "project.git_ssh_url",
            "project.web_url",
            "repository.git_http_url",
            "repository.git_ssh_url",
            "repository.homepage",
        )
        return Push(
            provider=GITLAB,
            event=PUSH,
            delivery=delivery,
            repository=repo,
            urls=urls,
            branch=branch,
            commit=read.commit("after"),
            default_branch=read.get("project.default_branch", str, required=False),
        )
    if event == "Merge Request Hook":
        attrs = "object_attributes"
        action = read.get(f"{attrs}.action", str)
        new_commits = read.get(f"{attrs}.oldrev", str, required=False) is not None
        if action not in _GITLAB_MR_ACTIONS or (action == "update" and not new_commits):
            return Ignored(
                provider=GITLAB,
                event=PULL_REQUEST,
                delivery=delivery,
                reason=f"merge request {action[:40]!r}: only open, reopen and an update "
                "with new commits start builds",
            )
        repo, urls = read.urls(
            f"{attrs}.source.git_http_url", f"{attrs}.source.git_ssh_url", f"{attrs}.source.web_url"
        )
        return Push(
            provider=GITLAB,
            event=PULL_REQUEST,
            delivery=delivery,
            repository=repo,
            urls=urls,
            branch=read.get(f"{attrs}.source_branch", str),
            commit=read.commit(f"{attrs}.last_commit.id"),
            default_branch=read.get(f"{attrs}.source.default_branch", str, required=False),
        )
    return Ignored(
        provider=GITLAB,
        event=event[:40],
        delivery=delivery,
        reason=f"GitLab {event[:40]!r} events start nothing; Push Hook and Merge Request Hook do",
    )


def _generic(event: str, delivery: str, payload: Mapping[str, Any]) -> Delivery:
    if event != PUSH:
        raise EventError(f"X-JetBridge-Event must be 'push', found {event[:40]!r}")
    read = _Reader(GENERIC, event, payload)
    repo, urls = read.urls("repository")
    return Push(
        provider=GENERIC,
        event=PUSH,
        delivery=delivery,
        repository=repo,
        urls=urls,
        branch=read.get("branch", str),
        commit=read.commit("commit"),
        default_branch=read.get("default_branch", str, required=False),
    )


def _branch(ref: str) -> str | None:
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), "a number")


# ---------------------------------------------------------------- matching


def normalise_url(url: str) -> str:
    """The form of a repository URL that its https, ssh and scp-like spellings share.

    ``https://GitHub.com/Org/App.git``, ``ssh://git@github.com:22/org/app``,
    ``git@github.com:org/app.git`` are all ``github.com/org/app``: user, password and
    port dropped, ``.git`` and trailing slashes removed, lower case (the git hosts treat
    names case-insensitively). A local path (or ``file://`` URL) keeps its case.
    """
    text = url.strip()
    host = ""
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = "" if parts.scheme.lower() == "file" else (parts.hostname or "")
        except ValueError:
            return text.lower()
        path = parts.path
    elif (scp := _SCP_LIKE.fullmatch(text)) is not None:
        host, path = scp["host"], scp["path"]
    else:
        path = text
    path = path.rstrip("/").removesuffix(".git").rstrip("/")
    if host:
        return f"{host}/{path.lstrip('/')}".lower()
    return path


def match(pipeline: Pipeline, push: Push) -> tuple[Trigger, ...]:
    """The jobs ``push`` starts, each pinned to the pushed commit.

    A ``git`` resource matches when its ``uri`` is the pushed repository and its
    ``branch`` the pushed branch (no ``branch``: the repository's default branch); a
    resource with ``tag_filter`` tracks tags and matches no branch. A job starts when
    one of its gets of a matched resource has ``trigger: true``, no ``passed`` (the
    commit has not passed the jobs before it) and no pinned ``version``; every such get
    of the job is pinned to the commit.
    """
    tracking = set(tracking_resources(pipeline, push))
    version = {"ref": push.commit}
    triggers = []
    for job in pipeline.jobs:
        gets = [
            g
            for g in _gets(job.plan)
            if g.resource in tracking and not g.passed and not isinstance(g.version, Mapping)
        ]
        if any(g.trigger for g in gets):
            triggers.append(Trigger(job=job.name, versions={g.get: dict(version) for g in gets}))
    return tuple(triggers)


def tracking_resources(pipeline: Pipeline, push: Push) -> tuple[str, ...]:
    """The git resources ``push`` moved: its repository and branch, no ``tag_filter``, not
    pinned to a version in the pipeline."""
    return tuple(
        r.name
        for r in pipeline.resources
        if r.type == "git"
        and r.version is None
        and isinstance(r.source.get("uri"), str)
        and not r.source.get("tag_filter")
        and normalise_url(r.source["uri"]) in push.urls
        and _tracks(r.source.get("branch"), push)
    )


def no_match_reason(pipeline_name: str, push: Push) -> str:
    return (
        f"nothing to build: no job of pipeline {pipeline_name!r} has a `get` with "
        f"`trigger: true` of a git resource tracking {push.repository[:200]} "
        f"branch {push.branch[:200]!r}"
    )


def _tracks(branch: Any, push: Push) -> bool:
    if branch is None:
        return push.default_branch is not None and push.branch == push.default_branch
    return isinstance(branch, str) and branch == push.branch


def _gets(steps: Sequence[Step]) -> Iterator[GetStep]:
    """Every get of a plan, however deep: in ``in_parallel``, ``do``, ``try``, ``across``."""
    for step in steps:
        if isinstance(step, GetStep):
            yield step
        children = getattr(step, "steps", None)
        if isinstance(children, tuple):
            yield from _gets(children)
        child = getattr(step, "step", None)
        if child is not None:
            yield from _gets((child,))
