"""The in-process event bus: Knative's Broker and Triggers for one machine.

Handlers are subscribed by event type, as Knative Triggers filter on ``type``;
events are dispatched one at a time in the thread that runs the bus, so the
handlers see the same one-event-at-a-time world they see behind HTTP. A
temporary error puts the event back (Knative redelivers on 5xx); a permanent
one is logged and dropped (Knative does not retry 4xx).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from cloudevents.http import CloudEvent

from shared.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

Handler = Callable[[CloudEvent], None]

#: How often an event whose handler failed temporarily is tried before it is dropped,
#: as a Knative Trigger's ``delivery.retry`` would.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, kw_only=True)
class _Delivery:
    event: CloudEvent
    attempt: int = 1


class InProcessBus:
    """Routes CloudEvents by type to handlers, in the thread that calls ``run_until``."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Delivery] = queue.Queue()
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._observers: list[Handler] = []
        self._lock = threading.Lock()
        #: Events a handler refused for good, by event id, with the reason.
        self.rejected: dict[str, PermanentError] = {}

    def subscribe(self, type_: str, handler: Handler) -> None:
        """Deliver events of ``type_`` to ``handler`` (a Knative Trigger with a type filter)."""
        with self._lock:
            self._handlers[type_].append(handler)

    def observe(self, observer: Handler) -> None:
        """See every event after its handlers ran (progress display, tests)."""
        with self._lock:
            self._observers.append(observer)

    def emit(self, event: CloudEvent) -> None:
        """Queue an event; safe from any thread."""
        self._queue.put(_Delivery(event=event))

    def pending(self) -> int:
        return self._queue.qsize()

    def run_until(self, done: Callable[[], bool], *, timeout: float) -> bool:
        """Dispatch events until ``done()`` is true; ``False`` if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                delivery = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            self._dispatch(delivery)
        return True

    def drain(self) -> None:
        """Dispatch every queued event, and those they raise, until the queue is empty."""
        while True:
            try:
                delivery = self._queue.get_nowait()
            except queue.Empty:
                return
            self._dispatch(delivery)

    def _dispatch(self, delivery: _Delivery) -> None:
        event = delivery.event
        with self._lock:
            handlers = list(self._handlers.get(event["type"], ()))
            observers = list(self._observers)
        for handler in handlers:
            try:
                handler(event)
            except TemporaryError as e:
                if delivery.attempt < MAX_ATTEMPTS:
                    log.warning("event %s (%s) will be retried: %s", event["id"], event["type"], e)
                    self._queue.put(_Delivery(event=event, attempt=delivery.attempt + 1))
                else:
                    log.error(
                        "event %s (%s) dropped after %d attempts: %s",
                        event["id"],
                        event["type"],
                        delivery.attempt,
                        e,
                    )
                return
            except PermanentError as e:
                log.error("event %s (%s) rejected: %s", event["id"], event["type"], e)
                self.rejected[event["id"]] = e
        for observer in observers:
            observer(event)
