"""The chat's history in SQLite, written by one thread so the engine never waits for the disk.

Why this exists: a chat message that was acknowledged to its sender must survive a restart. The
engine thread must not block on ``fsync`` though (it serves every client). So:

- the engine thread assigns the room's next sequence number and hands the message to
  :meth:`SqliteStore.append` (a queue put, microseconds);
- one writer thread takes *everything* queued, inserts it in one transaction and commits (one
  fsync for the whole batch: under load, batches grow and the cost per message falls);
- then it posts the completion back onto the engine (``post`` = ``Server.call_soon_threadsafe``),
  where the hub fans the messages out - the sender's own copy is its acknowledgement.

Reads (history, catch-up) use a second connection on the engine thread: with WAL journaling readers
never wait for the writer, and an indexed read of a few hundred rows takes well under a millisecond.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from socklab.protocols.chat import Message

__all__ = ["RoomState", "SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL, nick TEXT NOT NULL,
    text TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'say', PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topics (room TEXT PRIMARY KEY, nick TEXT NOT NULL, text TEXT NOT NULL);
"""

Done = Callable[[BaseException | None], None]


def _complete(callbacks: list[Done], error: BaseException | None, after: Callable[[], None] | None) -> None:
    for cb in callbacks:
        cb(error)
    if after is not None:
        after()


@dataclass
class RoomState:
    """What the store knows about a room at start-up."""

    seq: int = 0
    topic: str = ""
    topic_by: str = ""


class SqliteStore:
    """History of every room in one SQLite file.

    Args:
        path: the database file (created with its directory), or ``":memory:"``.
        post: runs a callable on the engine thread (``Server.call_soon_threadsafe``).
        sync: SQLite ``synchronous`` mode, ``"full"`` (fsync each commit) or ``"normal"``.
        after_batch: called on the engine thread after the completions of one committed batch (the
            hub delivers the batch's messages together: one write per client for several messages).
    """

    def __init__(self, path: str, post: Callable[[Callable[[], None]], None], sync: str = "full",
                 after_batch: Callable[[], None] | None = None) -> None:
        self.path = path
        self.post = post
        self.after_batch = after_batch
        self.memory = path == ":memory:"
        if self.memory:
            # one shared in-memory database per store, reachable from both threads
            self._uri = f"file:socklab-chat-{id(self)}?mode=memory&cache=shared"
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._uri = Path(os.path.abspath(path)).as_uri()
        self._writer = self._connect(sync)
        self._writer.executescript(_SCHEMA)
        self._reader = self._connect(sync)
        self._queue: queue.SimpleQueue[tuple[str, tuple[object, ...], Done | None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="socklab-chat-store", daemon=True)
        self.batches = 0
        self.written = 0
        self._closed = False
        self._thread.start()

    def _connect(self, sync: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False, isolation_level=None)
        if not self.memory:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    # ---- start-up --------------------------------------------------------------------------------
    def load(self) -> dict[str, RoomState]:
        """Every room with history or a topic, with its last sequence number."""
        rooms: dict[str, RoomState] = {}
        for room, seq in self._reader.execute("SELECT room, MAX(seq) FROM messages GROUP BY room"):
            rooms[room] = RoomState(seq=int(seq))
        for room, nick, text in self._reader.execute("SELECT room, nick, text FROM topics"):
            st = rooms.setdefault(room, RoomState())
            st.topic, st.topic_by = text, nick
        return rooms

    # ---- writing (engine thread enqueues, writer thread commits) ----------------------------------
    def append(self, msg: Message, done: Done) -> None:
        """Store ``msg`` durably, then call ``done(None)`` (or ``done(exc)``) on the engine thread."""
        self._queue.put(("INSERT INTO messages (room, seq, ts, nick, text, kind) VALUES (?, ?, ?, ?, ?, ?)",
                         (msg.room, msg.seq, msg.ts, msg.nick, msg.text, msg.kind), done))

    def set_topic(self, room: str, nick: str, text: str) -> None:
        """Remember a room's topic (fire and forget)."""
        self._queue.put(("INSERT OR REPLACE INTO topics (room, nick, text) VALUES (?, ?, ?)",
                         (room, nick, text), None))

    def _write_loop(self) -> None:
        conn = self._writer
        while True:
            item = self._queue.get()
            batch = [item]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 5000:
                    batch.append(self._queue.get_nowait())
            stop = None in batch
            work = [b for b in batch if b is not None]
            error: BaseException | None = None
            if work:
                try:
                    conn.execute("BEGIN")
                    for sql, args, _ in work:
                        conn.execute(sql, args)
                    conn.execute("COMMIT")
                    self.batches += 1
                    self.written += len(work)
                except sqlite3.Error as exc:
                    error = exc
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                callbacks = [d for _, _, d in work if d is not None]
                if callbacks:
                    self.post(functools.partial(_complete, callbacks, error, self.after_batch))
            if stop:
                return

    # ---- reading (engine thread) -----------------------------------------------------------------
    def recent(self, room: str, limit: int) -> list[Message]:
        """The last ``limit`` messages of ``room``, oldest first."""
        rows = self._reader.execute(
            "SELECT room, seq, ts, nick, text, kind FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?",
            (room, limit)).fetchall()
        return [Message(r[0], int(r[1]), float(r[2]), r[3], r[4], r[5]) for r in reversed(rows)]

    def after(self, room: str, seq: int, limit: int) -> list[Message]:
        """Messages of ``room`` with a sequence number above ``seq``, oldest first, at most ``limit``."""
        rows = self._reader.execute(
            "SELECT room, seq, ts, nick, text, kind FROM messages WHERE room = ? AND seq > ? ORDER BY seq "
            "LIMIT ?", (room, seq, limit)).fetchall()
        return [Message(r[0], int(r[1]), float(r[2]), r[3], r[4], r[5]) for r in rows]

    def close(self) -> None:
        """Write what is queued, stop the writer thread, close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._reader.close()
        self._writer.close()
