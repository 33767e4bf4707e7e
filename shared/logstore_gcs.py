"""The log store in a Google Cloud Storage bucket: ``<prefix>/<build>/<step key>.log``.

The second implementation of the ``LogStore`` port (``logstore.py``), for clusters
whose claim should hold artifacts only, or whose logs must outlive the claim. A
module of its own so that only a process configured for GCS loads the Google
client; ``make_log_store`` imports it when settings ask for it.

Every Google or HTTP error is wrapped here, by what the caller does about it:

- 408, 429, 5xx, a timeout or a broken connection → ``LogStoreUnavailable``
  (temporary: the handler answers 503 and the Broker delivers the event again);
- 403 → ``LogStoreForbidden``, naming the bucket and the IAM permission missing;
- 401, a missing bucket, any other refusal → ``ConfigurationError``.
"""

from __future__ import annotations

from google.api_core import exceptions as api
from google.api_core.retry import Retry
from google.auth import exceptions as auth
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from requests import exceptions as http

from shared.errors import (
    ConfigurationError,
    JetBridgeError,
    LogStoreForbidden,
    LogStoreUnavailable,
)

#: Seconds to connect and to wait for an answer. A log is at most a few megabytes; a
#: bucket that takes longer is unwell, and the event is better delivered again.
TIMEOUT = (10.0, 60.0)

#: The client's own retry of 429, 5xx and broken connections, cut to 30 s so that a
#: handler still answers well within Knative's request timeout; past it the error is
#: temporary and the Broker's redelivery takes over.
RETRY = DEFAULT_RETRY.with_timeout(30.0)

#: The IAM permission each operation needs, for the message of a 403. Replacing an
#: object that exists (a step's log written again) also needs ``storage.objects.delete``.
PERMISSIONS = {
    "write": "storage.objects.create (and storage.objects.delete to replace a log)",
    "read": "storage.objects.get",
}

#: HTTP statuses that mean "not now" rather than "not ever": timeout, throttled, 5xx.
_TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Errors that mean "not now" without a status: the client gave up retrying, or no answer.
_TEMPORARY = (
    api.RetryError,
    auth.TransportError,
    http.Timeout,
    http.ConnectionError,
    ConnectionError,
    TimeoutError,
)
#: Everything the client raises that is wrapped (anything else is a bug, and stays itself).
_WRAPPED = (api.GoogleAPIError, auth.GoogleAuthError, http.RequestException, OSError)


class GcsLogStore:
    """Logs as objects of one bucket; writing again replaces the object."""

    def __init__(
        self,
        client: storage.Client,
        *,
        bucket: str,
        prefix: str = "",
        retry: Retry | None = RETRY,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._bucket = client.bucket(bucket)
        self._retry = retry
        self._timeout = timeout

    def object_name(self, build_id: int, step_key: str) -> str:
        """Where the log of a step lives in the bucket."""
        name = f"{int(build_id)}/{step_key.replace('/', '_')}.log"
        return f"{self.prefix}/{name}" if self.prefix else name

    def write(self, build_id: int, step_key: str, data: bytes) -> None:
        name = self.object_name(build_id, step_key)
        try:
            self._bucket.blob(name).upload_from_string(
                data,
                content_type="text/plain; charset=utf-8",
                retry=self._retry,
                timeout=self._timeout,
            )
        except api.NotFound as e:
            raise ConfigurationError(
                f"log bucket {self.bucket!r} does not exist (writing gs://{self.bucket}/{name}); "
                "create it or set JETBRIDGE_LOG_BUCKET to one that does"
            ) from e
        except _WRAPPED as e:
            raise self._wrapped(e, "write", name) from e

    def read(self, build_id: int, step_key: str) -> bytes | None:
        name = self.object_name(build_id, step_key)
        try:
            data: bytes = self._bucket.blob(name).download_as_bytes(
                retry=self._retry, timeout=self._timeout
            )
        except api.NotFound:
            return None
        except _WRAPPED as e:
            raise self._wrapped(e, "read", name) from e
        return data

    def _wrapped(self, error: Exception, verb: str, name: str) -> JetBridgeError:
        """The JetBridge error for a failed ``verb`` of object ``name``."""
        where = f"gs://{self.bucket}/{name}"
        if isinstance(error, api.Forbidden):
            return LogStoreForbidden(
                f"the log store may not {verb} {where}: JetBridge's service account needs "
                f"{PERMISSIONS[verb]} on bucket {self.bucket!r} (403: {_reason(error)})"
            )
        if (
            isinstance(error, _TEMPORARY)
            or (
                isinstance(error, api.GoogleAPICallError)
                and (error.code in _TEMPORARY_STATUSES or (error.code or 0) >= 500)
            )
            or (isinstance(error, auth.GoogleAuthError) and getattr(error, "retryable", False))
        ):
            return LogStoreUnavailable(
                f"the log store could not {verb} {where} now, try again: {_describe(error)}"
            )
        if isinstance(error, api.Unauthorized | auth.GoogleAuthError):
            return ConfigurationError(
                f"the log store did not accept JetBridge's Google credentials while trying to "
                f"{verb} {where}: {_describe(error)}"
            )
        return ConfigurationError(f"the log store refused to {verb} {where}: {_describe(error)}")


def _describe(error: Exception) -> str:
    if isinstance(error, api.GoogleAPICallError):
        return f"{error.code} {_reason(error)}"
    return f"{type(error).__name__}: {error}"


def _reason(error: api.GoogleAPICallError) -> str:
    """GCS's own words (``error.message`` of its JSON answer), else the client's."""
    response = getattr(error, "response", None)
    try:
        return str(response.json()["error"]["message"])  # type: ignore[union-attr]
    except (AttributeError, KeyError, TypeError, ValueError):
        return str(error.message)
