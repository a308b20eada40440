#!/usr/bin/env python3
"""Fill an idem SQLite store with COUNT completed records, for benchmarks.

Usage: bench/fill_store.py PATH COUNT [--expired]

PATH must be a store that `idem run` created (so the schema is idem's own).
The rows are written by SQLite itself in one transaction (a recursive CTE),
so a million records take seconds, not a million process runs. Each record
looks like a finished `true`: keys `fill-N` (N from the store's token
counter, so repeated fills never collide), a random fingerprint, a start
time spread over the last COUNT milliseconds, and no stored output.
--expired makes every record already expired (for `idem purge`).
"""

import argparse
import sqlite3
import sys
import time

APPLICATION_ID = 0x6964656D  # "idem"
DAY_MS = 86_400_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("count", type=int)
    parser.add_argument("--expired", action="store_true", help="records already expired")
    args = parser.parse_args()

    db = sqlite3.connect(args.path, isolation_level=None)
    app = db.execute("PRAGMA application_id").fetchone()[0]
    if app != APPLICATION_ID:
        print(f"{args.path}: not an idem store (run `idem run` on it once first)", file=sys.stderr)
        return 1
    # A benchmark fixture, not a record anyone relies on: no fsync per page.
    db.execute("PRAGMA synchronous = OFF")
    now = int(time.time() * 1000)
    db.execute("BEGIN IMMEDIATE")
    base = db.execute("SELECT value FROM counters WHERE name = 'token'").fetchone()[0]
    # started_at: the last COUNT ms, one record per ms, newest last.
    # expires_at: a day after finishing, or in the past with --expired.
    expires = "started_at_ - :count - 1" if args.expired else "started_at_ + 5 + :day"
    db.execute(
        f"""
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count),
        rows(i, started_at_) AS (SELECT i, :now - :count + i FROM n)
        INSERT INTO records (key, status, fingerprint, command, cwd, attempt, token,
            started_at, finished_at, expires_at, exit_code, owner_host, owner_boot,
            owner_pid, owner_start)
        SELECT printf('fill-%d', :base + i), 'completed', randomblob(32),
            CAST('true' AS BLOB), CAST('/' AS BLOB), 1, :base + i,
            started_at_, started_at_ + 5,
            {expires},
            0, 'bench', '', 1, 0
        FROM rows
        """,
        {"count": args.count, "now": now, "base": base, "day": DAY_MS},
    )
    db.execute("UPDATE counters SET value = value + ? WHERE name = 'token'", (args.count,))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
