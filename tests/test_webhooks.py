"""Webhook parsing, verification and matching: the pure part, table by table."""

from __future__ import annotations

from typing import Any

import pytest

from shared.errors import (
    EventError,
    JetBridgeError,
    MethodNotAllowed,
    NotFoundError,
    SignatureError,
    UnsupportedMediaType,
)
from shared.pipeline import parse_pipeline
from shared.webhooks import (
    Ignored,
    Push,
    Trigger,
    match,
    normalise_url,
    parse_source_event,
    parse_webhook,
    pipeline_from_path,
    signature,
)
from tests.hooks import (
    SECRET,
    body_of,
    generic_headers,
    github_headers,
    gitlab_headers,
    payload,
)

GITHUB_SHA = "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5"
GITLAB_SHA = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
HELLO = "github.com/octo-org/hello-world"


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://github.com/Octo-Org/Hello-World.git", HELLO),
        ("https://user:token@github.com/octo-org/hello-world/", HELLO),
        ("git@github.com:octo-org/hello-world.git", HELLO),
        ("ssh://git@github.com:22/octo-org/hello-world.git", HELLO),
        ("git://github.com/octo-org/hello-world", HELLO),
        ("github.com:octo-org/hello-world", HELLO),
        (" https://github.com/octo-org/hello-world.git/ ", HELLO),
        (
            "https://gitlab.example.com/group/sub/project.git",
            "gitlab.example.com/group/sub/project",
        ),
        ("/srv/git/App.git", "/srv/git/App"),
        ("file:///srv/git/App.git/", "/srv/git/App"),
    ],
    ids=[
        "https-case",
        "credentials-slash",
        "scp-like",
        "ssh-port",
        "git-protocol",
        "scp-no-user",
        "spaces",
        "gitlab-subgroup",
        "local-path-keeps-case",
        "file-url",
    ],
)
def test_repository_urls_normalise_to_one_form(url: str, normal: str) -> None:
    assert normalise_url(url) == normal


@pytest.mark.parametrize(
    ("path", "pipeline"),
    [("/webhooks/app", "app"), ("/app", "app"), ("/webhooks/my.app-2_x/", "my.app-2_x")],
    ids=["full", "mounted", "dots-trailing-slash"],
)
def test_the_pipeline_comes_from_the_path(path: str, pipeline: str) -> None:
    assert pipeline_from_path(path) == pipeline


@pytest.mark.parametrize(
    "path",
    ["/", "/webhooks/", "/webhooks/a/b", "/webhooks/..", "/webhooks/-x", "/x/" + "a" * 201],
    ids=["root", "no-name", "too-deep", "dotdot", "dash-first", "too-long"],
)
def test_a_path_naming_no_pipeline_is_404(path: str) -> None:
    with pytest.raises(NotFoundError, match="webhooks are posted to /webhooks/<pipeline>"):
        pipeline_from_path(path)


def _github(
    event: str = "push", data: Any = None, **header_changes: str
) -> tuple[dict[str, str], bytes]:
    body = body_of(payload("github-push") if data is None else data)
    headers = github_headers(body, event=event, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    headers.update(header_changes)
    return headers, body


def test_a_github_push_reads_as_a_push_of_its_branch_and_commit() -> None:
    headers, body = _github()
    push = parse_webhook("POST", headers, body, pipeline="app", secret=SECRET)
    assert push == Push(
        provider="github",
        event="push",
        delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958",
        repository="https://github.com/octo-org/hello-world.git",
        urls=frozenset({HELLO}),
        branch="main",
        commit=GITHUB_SHA,
        default_branch="main",
    )


def test_a_github_pull_request_is_its_head_branch_at_its_head_commit() -> None:
    body = body_of(payload("github-pull_request"))
    headers = github_headers(body, event="pull_request", delivery="d-1")
    push = parse_webhook("POST", headers, body, pipeline="app", secret=SECRET)
    assert isinstance(push, Push)
    assert (push.event, push.branch, push.commit) == (
        "pull_request",
        "bonjour",
        "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
    )


def test_gitlab_push_and_merge_request_read_alike() -> None:
    push = parse_webhook(
        "POST",
        gitlab_headers(delivery="u-1"),
        body_of(payload("gitlab-push")),
        pipeline="app",
        secret=SECRET,
    )
    assert isinstance(push, Push)
    assert (push.provider, push.branch, push.commit, push.default_branch) == (
        "gitlab",
        "main",
        GITLAB_SHA,
        "main",
    )
    assert push.urls == {"gitlab.example.com/mike/diaspora"}
    mr = parse_webhook(
        "POST",
        gitlab_headers(event="Merge Request Hook", delivery="u-2"),
        body_of(payload("gitlab-merge_request")),
        pipeline="app",
        secret=SECRET,
    )
    assert isinstance(mr, Push)
    assert (mr.event, mr.branch, mr.commit) == ("pull_request", "ms-viewport", GITLAB_SHA)
    assert mr.urls == {"gitlab.example.com/awesome_space/awesome_project"}


def test_the_generic_webhook_is_a_signed_repository_branch_and_commit() -> None:
    body = body_of(
        {"repository": "git@git.example.com:team/app.git", "branch": "dev", "commit": "ABCDEF1"}
    )
    push = parse_webhook(
        "POST", generic_headers(body, delivery="g-1"), body, pipeline="app", secret=SECRET
    )
    assert push == Push(
        provider="generic",
        event="push",
        delivery="g-1",
        repository="git@git.example.com:team/app.git",
        urls=frozenset({"git.example.com/team/app"}),
        branch="dev",
        commit="abcdef1",
    )


@pytest.mark.parametrize(
    ("event", "data", "reason"),
    [
        ("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}, "pong"),
        ("issues", {"action": "opened"}, "'issues' events start nothing"),
        ("push", payload("github-push", ref="refs/tags/v1.0"), "refs/tags/v1.0 is not a branch"),
        (
            "push",
            payload("github-push", deleted=True, after="0" * 40),
            "refs/heads/main was deleted",
        ),
        (
            "pull_request",
            payload("github-pull_request", action="closed"),
            "pull request 'closed': only opened, reopened, synchronize start builds",
        ),
        (
            "pull_request",
            payload("github-pull_request", **{"pull_request.head.repo": None}),
            "head repository no longer exists",
        ),
    ],
    ids=["ping", "other-event", "tag", "deleted-branch", "closed-pr", "deleted-fork"],
)
def test_github_deliveries_that_start_nothing_say_why(event: str, data: Any, reason: str) -> None:
    headers, body = _github(event, data)
    ignored = parse_webhook("POST", headers, body, pipeline="app", secret=SECRET)
    assert isinstance(ignored, Ignored)
    assert reason in ignored.reason


def test_a_merge_request_update_without_new_commits_starts_nothing() -> None:
    data = payload("gitlab-merge_request")
    del data["object_attributes"]["oldrev"]
    ignored = parse_webhook(
        "POST",
        gitlab_headers(event="Merge Request Hook"),
        body_of(data),
        pipeline="app",
        secret=SECRET,
    )
    assert isinstance(ignored, Ignored)
    assert "an update with new commits" in ignored.reason


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


GOOD_BODY = body_of(payload("github-push"))
GOOD = github_headers(GOOD_BODY)


@pytest.mark.parametrize(
    ("method", "headers", "body", "secret", "error", "message"),
    [
        ("GET", GOOD, b"", SECRET, MethodNotAllowed, "webhooks are sent with POST, not 'GET'"),
        (
            "POST",
            _without(GOOD, "X-GitHub-Event"),
            GOOD_BODY,
            SECRET,
            EventError,
            "cannot tell who sent this webhook",
        ),
        ("POST", GOOD, GOOD_BODY, None, NotFoundError, "pipeline 'app' takes no webhooks"),
        (
            "POST",
            _without(GOOD, "X-Hub-Signature-256"),
            GOOD_BODY,
            SECRET,
            SignatureError,
            "missing X-Hub-Signature-256 header",
        ),
        (
            "POST",
            github_headers(GOOD_BODY, "not the secret"),
            GOOD_BODY,
            SECRET,
            SignatureError,
            "X-Hub-Signature-256 does not match the body signed with pipeline 'app'",
        ),
        (
            "POST",
            GOOD,
            GOOD_BODY + b" ",
            SECRET,
            SignatureError,
            "does not match",
        ),
        (
            "POST",
            {**GOOD, "X-Hub-Signature-256": "sha256=é"},
            GOOD_BODY,
            SECRET,
            SignatureError,
            "does not match",
        ),
        (
            "POST",
            gitlab_headers("wrong token"),
            GOOD_BODY,
            SECRET,
            SignatureError,
            "X-Gitlab-Token is not pipeline 'app''s webhook secret",
        ),
        (
            "POST",
            _without(gitlab_headers(), "X-Gitlab-Token"),
            GOOD_BODY,
            SECRET,
            SignatureError,
            "missing X-Gitlab-Token header",
        ),
        (
            "POST",
            {**GOOD, "Content-Type": "application/x-www-form-urlencoded"},
            GOOD_BODY,
            SECRET,
            UnsupportedMediaType,
            "must be application/json, found 'application/x-www-form-urlencoded' (set the webhook's",
        ),
        (
            "POST",
            github_headers(b"{not json"),
            b"{not json",
            SECRET,
            EventError,
            "the webhook body is not JSON",
        ),
        (
            "POST",
            github_headers(b"[" * 100_000),
            b"[" * 100_000,
            SECRET,
            EventError,
            "the webhook body is not JSON",
        ),
        (
            "POST",
            github_headers(b"[1, 2]"),
            b"[1, 2]",
            SECRET,
            EventError,
            "must be a JSON object, found a list",
        ),
        (
            "POST",
            _without(GOOD, "X-GitHub-Delivery"),
            GOOD_BODY,
            SECRET,
            EventError,
            "missing X-GitHub-Delivery header",
        ),
        (
            "POST",
            {**GOOD, "X-GitHub-Delivery": "has spaces"},
            GOOD_BODY,
            SECRET,
            EventError,
            "X-GitHub-Delivery must be 1 to 200 printable characters",
        ),
        (
            "POST",
            github_headers(b'{"ref": 1}'),
            b'{"ref": 1}',
            SECRET,
            EventError,
            "github push payload: ref must be a str, found a number",
        ),
        (
            "POST",
            github_headers(body_of(payload("github-push", after="main"))),
            body_of(payload("github-push", after="main")),
            SECRET,
            EventError,
            "after must be a commit sha, found 'main'",
        ),
        (
            "POST",
            github_headers(body_of(payload("github-push", repository={}))),
            body_of(payload("github-push", repository={})),
            SECRET,
            EventError,
            "no repository URL (looked at repository.clone_url",
        ),
        (
            "POST",
            {**generic_headers(b"{}"), "X-JetBridge-Event": "tag"},
            b"{}",
            SECRET,
            EventError,
            "X-JetBridge-Event must be 'push', found 'tag'",
        ),
    ],
    ids=[
        "method",
        "no-event-header",
        "no-secret",
        "no-signature",
        "wrong-secret",
        "body-changed",
        "non-ascii-signature",
        "wrong-gitlab-token",
        "no-gitlab-token",
        "form-encoded",
        "malformed-json",
        "nested-too-deep",
        "json-list",
        "no-delivery-id",
        "bad-delivery-id",
        "wrong-field-type",
        "bad-commit",
        "no-repository",
        "generic-not-push",
    ],
)
def test_bad_webhooks_are_refused_naming_what_is_wrong(
    method: str,
    headers: dict[str, str],
    body: bytes,
    secret: str | None,
    error: type[JetBridgeError],
    message: str,
) -> None:
    with pytest.raises(error) as raised:
        parse_webhook(method, headers, body, pipeline="app", secret=secret)
    assert type(raised.value) is error
    assert message in str(raised.value)
    assert SECRET not in str(raised.value)


def test_the_signature_is_githubs_scheme() -> None:
    # GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
    assert signature("It's a Secret to Everybody", b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@pytest.mark.parametrize(
    ("type_", "data", "expected"),
    [
        ("dev.knative.source.github.push", payload("github-push"), ("github", "main", GITHUB_SHA)),
        (
            "dev.knative.source.github.pull_request",
            payload("github-pull_request"),
            ("github", "bonjour", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"),
        ),
        ("dev.knative.sources.gitlab.push", payload("gitlab-push"), ("gitlab", "main", GITLAB_SHA)),
        (
            "dev.knative.sources.gitlab.merge_request",
            payload("gitlab-merge_request"),
            ("gitlab", "ms-viewport", GITLAB_SHA),
        ),
        (
            "dev.knative.sources.gitlabsource.Push Hook",
            body_of(payload("gitlab-push")),
            ("gitlab", "main", GITLAB_SHA),
        ),
    ],
    ids=["github-push", "github-pr", "gitlab-push", "gitlab-mr", "gitlab-legacy-bytes"],
)
def test_knative_git_sources_events_read_like_webhooks(
    type_: str, data: Any, expected: tuple[str, ...]
) -> None:
    push = parse_source_event(type_, "event-1", data)
    assert isinstance(push, Push)
    assert (push.provider, push.branch, push.commit) == expected
    assert push.delivery == "event-1"


def test_other_cloudevent_types_are_not_git_sources() -> None:
    assert parse_source_event("dev.jetbridge.step.ready", "e", {}) is None
    with pytest.raises(EventError, match="data must be the webhook's JSON object"):
        parse_source_event("dev.knative.source.github.push", "e", [1])


PIPELINE = """
resources:
- {name: app, type: git, source: {uri: "git@github.com:octo-org/hello-world.git", branch: main}}
- {name: app-dev, type: git, source: {uri: "https://github.com/octo-org/hello-world", branch: dev}}
- {name: default, type: git, source: {uri: "https://github.com/octo-org/hello-world.git"}}
- {name: tags, type: git, source: {uri: "https://github.com/octo-org/hello-world.git", tag_filter: "v*"}}
- {name: other, type: git, source: {uri: "https://github.com/octo-org/other.git", branch: main}}
jobs:
- name: unit
  plan:
  - get: app
    trigger: true
  - get: other
- name: nightly
  plan:
  - get: app
- name: deploy
  plan:
  - get: app
    trigger: true
    passed: [unit]
- name: pinned
  plan:
  - get: app
    trigger: true
    version: {ref: "6113728f27ae82c7b1a177c8d03f9e96e0adf246"}
- name: side-by-side
  plan:
  - in_parallel:
    - get: source
      resource: app
      trigger: true
    - get: again
      resource: app
- name: on-default
  plan:
  - get: default
    trigger: true
- name: dev
  plan:
  - get: app-dev
    trigger: true
- name: release
  plan:
  - get: tags
    trigger: true
- name: nested
  plan:
  - do:
    - try:
        get: deep
        resource: app-dev
        trigger: true
"""


def _push(
    branch: str = "main", default: str | None = "main", urls: frozenset[str] = frozenset({HELLO})
) -> Push:
    return Push(
        provider="github",
        event="push",
        delivery="d",
        repository="https://github.com/octo-org/hello-world.git",
        urls=urls,
        branch=branch,
        commit=GITHUB_SHA,
        default_branch=default,
    )


PIN = {"ref": GITHUB_SHA}


@pytest.mark.parametrize(
    ("push", "expected"),
    [
        (
            _push(),
            [
                Trigger(job="unit", versions={"app": PIN}),
                Trigger(job="side-by-side", versions={"source": PIN, "again": PIN}),
                Trigger(job="on-default", versions={"default": PIN}),
            ],
        ),
        (
            _push(default="trunk"),
            [
                Trigger(job="unit", versions={"app": PIN}),
                Trigger(job="side-by-side", versions={"source": PIN, "again": PIN}),
            ],
        ),
        (
            _push("dev"),
            [
                Trigger(job="dev", versions={"app-dev": PIN}),
                Trigger(job="nested", versions={"deep": PIN}),
            ],
        ),
        (_push("feature"), []),
        (_push(urls=frozenset({"github.com/octo-org/elsewhere"})), []),
    ],
    ids=["main", "main-not-default", "dev", "untracked-branch", "other-repository"],
)
def test_a_push_starts_the_jobs_that_trigger_on_it_pinned_to_its_commit(
    push: Push, expected: list[Trigger]
) -> None:
    # Not: nightly (no trigger), deploy (passed), pinned (a pinned version), release (tags).
    assert list(match(parse_pipeline(PIPELINE), push)) == expected
