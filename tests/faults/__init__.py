"""Fault injection for the fault, race and soak tests: wrappers of JetBridge's ports.

Nothing here patches JetBridge's code. Every fault comes in where the outside world
does in production:

* ``broker``: Knative's Broker, at least once for real: every event as many times as
  asked, in a shuffled order, redelivered after a 5xx or a crashed handler, and
  optionally over HTTP to the real functions-framework apps;
* ``ports``: a runtime and a sink that crash the handler at a chosen call (a process
  killed between two writes), and a runtime that holds two callers at one point so
  that they race;
* ``proxy``: a loopback TCP proxy in front of Postgres that a test cuts and restores
  (the database restarting under load);
* ``tmpfs``: a small file system mounted as the artifact store (the volume filling up);
* ``cluster``: the fake cluster with JetBridge over it, built from the above, and
  ``assert_settled``: the end state every fault test checks.
"""
