"""Webhook deliveries as GitHub, GitLab and a generic sender make them, for tests.

The payloads in ``tests/testdata/webhooks`` have the shape the git hosts document
and send; a test changes only the fields it is about.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from shared.webhooks import signature

TESTDATA = Path(__file__).resolve().parent / "testdata" / "webhooks"

SECRET = "It's a Secret to Everybody"


def payload(name: str, **changes: Any) -> dict[str, Any]:
    """``testdata/webhooks/<name>.json`` with dotted paths changed: ``payload("github-push",
    **{"repository.clone_url": "/srv/app.git"})``."""
    data: dict[str, Any] = json.loads((TESTDATA / f"{name}.json").read_text())
    data = copy.deepcopy(data)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return data


def body_of(data: Any) -> bytes:
    return json.dumps(data).encode()


def github_headers(
    body: bytes, secret: str = SECRET, *, event: str = "push", delivery: str | None = None
) -> dict[str, str]:
    """The headers GitHub sends with a webhook (``X-Hub-Signature-256`` signed with ``secret``)."""
    return {
        "Accept": "*/*",
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/f1aa6e4",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Event": event,
        "X-GitHub-Hook-ID": "292430182",
        "X-GitHub-Hook-Installation-Target-ID": "79929171",
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-Hub-Signature-256": signature(secret, body),
    }


def gitlab_headers(
    secret: str = SECRET, *, event: str = "Push Hook", delivery: str | None = None
) -> dict[str, str]:
    """The headers GitLab sends with a webhook (``X-Gitlab-Token`` is the secret itself)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.0.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Event-UUID": delivery or str(uuid.uuid4()),
        "X-Gitlab-Instance": "https://gitlab.example.com",
        "X-Gitlab-Token": secret,
        "X-Gitlab-Webhook-UUID": "2c9ef52b-9e8d-4a57-9a41-24b5ee5d3a41",
    }


def generic_headers(
    body: bytes, secret: str = SECRET, *, delivery: str | None = None
) -> dict[str, str]:
    """JetBridge's generic webhook: GitHub's signature scheme under JetBridge's names."""
    return {
        "Content-Type": "application/json",
        "X-JetBridge-Event": "push",
        "X-JetBridge-Delivery": delivery or str(uuid.uuid4()),
        "X-JetBridge-Signature-256": signature(secret, body),
    }


def post(
    url: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    """Send a webhook; the status and the JSON answer (``{"text": …}`` when it is not JSON)."""
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8", "replace")
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"text": text}
    return status, answer if isinstance(answer, dict) else {"json": answer}
