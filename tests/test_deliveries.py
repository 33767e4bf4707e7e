"""Webhooks over HTTP into the trigger function (real functions-framework), on SQLite and Postgres.

Each delivery starts its builds once; anything refused is answered with a status and a
message naming what is wrong, and writes no row.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from shared import app, events
from shared import status as bs
from shared.app import Deps, build_deps
from shared.db import BuildRow, DeliveryRow, StepRow, transaction
from shared.pipelines import set_paused
from shared.settings import Settings
from shared.webhooks import signature
from tests.hooks import (
    SECRET,
    body_of,
    generic_headers,
    github_headers,
    gitlab_headers,
    payload,
    post,
)
from tests.http import installed_deps, serve_function

GITHUB_SHA = "59b20b8d5c6ff8d09518454d4dd8b7b30f095ab5"
GITLAB_SHA = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"

#: A small limit, so the 413 cases stay small.
MAX_BYTES = 64 * 1024

PIPELINE = """
resources:
- {name: app, type: git, source: {uri: "git@github.com:octo-org/hello-world.git", branch: main}}
- {name: diaspora, type: git, source: {uri: "https://gitlab.example.com/mike/diaspora.git", branch: main}}
- {name: awesome, type: git, source: {uri: "https://gitlab.example.com/awesome_space/awesome_project", branch: ms-viewport}}
- {name: generic, type: git, source: {uri: "https://git.example.com/team/app.git", branch: dev}}
jobs:
- name: unit
  plan:
  - get: app
    trigger: true
  - task: test
    config: {platform: linux, inputs: [{name: app}], run: {path: "true"}}
- name: lint
  plan:
  - get: app
    trigger: true
- name: gitlab
  plan:
  - in_parallel:
    - get: diaspora
      trigger: true
    - get: awesome
      trigger: true
- name: generic
  plan:
  - get: generic
    trigger: true
"""


@pytest.fixture
def deps(database_url: str, tmp_path: Path) -> Iterator[Deps]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        webhook_secrets=json.dumps({n: SECRET for n in ("app", "twin", "paused", "ghost")}),
        webhook_max_bytes=MAX_BYTES,
    )
    names = ("app", "twin", "paused", "nosecret")
    with installed_deps(settings, dict.fromkeys(names, PIPELINE)) as deps:
        with transaction(deps.sessions) as session:
            set_paused(session, "paused", paused=True)
        yield deps


@pytest.fixture
def url(deps: Deps) -> Iterator[str]:
    with serve_function("trigger", target="webhook", signature_type="http") as base:
        yield base


def counts(deps: Deps) -> dict[str, int]:
    with transaction(deps.sessions) as session:
        return {
            table.__tablename__: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in (BuildRow, StepRow, DeliveryRow)
        }


NOTHING = {"builds": 0, "steps": 0, "deliveries": 0}


def ready(deps: Deps) -> list[Any]:
    return [e for e in deps.sink.events if e["type"] == events.STEP_READY]  # type: ignore[attr-defined]


def test_a_signed_github_push_starts_its_jobs_once_and_a_redelivery_nothing(
    deps: Deps, url: str
) -> None:
    body = body_of(payload("github-push"))
    headers = github_headers(body, delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    status, answer = post(url + "webhooks/app", body, headers)
    assert status == 201, answer
    assert answer["created"] is True
    assert [(b["job"], b["number"], b["status"]) for b in answer["builds"]] == [
        ("unit", 1, "started"),
        ("lint", 1, "started"),
    ]
    assert answer["message"] == "59b20b8d5c6f on main: started unit #1, lint #1"
    with transaction(deps.sessions) as session:
        builds = session.scalars(select(BuildRow).order_by(BuildRow.id)).all()
        assert [b.versions for b in builds] == [{"app": {"ref": GITHUB_SHA}}] * 2
        assert {b.event_id for b in builds} == {"72d3162e-cc78-11e3-81ab-4c9367dc0958"}
    announced = len(ready(deps))
    assert announced == 2  # each build's get: pinned, so no check before it
    before = counts(deps)

    again_status, again = post(url + "webhooks/app", body, headers)
    assert again_status == 200
    assert again["created"] is False
    assert again["builds"] == answer["builds"]
    assert "was received before: it started nothing new" in again["message"]
    assert counts(deps) == before
    assert len(ready(deps)) == announced


@pytest.mark.parametrize(
    ("name", "headers_of", "data", "jobs", "version"),
    [
        (
            "gitlab-push",
            lambda b: gitlab_headers(),
            payload("gitlab-push"),
            ["gitlab"],
            {"diaspora": GITLAB_SHA},
        ),
        (
            "gitlab-merge-request",
            lambda b: gitlab_headers(event="Merge Request Hook"),
            payload("gitlab-merge_request"),
            ["gitlab"],
            {"awesome": GITLAB_SHA},
        ),
        (
            "github-pull-request",
            lambda b: github_headers(b, event="pull_request"),
            payload(
                "github-pull_request",
                **{"pull_request.head.ref": "main", "pull_request.head.sha": "0d1a26e"},
            ),
            ["unit", "lint"],
            {"app": "0d1a26e"},
        ),
        (
            "generic",
            generic_headers,
            {
                "repository": "git@git.example.com:team/app.git",
                "branch": "dev",
                "commit": "abc1234",
            },
            ["generic"],
            {"generic": "abc1234"},
        ),
    ],
    ids=["gitlab-push", "gitlab-merge-request", "github-pull-request", "generic"],
)
def test_each_sender_starts_the_jobs_tracking_its_branch(
    deps: Deps,
    url: str,
    name: str,
    headers_of: Any,
    data: dict[str, Any],
    jobs: list[str],
    version: dict[str, str],
) -> None:
    body = body_of(data)
    status, answer = post(url + "webhooks/app", body, headers_of(body))
    assert status == 201, answer
    assert [b["job"] for b in answer["builds"]] == jobs
    with transaction(deps.sessions) as session:
        pinned = session.scalars(select(BuildRow.versions).order_by(BuildRow.id)).first()
    assert pinned == {get: {"ref": sha} for get, sha in version.items()}


@pytest.mark.parametrize(
    ("path", "data", "headers_of", "reason"),
    [
        (
            "webhooks/app",
            {"zen": "Design for failure.", "hook_id": 1},
            lambda b: github_headers(b, event="ping"),
            "pong",
        ),
        (
            "webhooks/app",
            payload("github-push", ref="refs/heads/feature"),
            github_headers,
            "nothing to build",
        ),
        (
            "webhooks/app",
            payload("github-push", ref="refs/tags/v1"),
            github_headers,
            "is not a branch",
        ),
        ("webhooks/paused", {"zen": "x"}, lambda b: github_headers(b, event="ping"), "pong"),
    ],
    ids=["ping", "untracked-branch", "tag", "ping-paused"],
)
def test_deliveries_that_start_nothing_answer_200_and_write_nothing(
    deps: Deps, url: str, path: str, data: dict[str, Any], headers_of: Any, reason: str
) -> None:
    body = body_of(data)
    status, answer = post(url + path, body, headers_of(body))
    assert status == 200, answer
    assert answer["builds"] == [] and answer["created"] is False
    assert reason in answer["message"]
    assert counts(deps) == NOTHING


GOOD = body_of(payload("github-push"))


def _big() -> bytes:
    return body_of(payload("github-push", padding="x" * MAX_BYTES))


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 8192):
        yield data[i : i + 8192]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "message"),
    [
        (
            "POST",
            "webhooks/app",
            b'{"ref": "refs/heads/main", ',
            github_headers(b'{"ref": "refs/heads/main", '),
            400,
            "the webhook body is not JSON",
        ),
        (
            "POST",
            "webhooks/app",
            GOOD,
            {**github_headers(GOOD), "Content-Type": "application/x-www-form-urlencoded"},
            415,
            "a webhook body must be application/json, found 'application/x-www-form-urlencoded'",
        ),
        (
            "POST",
            "webhooks/app",
            GOOD,
            {k: v for k, v in github_headers(GOOD).items() if k != "X-GitHub-Event"},
            400,
            "cannot tell who sent this webhook",
        ),
        (
            "POST",
            "webhooks/app",
            GOOD,
            {k: v for k, v in github_headers(GOOD).items() if k != "X-GitHub-Delivery"},
            400,
            "missing X-GitHub-Delivery header",
        ),
        (
            "POST",
            "webhooks/app",
            GOOD,
            {k: v for k, v in github_headers(GOOD).items() if k != "X-Hub-Signature-256"},
            401,
            "missing X-Hub-Signature-256 header",
        ),
        (
            "POST",
            "webhooks/app",
            GOOD,
            github_headers(GOOD, "guessed"),
            401,
            "X-Hub-Signature-256 does not match the body signed with pipeline 'app''s webhook secret",
        ),
        ("POST", "webhooks/app", GOOD, gitlab_headers("guessed"), 401, "X-Gitlab-Token is not"),
        (
            "POST",
            "webhooks/ghost",
            GOOD,
            github_headers(GOOD),
            404,
            "no pipeline named 'ghost'; pipelines: app, nosecret, paused, twin",
        ),
        (
            "POST",
            "webhooks/nosecret",
            GOOD,
            github_headers(GOOD),
            404,
            "pipeline 'nosecret' takes no webhooks: no secret is set for it",
        ),
        (
            "POST",
            "webhooks/a/b",
            GOOD,
            github_headers(GOOD),
            404,
            "webhooks are posted to /webhooks/<pipeline>",
        ),
        (
            "POST",
            "webhooks/paused",
            GOOD,
            github_headers(GOOD),
            409,
            "pipeline 'paused' is paused: it starts no builds; `jetbridge unpause-pipeline paused`",
        ),
        (
            "POST",
            "webhooks/app",
            _big(),
            github_headers(_big()),
            413,
            f"at most {MAX_BYTES} are taken",
        ),
        (
            "GET",
            "webhooks/app",
            None,
            github_headers(b""),
            405,
            "webhooks are sent with POST, not 'GET'",
        ),
    ],
    ids=[
        "malformed-json",
        "wrong-content-type",
        "no-event-header",
        "no-delivery-header",
        "no-signature",
        "bad-signature",
        "bad-gitlab-token",
        "unknown-pipeline",
        "no-secret",
        "bad-path",
        "paused-pipeline",
        "too-large",
        "wrong-method",
    ],
)
def test_bad_webhooks_get_a_status_and_a_message_and_write_nothing(
    deps: Deps,
    url: str,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    got, answer = post(url + path, body, headers, method=method)  # type: ignore[arg-type]
    assert got == status, answer
    assert message in answer["error"]
    assert counts(deps) == NOTHING
    assert deps.sink.events == []  # type: ignore[attr-defined]
    assert SECRET not in caplog.text and SECRET not in json.dumps(answer)
    assert signature(SECRET, body or b"") not in caplog.text


def test_a_chunked_body_over_the_limit_is_cut_off_at_the_limit(deps: Deps, url: str) -> None:
    big = _big()
    headers = github_headers(big)
    status, answer = post(url + "webhooks/app", _chunks(big), headers)  # type: ignore[arg-type]
    assert status == 413
    assert f"the body is over {MAX_BYTES} bytes" in answer["error"]
    assert counts(deps) == NOTHING


def test_a_secret_mounted_as_a_file_verifies_its_pipeline(
    deps: Deps, tmp_path: Path, database_url: str
) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "nosecret").write_text("from a Secret\n")  # a file made from a file ends in \n
    (folder / "..data").mkdir()  # what a mounted Secret holds besides its keys
    app.install(
        build_deps(
            deps.settings.with_overrides(webhook_secrets_dir=folder),
            sink=deps.sink,
            runtime=deps.runtime,
            clock=deps.clock,
            engine=deps.engine,
        )
    )
    body = body_of(payload("github-push"))
    with serve_function("trigger", target="webhook", signature_type="http") as base:
        status, answer = post(
            base + "webhooks/nosecret", body, github_headers(body, "from a Secret")
        )
        refused, _ = post(base + "webhooks/nosecret", body, github_headers(body))
    assert status == 201, answer
    assert refused == 401


def test_a_malformed_secrets_setting_is_a_500_that_does_not_show_it(deps: Deps) -> None:
    app.install(
        build_deps(
            deps.settings.with_overrides(webhook_secrets='{"app": "hunter2"'),
            sink=deps.sink,
            runtime=deps.runtime,
            engine=deps.engine,
        )
    )
    with serve_function("trigger", target="webhook", signature_type="http") as base:
        status, answer = post(base + "webhooks/app", GOOD, github_headers(GOOD))
    assert status == 500
    assert "JETBRIDGE_WEBHOOK_SECRETS must be a JSON object" in answer["error"]
    assert "hunter2" not in answer["error"]


def test_the_same_delivery_racing_itself_starts_one_set_of_builds(deps: Deps, url: str) -> None:
    body = body_of(payload("github-push"))
    headers = github_headers(body)
    answers: list[tuple[int, dict[str, Any]]] = []
    barrier = threading.Barrier(4)

    def send() -> None:
        barrier.wait()
        answers.append(post(url + "webhooks/app", body, headers))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s for s, _ in answers) == [200, 200, 200, 201]
    assert len({json.dumps(a["builds"]) for _, a in answers}) == 1
    assert counts(deps)["builds"] == 2 and counts(deps)["deliveries"] == 1


# ---------------------------------------------------------------- Knative's git sources


def source_event(type_: str, data: dict[str, Any], id_: str) -> Any:
    return events.make_event(type_, data, source="https://github.com/octo-org/hello-world", id_=id_)


def post_event(base: str, event: Any) -> tuple[int, str]:
    headers, body = to_binary(event)
    return post(base, body, headers)[0], ""


def test_a_github_source_push_builds_every_unpaused_pipeline_tracking_it_once(deps: Deps) -> None:
    event = source_event("dev.knative.source.github.push", payload("github-push"), "gh-delivery-1")
    with serve_function("trigger") as base:
        assert post_event(base, event)[0] == 200
        assert post_event(base, event)[0] == 200  # redelivered by the Broker
    with transaction(deps.sessions) as session:
        rows = session.execute(
            select(DeliveryRow.delivery_id, BuildRow.job_name)
            .join(BuildRow, BuildRow.event_id == DeliveryRow.delivery_id)
            .where(BuildRow.pipeline_id == DeliveryRow.pipeline_id)
            .order_by(BuildRow.id)
        ).all()
    # app, nosecret and twin track it (a source needs no webhook secret); paused does not build.
    assert counts(deps) == {"builds": 6, "steps": 9, "deliveries": 3}
    assert {job for _, job in rows} == {"unit", "lint"}


def test_a_build_request_for_a_paused_pipeline_is_refused_with_409(deps: Deps) -> None:
    event = events.make_event(events.BUILD_REQUESTED, {"pipeline": "paused", "job": "unit"})
    with serve_function("trigger") as base:
        headers, body = to_binary(event)
        status, answer = post(base, body, headers)
    assert status == 409
    assert "pipeline 'paused' is paused" in answer["error"]
    assert counts(deps) == NOTHING


def test_a_paused_pipeline_still_answers_a_redelivery_of_what_it_took_before(
    deps: Deps, url: str
) -> None:
    body = body_of(payload("github-push"))
    headers = github_headers(body)
    first, answer = post(url + "webhooks/app", body, headers)
    with transaction(deps.sessions) as session:
        set_paused(session, "app", paused=True)
    again, repeat = post(url + "webhooks/app", body, headers)
    fresh, refused = post(url + "webhooks/app", body, github_headers(body))
    assert (first, again, fresh) == (201, 200, 409)
    assert repeat["builds"] == answer["builds"]
    assert "is paused" in refused["error"]


# ---------------------------------------------------------------- fuzz

_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_PAYLOADS = {
    "github": ["github-push", "github-pull_request"],
    "gitlab": ["gitlab-push", "gitlab-merge_request"],
    "generic": [],
}


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in a JSON document, to change one of them."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


@st.composite
def webhooks(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    """A genuine delivery (signed, well-formed), then a few things about it changed at random."""
    sender = draw(st.sampled_from(sorted(_PAYLOADS)))
    if sender == "generic":
        data: Any = {
            "repository": "https://git.example.com/team/app.git",
            "branch": "dev",
            "commit": "abc1234",
        }
    else:
        data = payload(draw(st.sampled_from(_PAYLOADS[sender])))
    change = draw(st.sampled_from(["none", "set", "delete", "replace"]))
    paths = _paths(data)
    if change in ("set", "delete") and paths:
        *parents, last = draw(st.sampled_from(paths))
        node = data
        for key in parents:
            node = node[key]
        if change == "set":
            node[last] = draw(_json)
        else:
            del node[last]
    elif change == "replace":
        data = draw(_json)
    body = draw(st.binary(max_size=200)) if draw(st.integers(0, 9)) == 0 else body_of(data)
    if sender == "github":
        event = "pull_request" if "pull_request" in json.dumps(data)[:2000] else "push"
        headers = github_headers(body, event=event)
    elif sender == "gitlab":
        event = "Merge Request Hook" if "merge_request" in json.dumps(data)[:200] else "Push Hook"
        headers = gitlab_headers(event=event)
    else:
        headers = generic_headers(body)
    for name in sorted(headers):
        what = draw(st.integers(0, 11))
        if what == 0:
            del headers[name]
        elif what == 1:
            headers[name] = draw(_text)
    method = draw(st.sampled_from(["POST"] * 8 + ["PUT", "GET"]))
    pipeline = draw(
        st.sampled_from(["app"] * 6 + ["paused", "ghost", "nosecret", "webhooks"]) | _text
    )
    return method, pipeline, headers, body


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=webhooks())
def test_no_webhook_is_answered_with_a_5xx(
    deps: Deps, url: str, request: tuple[str, str, dict[str, str], bytes]
) -> None:
    method, pipeline, headers, body = request
    path = "webhooks/" + urllib.parse.quote(pipeline, safe="/")
    status, answer = post(url + path, body if method != "GET" else None, headers, method=method)  # type: ignore[arg-type]
    assert status < 500, answer
    if status >= 400:
        assert answer.get("error"), answer


def test_builds_of_a_delivery_are_recorded_with_the_builds_they_are(deps: Deps, url: str) -> None:
    body = body_of(payload("github-push"))
    post(url + "webhooks/app", body, github_headers(body, delivery="d-7"))
    with transaction(deps.sessions) as session:
        record = session.scalars(select(DeliveryRow)).one()
        ids = session.scalars(select(BuildRow.id).order_by(BuildRow.id)).all()
        statuses = session.scalars(select(BuildRow.status)).all()
    assert (record.delivery_id, record.provider, record.event, record.commit) == (
        "d-7",
        "github",
        "push",
        GITHUB_SHA,
    )
    assert record.build_ids == list(ids)
    assert set(statuses) == {bs.STARTED}


def test_the_deliveries_migration_makes_the_table_the_model_describes(deps: Deps) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from shared.db import Base

    with deps.engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in diffs if "deliveries" in repr(d)] == []
