"""Per-user decayed usage on disk, so fair share remembers across restarts.

A scheduler restarted after a big batch must not forget who ran it: the
shell loads this table into the core at start (`UsageRestored`) and saves
the core's `usage_snapshot()` periodically and on shutdown. One SQLite file
in the state directory (stdlib `sqlite3`, WAL, one transaction per save);
the state directory's lock makes this process its only writer. Rows hold
the usage as of a time, so the decay while the scheduler was down is
applied when the core loads them.
"""

from __future__ import annotations

import os
import sqlite3

FILENAME = "usage.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_usage (
    user TEXT PRIMARY KEY,
    cpu_seconds REAL NOT NULL,  -- decayed CPU-seconds ...
    as_of REAL NOT NULL         -- ... as of this Unix time
)
"""


class UsageStore:
    """The `user_usage` table of `<state_dir>/usage.sqlite3`.

    Raises:
        sqlite3.Error: from the constructor, if the file cannot be opened or
            is not a database.
    """

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, FILENAME)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def load(self) -> dict[str, tuple[float, float]]:
        """user -> (CPU-seconds, as of)."""
        rows = self._db.execute("SELECT user, cpu_seconds, as_of FROM user_usage")
        return {user: (float(usage), float(as_of)) for user, usage, as_of in rows}

    def save(self, usage: dict[str, tuple[float, float]]) -> None:
        """Writes every given user's row in one transaction (others are kept)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO user_usage (user, cpu_seconds, as_of) VALUES (?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET cpu_seconds = excluded.cpu_seconds, as_of = excluded.as_of",
                [(user, u, t) for user, (u, t) in usage.items()],
            )

    def close(self) -> None:
        self._db.close()
