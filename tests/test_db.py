"""The database layer's own behaviour: how a process's threads share SQLite."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import Engine, text

from shared import db
from shared.db import make_engine, make_session_factory, transaction


def held_elsewhere(lock: threading.RLock) -> bool:
    """Whether another thread holding ``lock`` now keeps this one out."""
    answer: list[bool] = []

    def probe() -> None:
        got = lock.acquire(blocking=False)
        if got:
            lock.release()
        answer.append(not got)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return answer[0]


def test_sqlite_transactions_of_one_process_take_turns_on_a_lock(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    sessions = make_session_factory(engine)
    lock = db._WRITE_LOCKS[engine]
    assert not held_elsewhere(lock)
    with transaction(sessions) as session:
        session.execute(text("SELECT 1"))
        # Another thread waits here, on the process's lock, not in SQLite's polling busy handler.
        assert held_elsewhere(lock)
    assert not held_elsewhere(lock)
    try:
        with transaction(sessions):
            raise RuntimeError("the transaction fails")
    except RuntimeError:
        pass
    assert not held_elsewhere(lock)  # a failed transaction gives its turn up too
    engine.dispose()


def test_a_server_database_takes_no_lock_of_the_process(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        assert engine in db._WRITE_LOCKS
    else:
        assert engine not in db._WRITE_LOCKS
