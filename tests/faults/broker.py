"""A Broker that delivers the way Knative's may: more than once, in any order, again after a failure.

``Broker`` stands in for ``shared.bus.InProcessBus`` (``ClusterCI(bus=...)``) with the
delivery contract spelled out and every delivery recorded:

* every event emitted is queued ``copies`` times (the same id each time);
* with a ``seed``, each delivery is a random pick from everything queued, so copies
  and unrelated events interleave in a shuffled order (without one, first in, first out);
* a handler's answer decides what happens next, as with a Knative Trigger: success
  acknowledges; a temporary error (5xx) or a crash (the function's process killed,
  no answer at all) puts the event back to be delivered again; a permanent error
  (4xx) drops it into ``rejected``.

``HttpTransport`` delivers over HTTP instead, to the real functions-framework apps of
``jetbridge serve`` (``shared.server.make_app``), so a test sees the status codes the
functions answer.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent
from werkzeug.test import Client

from shared import events
from shared.errors import PermanentError, TemporaryError
from tests.reaping import Killed

Handler = Callable[[CloudEvent], None]

#: A delivery failed this often is a bug, not a fault: it goes to ``dead`` and the test
#: fails in ``assert_healthy`` instead of looping for ever.
MAX_ATTEMPTS = 100
#: How long a waiting ``run_until`` sleeps between looks at ``done`` when nothing is queued.
POLL_SECONDS = 0.02

#: The statuses a delivery can end with (a crash has no HTTP status: the connection died),
#: and an event no Trigger routes anywhere (``step.finished`` with no subscriber).
OK, RETRY, REJECTED, CRASHED, UNROUTED = "2xx", "5xx", "4xx", "crashed", "unrouted"


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One attempt to deliver one copy of an event, and how the handler answered."""

    event_id: str
    type: str
    attempt: int
    answer: str
    """``2xx``, ``5xx``, ``4xx`` or ``crashed``."""
    status: int | None = None
    """The HTTP status, when it went over HTTP (or the one the error maps to)."""
    error: str = ""
    pod_phase: str | None = None
    """A pod event's pod's ``status.phase``."""


@dataclass(frozen=True, kw_only=True)
class _Queued:
    event: CloudEvent
    attempt: int
    seq: int


class Broker:
    """Knative's Broker and Triggers for one process, with faults on demand (see the module)."""

    def __init__(
        self,
        *,
        copies: int = 1,
        seed: int | None = None,
        transport: Callable[[CloudEvent], tuple[str, int | None, str]] | None = None,
    ) -> None:
        self.copies = copies
        self._rng = random.Random(seed) if seed is not None else None
        self._transport = transport or self._call_handlers
        self._queue: list[_Queued] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._observers: list[Handler] = []
        self.rejected: dict[str, PermanentError] = {}
        #: Every event as its sender emitted it, once per ``emit`` (before any copying).
        self.emitted: list[CloudEvent] = []
        #: Every delivery attempt, in the order they happened.
        self.deliveries: list[Delivery] = []
        #: Deliveries given up after ``MAX_ATTEMPTS``.
        self.dead: list[CloudEvent] = []
        #: Errors that were not injected (anything but a JetBridge error or ``Killed``).
        self.unexpected: list[BaseException] = []

    # -- what InProcessBus offers -------------------------------------------------

    def subscribe(self, type_: str, handler: Handler) -> None:
        with self._cond:
            self._handlers[type_].append(handler)

    def observe(self, observer: Handler) -> None:
        with self._cond:
            self._observers.append(observer)

    def emit(self, event: CloudEvent) -> None:
        """Queue ``copies`` deliveries of the event; safe from any thread."""
        with self._cond:
            self.emitted.append(event)
            for _ in range(self.copies):
                self._put(event, attempt=1)
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def run_until(self, done: Callable[[], bool], *, timeout: float) -> bool:
        """Deliver until ``done()``; ``False`` if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            queued = self._take(wait=POLL_SECONDS)
            if queued is not None:
                self._deliver(queued)
        return True

    def drain(self) -> None:
        """Deliver until nothing is queued (redeliveries included)."""
        while (queued := self._take(wait=0)) is not None:
            self._deliver(queued)

    def deliver(self, count: int) -> int:
        """Deliver at most ``count`` queued events; returns how many were delivered."""
        done = 0
        while done < count and (queued := self._take(wait=0)) is not None:
            self._deliver(queued)
            done += 1
        return done

    # -- what a test reads --------------------------------------------------------

    def answers(self, *types: str) -> Counter[str]:
        """How deliveries (of these types; all without) were answered."""
        return Counter(d.answer for d in self.deliveries if not types or d.type in types)

    def emitted_of(self, type_: str) -> list[CloudEvent]:
        with self._cond:
            return [e for e in self.emitted if e["type"] == type_]

    def out_of_order(self) -> int:
        """Deliveries that overtook an event emitted before them (0 for first in, first out)."""
        with self._cond:
            first_seen: dict[str, int] = {}
            for d in self.deliveries:
                first_seen.setdefault(d.event_id, len(first_seen))
            order = {e["id"]: i for i, e in reversed(list(enumerate(self.emitted)))}
        ranks = [order[i] for i in first_seen if i in order]
        return sum(1 for a, b in itertools.pairwise(ranks) if b < a)

    def assert_healthy(self) -> None:
        """No handler failed in a way no test injected, and nothing was given up."""
        assert self.unexpected == [], f"handlers raised what no test injected: {self.unexpected!r}"
        assert self.dead == [], f"deliveries given up: {[e['type'] for e in self.dead]}"

    # -- delivering -----------------------------------------------------------------

    def _put(self, event: CloudEvent, *, attempt: int) -> None:
        self._seq += 1
        self._queue.append(_Queued(event=event, attempt=attempt, seq=self._seq))

    def _take(self, *, wait: float) -> _Queued | None:
        with self._cond:
            if not self._queue and wait > 0:
                self._cond.wait(wait)
            if not self._queue:
                return None
            index = self._rng.randrange(len(self._queue)) if self._rng is not None else 0
            return self._queue.pop(index)

    def _deliver(self, queued: _Queued) -> None:
        event = queued.event
        answer, status, error = self._transport(event)
        with self._cond:
            self.deliveries.append(
                Delivery(
                    event_id=event["id"],
                    type=event["type"],
                    attempt=queued.attempt,
                    answer=answer,
                    status=status,
                    error=error,
                    pod_phase=_phase(event),
                )
            )
            if answer in (RETRY, CRASHED):
                if queued.attempt >= MAX_ATTEMPTS:
                    self.dead.append(event)
                else:
                    self._put(event, attempt=queued.attempt + 1)
            observers = list(self._observers) if answer == OK else []
        for observer in observers:
            observer(event)

    def _call_handlers(self, event: CloudEvent) -> tuple[str, int | None, str]:
        """The in-process transport: each subscribed handler, its exceptions read as answers."""
        with self._cond:
            handlers = list(self._handlers.get(event["type"], ()))
        for handler in handlers:
            try:
                handler(event)
            except TemporaryError as e:
                return RETRY, 503, str(e)
            except PermanentError as e:
                self.rejected[event["id"]] = e
                return REJECTED, e.status, str(e)
            except Killed as e:
                return CRASHED, None, str(e)
            except Exception as e:  # functions-framework answers 500: Knative retries
                self.unexpected.append(e)
                return CRASHED, 500, repr(e)
        return OK, 200, ""


class HttpTransport:
    """Delivers a CloudEvent (binary mode) to a function's WSGI app, as the Broker's Trigger does.

    ``routes`` maps event types to paths of ``app`` (``shared.server.ROUTES``).
    """

    def __init__(self, app: object, routes: Mapping[str, str]) -> None:
        self._client = Client(app)  # type: ignore[arg-type]
        self._routes = dict(routes)
        self._lock = threading.Lock()

    def __call__(self, event: CloudEvent) -> tuple[str, int | None, str]:
        path = self._routes.get(event["type"])
        if path is None:
            return UNROUTED, None, ""  # no Trigger for it: the Broker drops it, as Knative does
        headers, body = to_binary(event)
        try:
            with self._lock:  # one delivery at a time, as the bus does
                response = self._client.post(path, headers=dict(headers), data=body)
        except Killed as e:
            return CRASHED, None, str(e)
        status = response.status_code
        text = response.get_data(as_text=True)[:500]
        response.close()
        if 200 <= status < 300:
            return OK, status, ""
        if status >= 500:
            return RETRY, status, text
        return REJECTED, status, text


def routes_by_type(extra: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    """Which function each JetBridge event type goes to under ``jetbridge serve``'s paths."""
    routes = {
        events.BUILD_REQUESTED: "/trigger",
        events.STEP_READY: "/step-runner",
        events.PING: "/reaper",
        **{t: "/step-runner" for t in events.POD_EVENTS},
    }
    routes.update(extra)
    return routes


def _phase(event: CloudEvent) -> str | None:
    data = event.get_data()
    status = data.get("status") if isinstance(data, dict) else None
    phase = status.get("phase") if isinstance(status, dict) else None
    return str(phase) if phase else None
