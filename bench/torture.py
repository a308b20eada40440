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

With --hostile, callers also meet what users and their systems do to
them: a stdout nobody reads for a while (a stalled reader), a stderr closed
before idem writes (`2>&1 | head -1`), random catchable signals at random
moments (forwarded to the child, or held until the record is safe), and
with --pidns each caller in its own PID namespace (containers sharing one
store file; needs root). Then it also checks that no record is left
`in_progress` by an iteration in which nobody was SIGKILLed, and an
operator's `idem purge --status crashed|in_progress` loops all along,
racing the runs: a purge may take a crashed run's record, never one that
completed (the key would run again without any crash).

Usage: bench/torture.py [--iterations N] [--callers N] [--idem PATH] [--db URL]
                        [--hostile] [--pidns]
Prints one summary line; exits 1 on any violation.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

# SIGPIPE ignored: when its idem is SIGKILLed, the child's output pipe has no
# reader, and the child must still reach `rmdir lock`.
CHILD = (
    "trap '' PIPE; trap 'rmdir lock; exit 1' INT TERM HUP QUIT USR1 USR2 ALRM; "
    'mkdir lock 2>/dev/null || echo overlap >> violations; '
    'echo "$IDEM_ATTEMPT" >> runs; sleep 0.0$((RANDOM % 5)); '
    'echo "out $IDEM_ATTEMPT"; rmdir lock'
)


def release_binary():
    """Where `cargo build --release` puts idem: .cargo/config.toml names the
    host's target triple, so the build lands in target/TRIPLE/release."""
    version = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True)
    host = next(line.split()[1] for line in version.stdout.splitlines()
                if line.startswith("host:"))
    return os.path.join("target", host, "release", "idem")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--idem", help="the idem binary (default: the release build, "
                        "target/HOST-TRIPLE/release/idem)")
    parser.add_argument("--db", help="store to use (default: a SQLite file in a temp dir; "
                        "a postgres:// or redis:// URL works too)")
    parser.add_argument("--hostile", action="store_true",
                        help="stalled readers, closed stderr, random catchable signals")
    parser.add_argument("--pidns", action="store_true",
                        help="each caller in its own PID namespace (unshare -p; root)")
    args = parser.parse_args()
    idem = os.path.abspath(args.idem or release_binary())
    violations = []
    kills = executions = signals_sent = 0
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="idem-torture-") as root:
        store = dict(os.environ, IDEM_DB=args.db or os.path.join(root, "store.db"))
        purging = purges_racing(idem, store) if args.hostile else None
        for i in range(args.iterations):
            work = os.path.join(root, str(i))
            os.mkdir(work)
            env = dict(os.environ, IDEM_DB=args.db or os.path.join(root, "store.db"))
            key = f"torture-{os.getpid()}-{i}"

            prefix = ["unshare", "-p", "-f", "--mount-proc"] if args.pidns else []

            def call(policy):
                closed_stderr = args.hostile and random.random() < 0.3
                proc = subprocess.Popen(
                    prefix + [idem, "run", "-k", key, "--on-duplicate", policy, "--",
                              "bash", "-c", CHILD],
                    cwd=work, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
                if closed_stderr:
                    proc.stderr.close()
                    proc.stderr = None
                return proc

            procs = [call(random.choice(["replay", "fail", "wait"]))
                     for _ in range(args.callers)]
            victims = random.sample(procs, random.randint(0, 2))
            signalled = set()
            time.sleep(random.random() * 0.05)
            for victim in victims:
                victim.send_signal(signal.SIGKILL)
            if args.hostile:
                for proc in random.sample(procs, random.randint(0, 3)):
                    if proc in victims:
                        continue
                    time.sleep(random.random() * 0.02)
                    proc.send_signal(random.choice(CATCHABLE))
                    signalled.add(proc)
                    signals_sent += 1
            killed = 0
            for proc in procs:
                if args.hostile and random.random() < 0.3:
                    time.sleep(random.random() * 0.05)  # a reader that stalls a while
                out, err = proc.communicate()
                err = (err or b"").decode(errors="replace").strip()
                if proc in victims and proc.returncode == -signal.SIGKILL:
                    killed += 1
                elif proc in signalled and (proc.returncode < 0 or proc.returncode > 128):
                    pass  # ended by the signal, after its record was safe
                elif signalled and proc.returncode > 128:
                    # A signal forwarded to the child before its trap was
                    # set killed the run; a waiter shares that result.
                    pass
                elif proc.returncode not in (0, 1, 75, 76):
                    violations.append(f"{key}: exit {proc.returncode}: {err}")
            kills += killed
            if killed == 0:
                shown = subprocess.run([idem, "inspect", "--json", key], env=env,
                                       capture_output=True)
                if shown.returncode == 0 and json.loads(shown.stdout)["status"] == "in_progress":
                    violations.append(f"{key}: left in_progress without any SIGKILL")
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
            if killed == 0 and not signalled and len(runs) != 1:
                violations.append(f"{key}: {len(runs)} executions without any crash")
        purges = purging.stop(violations) if purging else 0
    elapsed = time.time() - started
    print(f"{args.iterations} iterations, {args.callers} callers each, {kills} SIGKILLs, "
          f"{signals_sent} other signals, {purges} purges, {executions} executions, "
          f"{len(violations)} violations ({elapsed:.0f}s)")
    for v in violations[:20]:
        print("  " + v)
    sys.exit(1 if violations else 0)


# Signals a supervisor or a user may send; idem forwards the first seven
# and holds the others until its record is safe.
CATCHABLE = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM, signal.SIGQUIT, signal.SIGWINCH,
             signal.SIGPROF, signal.SIGXCPU]


class purges_racing:
    """An operator's purges by status, looping on the store while the
    callers run: `--status crashed` and `--status in_progress` (which
    skips live owners), each a failure only if purge itself fails."""

    def __init__(self, idem, env):
        self.done = threading.Event()
        self.count = 0
        self.failures = []
        self.thread = threading.Thread(target=self.loop, args=(idem, env), daemon=True)
        self.thread.start()

    def loop(self, idem, env):
        while not self.done.is_set():
            status = random.choice(["crashed", "in_progress"])
            purge = subprocess.run([idem, "-q", "purge", "--status", status], env=env,
                                   capture_output=True)
            self.count += 1
            if purge.returncode != 0:
                self.failures.append(f"purge --status {status}: exit {purge.returncode}: "
                                     f"{purge.stderr.decode(errors='replace').strip()}")
            time.sleep(random.random() * 0.01)

    def stop(self, violations):
        self.done.set()
        self.thread.join()
        violations.extend(self.failures)
        return self.count


def read_lines(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


if __name__ == "__main__":
    main()
