#!/usr/bin/env python3
"""Fill an idem SQLite store with COUNT completed records, fast.

For benchmarks of `idem inspect` and `idem purge`. The store must exist
already (idem owns the schema), so create it once first:

    idem --db /tmp/big.db run -k seed -- true
    python3 bench/fill_store.py /tmp/big.db 1000000 [--expired]

Records are `fill-N`, completed with exit 0, a small stdout, started one
second apart (newest first is fill-0). They expire in a day, or with
--expired an hour ago. Tokens continue the store's counter, so later
claims stay unique.
"""

import argparse
import os
import sqlite3
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="an existing idem store (run `idem run` once to create it)")
    parser.add_argument("count", type=int, help="how many records to add")
    parser.add_argument("--expired", action="store_true", help="make them all expired")
    args = parser.parse_args()
    if not os.path.isfile(args.path):
        sys.exit(f"fill_store: {args.path} does not exist; create it with `idem --db {args.path} run -k seed -- true`")

    db = sqlite3.connect(args.path, isolation_level=None)
    (app,) = db.execute("PRAGMA application_id").fetchone()
    if app != 0x6964656D:
        sys.exit(f"fill_store: {args.path} is not an idem store")
    db.execute("PRAGMA synchronous = OFF")
    host = os.uname().nodename
    now = int(time.time() * 1000)
    expires = now - 3_600_000 if args.expired else now + 86_400_000
    db.execute("BEGIN IMMEDIATE")
    (token,) = db.execute("SELECT value FROM counters WHERE name = 'token'").fetchone()

    def rows():
        for i in range(args.count):
            started = now - 7_200_000 - i * 1000
            yield (
                f"fill-{i}",
                os.urandom(32),
                f"sh\0-c\0echo {i}".encode(),
                b"/tmp",
                token + 1 + i,
                started,
                started + 250,
                expires,
                host,
                f"fill {i}\n".encode(),
            )

    db.executemany(
        """INSERT INTO records (key, status, fingerprint, command, cwd, attempt, token,
               started_at, finished_at, expires_at, exit_code, owner_host, owner_boot,
               owner_pid, owner_start, stdout)
           VALUES (?1, 'completed', ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, 0, ?9, 'fill', 1, 0, ?10)""",
        rows(),
    )
    db.execute("UPDATE counters SET value = ? WHERE name = 'token'", (token + args.count,))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


if __name__ == "__main__":
    main()
