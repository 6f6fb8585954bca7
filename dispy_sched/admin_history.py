"""`dispyadmin history`: CPU-hours per user from the accounting records, as sacct sums them.

Reads the `job_ends` table of the scheduler's state database (read-only, on
the scheduler host, while the scheduler runs: SQLite's WAL lets it), or of
the PostgreSQL state of schedulers started with `--state postgresql://...`.

    dispyadmin history [--user U] [--since 1d | --since 2026-11-01] [--state-dir DIR | --state URL] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import time
from dataclasses import asdict
from typing import Any

from dispy_wire.settings import parse_duration

from .accounting import UserTotal, history
from .config import default_state_dir
from .journal import FILENAME

#: where the shipped unit keeps its state (StateDirectory=dispyscheduler), tried after the default
SYSTEMD_STATE_DIR = "/var/lib/dispyscheduler"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "history", help="CPU-hours, jobs and peak memory per user over a period (from the accounting records)"
    )
    p.add_argument("--user", metavar="U", help="only this user")
    p.add_argument(
        "--since", default="1d", metavar="WHEN",
        help="jobs that ended since: a duration back from now (90m, 1d, 4w) or a date (2026-11-01) (default 1d)",
    )  # fmt: skip
    p.add_argument(
        "--state-dir", metavar="DIR",
        help=f"the scheduler's state directory (default: its own default, else {SYSTEMD_STATE_DIR})",
    )  # fmt: skip
    p.add_argument(
        "--state", metavar="URL",
        help="the schedulers' --state postgresql://... URL: read the records there instead of a state directory",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="a JSON list, one object per user")
    p.set_defaults(run=run)


def since_time(text: str, now: float) -> float:
    """Unix time of `--since`: now minus a duration, or midnight (local) of an ISO date, or an ISO time.

    Raises:
        ValueError: neither.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r} is neither a duration (1d, 12h) nor a date (2026-11-01)") from None


def database(state_dir: str | None) -> str:
    """The state database to read. Raises ValueError if there is none."""
    dirs = [state_dir] if state_dir else [default_state_dir(), SYSTEMD_STATE_DIR]
    for directory in dirs:
        path = os.path.join(directory, FILENAME)
        if os.path.exists(path):
            return path
    raise ValueError(f"no scheduler state database ({FILENAME}) in {' or '.join(dirs)}; give --state-dir")


def run(args: argparse.Namespace) -> int:
    now = time.time()
    since = since_time(args.since, now)
    totals = _from_postgresql(args.state, since, args.user) if args.state else _from_sqlite(args.state_dir, since, args.user)
    if args.json:
        print(json.dumps([asdict(t) for t in totals], indent=1))
    else:
        print(table(totals, since))
    return 0


def _from_sqlite(state_dir: str | None, since: float, user: str | None) -> list[UserTotal]:
    path = database(state_dir)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return history(db, since, user)
    except sqlite3.OperationalError as exc:  # a scheduler of before accounting: no table yet
        raise ValueError(f"cannot read the accounting records in {path}: {exc}") from None
    finally:
        db.close()


def _from_postgresql(dsn: str, since: float, user: str | None) -> list[UserTotal]:
    import psycopg  # only here: the PostgreSQL store is an optional dependency

    from .pg_store import connect, describe

    try:
        with connect(dsn, autocommit=True) as db:
            return history(db, since, user, mark="%s")
    except psycopg.Error as exc:  # unreachable, or a schema of before accounting there
        raise ValueError(f"cannot read the accounting records from the PostgreSQL state: {describe(exc)}") from None


def table(totals: list[UserTotal], since: float) -> str:
    start = dt.datetime.fromtimestamp(since).isoformat(" ", "seconds")
    head = ("USER", "JOBS", "FINISHED", "FAILED", "CANCELLED", "CPU-HOURS", "RUN-HOURS", "MAX-RSS")
    rows = [
        (t.user, str(t.jobs), str(t.finished), str(t.failed), str(t.cancelled), f"{t.cpu_hours:.3f}",
         f"{t.wall_hours:.3f}", f"{t.max_rss / (1 << 20):.1f} MiB" if t.max_rss else "-")
        for t in totals
    ]  # fmt: skip
    if len(totals) > 1:
        rows.append(
            ("total", str(sum(t.jobs for t in totals)), str(sum(t.finished for t in totals)),
             str(sum(t.failed for t in totals)), str(sum(t.cancelled for t in totals)),
             f"{sum(t.cpu_hours for t in totals):.3f}", f"{sum(t.wall_hours for t in totals):.3f}", "")
        )  # fmt: skip
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = [f"jobs that ended since {start}"]
    for row in (head, *rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if not totals:
        lines.append("(none)")
    return "\n".join(lines)
