#!/usr/bin/env python3
"""Torture idem: races plus random SIGKILLs, checking at-most-once.

Each iteration starts CALLERS `idem run` processes on one fresh key with
random --on-duplicate policies, SIGKILLs a random few of them (idem alone,
leaving any child orphaned) at random moments, waits for everyone, then
makes one last clean call. It checks:

  * never two concurrent executions (the child takes a mkdir lock);
  * with no kill in the iteration, exactly one execution;
  * never a lost record: after the last clean call the record is completed
    and replays the output of an execution that really happened.

Usage: bench/torture.py [--iterations N] [--callers N] [--idem PATH] [--db URL]
Prints one summary line; exits 1 on any violation.
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

# SIGPIPE ignored: when its idem is SIGKILLed, the child's output pipe has no
# reader, and the child must still reach `rmdir lock`.
CHILD = (
    "trap '' PIPE; "
    'mkdir lock 2>/dev/null || echo overlap >> violations; '
    'echo "$IDEM_ATTEMPT" >> runs; sleep 0.0$((RANDOM % 5)); '
    'echo "out $IDEM_ATTEMPT"; rmdir lock'
)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--idem", default="target/release/idem")
    parser.add_argument("--db", help="store to use (default: a SQLite file in a temp dir; "
                        "a postgres:// or redis:// URL works too)")
    args = parser.parse_args()
    idem = os.path.abspath(args.idem)
    violations = []
    kills = executions = 0
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="idem-torture-") as root:
        for i in range(args.iterations):
            work = os.path.join(root, str(i))
            os.mkdir(work)
            env = dict(os.environ, IDEM_DB=args.db or os.path.join(root, "store.db"))
            key = f"torture-{os.getpid()}-{i}"

            def call(policy):
                return subprocess.Popen(
                    [idem, "run", "-k", key, "--on-duplicate", policy, "--",
                     "bash", "-c", CHILD],
                    cwd=work, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)

            procs = [call(random.choice(["replay", "fail", "wait"]))
                     for _ in range(args.callers)]
            victims = random.sample(procs, random.randint(0, 2))
            time.sleep(random.random() * 0.05)
            for victim in victims:
                victim.send_signal(signal.SIGKILL)
            killed = 0
            for proc in procs:
                out, err = proc.communicate()
                if proc in victims and proc.returncode == -signal.SIGKILL:
                    killed += 1
                elif proc.returncode not in (0, 75, 76):
                    violations.append(f"{key}: exit {proc.returncode}: {err.decode(errors='replace').strip()}")
            kills += killed
            # Orphaned children may still run: the last call waits for them.
            final = subprocess.run(
                [idem, "run", "-k", key, "--on-duplicate", "wait", "--", "bash", "-c", CHILD],
                cwd=work, env=env, capture_output=True)
            runs = read_lines(os.path.join(work, "runs"))
            executions += len(runs)
            if os.path.exists(os.path.join(work, "violations")):
                violations.append(f"{key}: two executions overlapped")
            if final.returncode != 0:
                violations.append(f"{key}: final call exit {final.returncode}: {final.stderr.decode(errors='replace').strip()}")
            elif final.stdout.decode().strip() not in {f"out {a}" for a in runs}:
                violations.append(f"{key}: record replays {final.stdout!r}, runs were {runs}")
            if killed == 0 and len(runs) != 1:
                violations.append(f"{key}: {len(runs)} executions without any crash")
    elapsed = time.time() - started
    print(f"{args.iterations} iterations, {args.callers} callers each, {kills} SIGKILLs, "
          f"{executions} executions, {len(violations)} violations ({elapsed:.0f}s)")
    for v in violations[:20]:
        print("  " + v)
    sys.exit(1 if violations else 0)


def read_lines(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    main()
