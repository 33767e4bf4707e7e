"""Ports that fail on cue: a runtime and a sink that crash a handler, a runtime that makes two race.

A *crash* is ``tests.reaping.Killed`` (a ``BaseException``, like the signal that stops
a process): nothing in JetBridge catches it, the handler dies where it stands, and
the Broker, having no answer, delivers the event again. Each fault fires once (or
``times`` times) and then the port behaves, as a process that restarts does.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudevents.http import CloudEvent
from kubernetes.client import V1Pod

from shared.events import EventSink
from shared.runtime import PodDict, Runtime
from tests.reaping import Killed


@dataclass(kw_only=True)
class _Crash:
    when: str
    """``before`` the call reaches the real port, or ``after`` it returned."""
    matches: Callable[[str], bool]
    times: int


class CrashingRuntime:
    """A runtime that kills the calling handler at one of its calls (see the module docstring)."""

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self._crashes: dict[str, list[_Crash]] = {}
        self._lock = threading.Lock()
        #: ``(method, pod name, when)`` of every crash that fired.
        self.fired: list[tuple[str, str, str]] = []

    def crash(self, method: str, *, when: str = "before", pod: str = "", times: int = 1) -> None:
        """Kill the handler at the next ``times`` calls of ``method`` on a pod matching ``pod``."""
        assert when in ("before", "after"), when
        pattern = re.compile(pod)
        with self._lock:
            self._crashes.setdefault(method, []).append(
                _Crash(when=when, matches=lambda name: bool(pattern.search(name)), times=times)
            )

    def _armed(self, method: str, name: str, when: str) -> None:
        with self._lock:
            for crash in self._crashes.get(method, []):
                if crash.times > 0 and crash.when == when and crash.matches(name):
                    crash.times -= 1
                    self.fired.append((method, name, when))
                    break
            else:
                return
        raise Killed(f"killed {when} {method}({name})")

    def launch(self, pod: V1Pod) -> None:
        name = pod.metadata.name
        self._armed("launch", name, "before")
        self.inner.launch(pod)
        self._armed("launch", name, "after")

    def read(self, name: str) -> PodDict | None:
        return self.inner.read(name)

    def list(self) -> list[PodDict]:
        return self.inner.list()

    def logs(self, name: str) -> bytes:
        self._armed("logs", name, "before")
        return self.inner.logs(name)

    def delete(self, name: str) -> None:
        self._armed("delete", name, "before")
        self.inner.delete(name)
        self._armed("delete", name, "after")

    def __getattr__(self, name: str) -> Any:  # what else the real runtime offers
        return getattr(self.inner, name)


class CrashingSink:
    """A sink that kills the handler emitting an event that ``matches``, ``times`` times."""

    def __init__(self, inner: EventSink) -> None:
        self.inner = inner
        self._crashes: list[tuple[Callable[[CloudEvent], bool], list[int]]] = []
        self._lock = threading.Lock()
        #: Ids of the events whose emission was killed.
        self.fired: list[str] = []

    def crash(self, matches: Callable[[CloudEvent], bool], *, times: int = 1) -> None:
        with self._lock:
            self._crashes.append((matches, [times]))

    def emit(self, event: CloudEvent) -> None:
        with self._lock:
            for matches, left in self._crashes:
                if left[0] > 0 and matches(event):
                    left[0] -= 1
                    self.fired.append(event["id"])
                    break
            else:
                matches = None  # type: ignore[assignment]
        if matches is not None:
            raise Killed(f"killed emitting {event['type']} {event['id']}")
        self.inner.emit(event)


class RendezvousRuntime:
    """A runtime whose ``logs`` of a pod holds its first caller until a second one comes.

    ``finish_step`` reads a pod's log between reading the step and recording it; two
    finishers of one pod (its event and the reaper's resync) held there have both seen
    the step running, and go on to record it at the same moment: the race that the
    compare-and-set must settle. Later callers (the reaper keeping a log before it
    deletes a pod) pass at once; a caller left alone goes on after ``wait`` seconds.
    """

    def __init__(self, inner: Runtime, *, wait: float = 5.0) -> None:
        self.inner = inner
        self._wait = wait
        self._lock = threading.Lock()
        self._barriers: dict[str, threading.Barrier] = {}
        self._callers: dict[str, int] = {}
        #: Pods whose two finishers met at the log, and those whose first waited alone.
        self.met: list[str] = []
        self.alone: list[str] = []

    def logs(self, name: str) -> bytes:
        with self._lock:
            barrier = self._barriers.setdefault(name, threading.Barrier(2))
            self._callers[name] = self._callers.get(name, 0) + 1
            first_two = self._callers[name] <= 2
        if first_two:
            try:
                if barrier.wait(self._wait) == 0:
                    with self._lock:
                        self.met.append(name)
            except threading.BrokenBarrierError:
                with self._lock:
                    if name not in self.alone:
                        self.alone.append(name)
        return self.inner.logs(name)

    def launch(self, pod: V1Pod) -> None:
        self.inner.launch(pod)

    def read(self, name: str) -> PodDict | None:
        return self.inner.read(name)

    def list(self) -> list[PodDict]:
        return self.inner.list()

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
