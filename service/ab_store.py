"""The A/B experiment's record: every request served through an arm, and the rewards clients
send for them, in SQLite (one process) or PostgreSQL (several replicas), from one URL
(``MACHADO_AB_STORE``: ``sqlite:///data/ab.db``, ``sqlite:///:memory:``,
``postgresql://user:password@host/db``).

Assignments are written by a thread of their own, in batches, so a request never waits for the
database; a clean shutdown writes what is left. A reward is written at once (its client waits
for the answer: 404, 409 or 200), after looking its request up, here or, behind a balancer, in
what another replica wrote.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("service.ab_store")

# How long a writer batch collects assignments, how long a reward's lookup waits for an
# assignment that another replica may not have written yet, and how long a service waits at start
# for a database server that is starting beside it (compose starts them together).
BATCH_SECONDS = 0.05
LOOKUP_WAIT_S = 1.0
CONNECT_WAIT_S = 60.0

# A client may send its own X-Request-Id, and send one twice: each answer is a row of its own
# (record_id), and a reward goes to the latest answer with its request id.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ab_assignments (
        record_id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        arm TEXT NOT NULL,
        client TEXT,
        at DOUBLE PRECISION NOT NULL,
        endpoint TEXT NOT NULL,
        outcome TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION,
        bpc DOUBLE PRECISION,
        prompt TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS ab_assignments_at ON ab_assignments (at)",
    "CREATE INDEX IF NOT EXISTS ab_assignments_request ON ab_assignments (request_id)",
    """CREATE TABLE IF NOT EXISTS ab_rewards (
        record_id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        reward DOUBLE PRECISION NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
)


@dataclass(frozen=True)
class Assignment:
    """One request served through an arm."""

    request_id: str
    arm: str
    client: str | None  # a hash of the client's id, never the id itself
    at: float  # unix seconds
    endpoint: str
    outcome: str  # ok, error or abandoned
    tokens: int
    latency_ms: float | None  # none for an abandoned request
    bpc: float | None  # bits per character of a text it scored
    prompt: str | None  # only with MACHADO_AB_STORE_PROMPTS


COLUMNS = [f.name for f in fields(Assignment)]
Outcome = Literal["recorded", "unknown", "expired", "duplicate"]


class Store:
    """One experiment record, shared by the threads of a process (and by processes)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self.kind, self.mark = "sqlite", "?"
            path = url.removeprefix("sqlite:///")
            self._memory = path == ":memory:"
            if not self._memory:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._path = path
        elif url.startswith(("postgresql://", "postgres://")):
            self.kind, self.mark, self._memory = "postgresql", "%s", False
        else:
            raise ValueError(
                f"the A/B store must be a sqlite:///PATH or postgresql:// URL, not {url[:40]!r}"
            )
        # One connection per thread that uses it; SQLite in memory has one for all (a second
        # connection would see another, empty database), under the lock.
        self._local = threading.local()
        self._shared = self._connect() if self._memory else None
        self._lock = threading.Lock()
        with self._cursor() as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)
        self._queue: queue.Queue[Assignment | None] = queue.Queue()
        self._pending: dict[str, int] = {}  # request ids recorded, not yet written
        self._pending_lock = threading.Lock()
        self._writer = threading.Thread(target=self._write_batches, name="ab-store", daemon=True)
        self._writer.start()

    # Connections ----------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self.kind == "sqlite":
            connection = sqlite3.connect(
                self._path, timeout=10, check_same_thread=False, isolation_level=None
            )
            if not self._memory:  # readers and the writer of several processes side by side
                connection.execute("PRAGMA journal_mode=WAL")
            return connection
        import psycopg  # only where a PostgreSQL store is asked for

        give_up = time.monotonic() + CONNECT_WAIT_S
        while True:
            try:
                return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.OperationalError as error:
                if time.monotonic() >= give_up:
                    raise
                log.warning(f"A/B store: PostgreSQL not reachable yet, retrying: {error}")
                time.sleep(1.0)

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor of this thread's connection, in one transaction."""
        if self._shared is not None:
            with self._lock:
                yield from self._transaction(self._shared)
            return
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        yield from self._transaction(connection)

    def _transaction(self, connection: Any) -> Iterator[Any]:
        cursor = connection.cursor()
        cursor.execute("BEGIN")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        cursor.execute("COMMIT")

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.mark)

    # Writing ---------------------------------------------------------------------------------
    def record(self, assignment: Assignment) -> None:
        """Queues ``assignment`` for the writer thread: returns at once."""
        with self._pending_lock:
            self._pending[assignment.request_id] = self._pending.get(assignment.request_id, 0) + 1
        self._queue.put(assignment)

    def _write_batches(self) -> None:
        insert = self._sql(
            f"INSERT INTO ab_assignments (record_id, {', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
        )
        done = False
        while not done:
            batch = [self._queue.get()]
            deadline = time.monotonic() + BATCH_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            done = None in batch
            rows = [(uuid.uuid4().hex, *astuple(a)) for a in batch if a is not None]
            if rows:
                try:
                    with self._cursor() as cursor:
                        cursor.executemany(insert, rows)
                except Exception as error:  # the record loses this batch; the service goes on
                    log.error(f"A/B store: {len(rows)} assignments not written: {error}")
            with self._pending_lock:
                for row in rows:
                    left = self._pending.pop(row[1], 1) - 1
                    if left:
                        self._pending[row[1]] = left
            for _ in batch:
                self._queue.task_done()

    def flush(self) -> None:
        """Blocks until every assignment recorded so far is written."""
        self._queue.join()

    def close(self) -> None:
        """Writes what is queued, then stops the writer (a clean shutdown loses nothing)."""
        self._queue.put(None)
        self._writer.join(timeout=30)
        for connection in (self._shared, getattr(self._local, "connection", None)):
            if connection is not None:
                connection.close()

    def reward(self, request_id: str, reward: float, max_age_s: float) -> Outcome:
        """Records the reward of ``request_id`` once: 'unknown' when no arm served it (after
        waiting LOOKUP_WAIT_S for another replica's writer), 'expired' when it was served more
        than ``max_age_s`` ago, 'duplicate' when it already has one."""
        with self._pending_lock:
            pending = request_id in self._pending
        if pending:
            self.flush()
        served = self._latest(request_id)
        waited_until = time.monotonic() + LOOKUP_WAIT_S
        while served is None and time.monotonic() < waited_until:
            time.sleep(BATCH_SECONDS)
            served = self._latest(request_id)
        if served is None:
            return "unknown"
        record_id, served_at = served
        now = time.time()
        if now - served_at > max_age_s:
            return "expired"
        insert = self._sql(
            "INSERT INTO ab_rewards (record_id, request_id, reward, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (record_id) DO NOTHING"
        )
        with self._cursor() as cursor:
            cursor.execute(insert, (record_id, request_id, reward, now))
            written = cursor.rowcount
        return "recorded" if written == 1 else "duplicate"

    def _latest(self, request_id: str) -> tuple[str, float] | None:
        """The record id and time of the latest answer with ``request_id``."""
        with self._cursor() as cursor:
            cursor.execute(
                self._sql(
                    "SELECT record_id, at FROM ab_assignments WHERE request_id = ? "
                    "ORDER BY at DESC LIMIT 1"
                ),
                (request_id,),
            )
            row = cursor.fetchone()
        return None if row is None else (row[0], float(row[1]))

    # Reading ---------------------------------------------------------------------------------
    def rows(self, since: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Every assignment since ``since`` (unix seconds), oldest first, with its reward."""
        self.flush()
        statement = (
            f"SELECT {', '.join('a.' + c for c in COLUMNS)}, r.reward FROM ab_assignments a "
            "LEFT JOIN ab_rewards r ON r.record_id = a.record_id WHERE a.at >= ? "
            "ORDER BY a.at, a.record_id"
        )
        if limit is not None:
            statement += f" LIMIT {int(limit)}"
        with self._cursor() as cursor:
            cursor.execute(self._sql(statement), (since or 0.0,))
            found = cursor.fetchall()
        return [dict(zip([*COLUMNS, "reward"], row, strict=True)) for row in found]
