"""One small error hierarchy, split by what the caller does about it.

::

    JetBridgeError
    ├── PermanentError            the input is wrong; record it, answer 4xx or fail the step
    │   ├── PipelineError         a pipeline that does not parse or validate (carries every problem)
    │   ├── VariableError         a ((var)) that was never given
    │   ├── EventError            a CloudEvent or webhook that is malformed or unknown
    │   │   ├── MethodNotAllowed      a webhook sent with a method other than POST (405)
    │   │   ├── PayloadTooLarge       a webhook body over the size limit (413)
    │   │   └── UnsupportedMediaType  a webhook body that is not JSON (415)
    │   ├── SignatureError        a webhook whose signature is missing or wrong
    │   ├── NotFoundError         a pipeline, job, build or step that does not exist
    │   ├── PipelinePaused        a build asked of a paused pipeline (409)
    │   ├── ArchiveError          an archive entry that would land outside its artifact
    │   ├── ConfigurationError    a setting that is missing or impossible
    │   ├── RuntimeForbidden      the runtime refused JetBridge (names the RBAC verb and resource)
    │   ├── PodRejected           the runtime refused a step's pod as invalid (names the pod and why)
    │   └── LogStoreForbidden     the log store refused JetBridge (names the bucket and permission)
    └── TemporaryError            the world is briefly wrong; answer 5xx so the event comes again
        ├── DatabaseUnavailable   the database cannot be reached
        ├── RuntimeUnavailable    the runtime (Kubernetes API) answered 429 or 5xx
        ├── ArtifactStoreError    the store could not be written (full volume is *permanent*: see StoreFullError)
        └── LogStoreUnavailable   the log store (a GCS bucket) throttled, failed or timed out

Third-party exceptions are wrapped where they enter (``raise ... from e``); no
service sees an ``ApiException`` or a driver error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class JetBridgeError(Exception):
    """Base of every error JetBridge raises on purpose."""


class PermanentError(JetBridgeError):
    """The input is wrong: retrying the same input gives the same answer."""

    #: HTTP status a function answers with when this error reaches it.
    status = 400


class TemporaryError(JetBridgeError):
    """Something outside JetBridge is briefly wrong: the event should be delivered again."""

    status = 503


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One thing wrong with a pipeline, located in its YAML."""

    path: str
    """Where in the document, as a dotted path: ``jobs[0].plan[1].task``."""
    message: str
    line: int | None = None
    """1-based line in the YAML file, when the problem has a place in it."""
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path}: {self.message}"


class PipelineError(PermanentError):
    """A pipeline that does not parse or validate. Carries every problem found, not just the first."""

    status = 422

    def __init__(self, problems: Sequence[Problem], *, source: str = "pipeline") -> None:
        self.problems = tuple(problems)
        self.source = source
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"{source} is not a valid pipeline ({len(self.problems)} problem(s)):\n{lines}"
        )


class VariableError(PermanentError):
    """A ``((var))`` that no ``--var`` or vars file gave."""

    status = 422


class EventError(PermanentError):
    """A CloudEvent or webhook that is malformed, of an unknown type, or missing a field."""


class MethodNotAllowed(EventError):
    """A webhook sent with a method other than POST."""

    status = 405


class PayloadTooLarge(EventError):
    """A webhook body over ``JETBRIDGE_WEBHOOK_MAX_BYTES``; refused before it is read."""

    status = 413


class UnsupportedMediaType(EventError):
    """A webhook body that is not ``application/json`` (a form-encoded GitHub hook, say)."""

    status = 415


class SignatureError(PermanentError):
    """A webhook whose signature is missing or does not match. Never names the secret."""

    status = 401


class NotFoundError(PermanentError):
    """A pipeline, job, build or step that does not exist."""

    status = 404


class PipelinePaused(PermanentError):
    """A build asked of a paused pipeline: nothing starts until it is unpaused."""

    status = 409


class ArchiveError(PermanentError):
    """An archive that would write outside its artifact, or is not an archive at all."""


class ConfigurationError(PermanentError):
    """A setting that is missing or cannot work (``JETBRIDGE_STORE_ROOT`` unset, say)."""

    status = 500


class StoreFullError(PermanentError):
    """The artifact store has no space left for what a step writes."""

    status = 507


class DatabaseUnavailable(TemporaryError):
    """The database cannot be reached or refused the connection."""


class RuntimeUnavailable(TemporaryError):
    """The runtime (the Kubernetes API) is throttling or failing; try again later."""


class RuntimeForbidden(PermanentError):
    """The runtime refused an operation: names the RBAC verb and resource that is missing."""

    status = 403


class PodRejected(PermanentError):
    """The runtime refused a step's pod as invalid (the API's 400/422, a Pod Security violation).

    The step cannot run as written: ``launch_step`` records it errored with this message.
    """

    status = 422


class ArtifactStoreError(TemporaryError):
    """The artifact store could not be read or written for a reason that may pass."""


class LogStoreUnavailable(TemporaryError):
    """The log store throttled (429), failed (5xx) or did not answer in time; try again later."""


class LogStoreForbidden(PermanentError):
    """The log store refused JetBridge: names the bucket and the permission it lacks."""

    status = 403
