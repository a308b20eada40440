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

With --partition postgres|redis (root; ip, nft, and the server's Debian
binaries), it runs a private server in a network namespace of its own and
cuts and heals the callers' links at random instead (see partition()).

Usage: bench/torture.py [--iterations N] [--callers N] [--idem PATH] [--db URL]
                        [--hostile] [--pidns]
       bench/torture.py --partition postgres|redis [--iterations N] [--callers N]
                        [--keys N] [--lease DURATION] [--idem PATH]
Prints one summary line; exits 1 on any violation.
"""
import argparse
import json
import os
import random
import shutil
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
    add_partition_arguments(parser)
    args = parser.parse_args()
    idem = os.path.abspath(args.idem or release_binary())
    if args.partition:
        sys.exit(partition(args, idem))
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


# --- --partition: callers on two sides of a network that splits ----------
#
# One network namespace made for the run holds a private PostgreSQL or Redis
# listening on 127.0.0.1-3; callers on hosts of their own (UTS namespaces)
# reach it at 127.0.0.2 (even callers) or 127.0.0.3 (odd ones). Each
# iteration starts the callers on a few fresh keys, staggered, and meanwhile
# cuts one side or the other (nftables drops every packet to or from its
# address) for a random time, shorter or longer than the lease, and heals
# it. Each execution logs `start PID TIME` / `end PID TIME` per key and, as
# it starts, whether an earlier execution's process group is still alive:
# the check is that no two executions of a key ever overlap. Every address
# is loopback, inside the namespace; everything goes with it at the end.

PARTITION_CHILD = r"""
trap '' PIPE
log="$TORTURE_LOGS/$IDEM_KEY"
touch "$log"
for p in $(sed -n 's/^start \([0-9]*\) .*/\1/p' "$log"); do
  grep -q "^end $p " "$log" && continue
  cat /proc/[0-9]*/stat 2>/dev/null |
    awk -v g="$p" '{ sub(/^.*\) /, ""); if ($3 == g && $1 != "Z") f = 1 } END { exit !f }' &&
    echo "overlap $$ $p" >> "$log"
done
echo "start $$ $(date +%s.%N)" >> "$log"
sleep "$TORTURE_SLEEP"
echo "end $$ $(date +%s.%N)" >> "$log"
"""

SIDES = ["127.0.0.2", "127.0.0.3"]


def add_partition_arguments(parser):
    parser.add_argument("--partition", choices=["postgres", "redis"],
                        help="cut and heal callers' links to a private server at random "
                             "(root, ip, nft)")
    parser.add_argument("--keys", type=int, default=3,
                        help="--partition: keys per iteration, shared by the callers")
    parser.add_argument("--lease", default="2s", help="--partition: the callers' --lease")


class Network:
    """A namespace with the store server in it; `close` removes it all."""

    def __init__(self, server, root):
        self.name = f"idem-torture-{os.getpid()}"
        self.server, self.root = server, root
        self.data = os.path.join(root, "server")
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.sh(["ip", "link", "set", "lo", "up"])
        self.sh(["nft", "add", "table", "inet", "idem"])
        self.sh(["nft", "add", "chain", "inet", "idem", "out",
                 "{ type filter hook output priority 0; policy accept; }"])
        os.chmod(root, 0o755)
        if server == "postgres":
            self.start_postgres()
        else:
            self.start_redis()

    def inside(self, argv):
        return ["ip", "netns", "exec", self.name] + argv

    def sh(self, argv):
        subprocess.run(self.inside(argv), check=True, stdout=subprocess.DEVNULL)

    def start_postgres(self):
        pg = os.path.join("/usr/lib/postgresql",
                          max(os.listdir("/usr/lib/postgresql"), key=int), "bin")
        os.mkdir(self.data)
        shutil.chown(self.data, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(as_postgres + [f"{pg}/initdb", "-A", "trust", "-U", "postgres",
                                      "--no-sync", "-D", self.data],
                       check=True, stdout=subprocess.DEVNULL)
        self.pg_ctl = as_postgres + [f"{pg}/pg_ctl", "-D", self.data]
        self.sh(self.pg_ctl + ["-w", "-l", os.path.join(self.data, "log"), "-o",
                               "-c listen_addresses=127.0.0.1,127.0.0.2,127.0.0.3 -p 5432 "
                               "-c unix_socket_directories= -c fsync=off "
                               "-c max_connections=300", "start"])

    def start_redis(self):
        os.mkdir(self.data)
        subprocess.Popen(self.inside(["redis-server", "--bind", "127.0.0.1 127.0.0.2 127.0.0.3",
                                      "--port", "6379", "--save", "", "--appendonly", "no",
                                      "--dir", self.data]), stdout=subprocess.DEVNULL)
        for _ in range(500):
            ping = subprocess.run(self.inside(["redis-cli", "-h", "127.0.0.1", "ping"]),
                                  capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.02)
        raise SystemExit("redis-server did not answer")

    def url(self, side):
        if self.server == "postgres":
            return f"postgres://postgres@{side}:5432/postgres?table=torture"
        return f"redis://{side}:6379/0?prefix=torture:"

    def cut(self, side):
        for direction in ["daddr", "saddr"]:
            self.sh(["nft", "add", "rule", "inet", "idem", "out", "ip", direction, side, "drop"])

    def heal(self):
        self.sh(["nft", "flush", "chain", "inet", "idem", "out"])

    def close(self):
        if self.server == "postgres":
            subprocess.run(self.inside(self.pg_ctl + ["-m", "immediate", "stop"]),
                           capture_output=True)
        for _ in range(500):
            pids = subprocess.run(["ip", "netns", "pids", self.name],
                                  capture_output=True, text=True).stdout.split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def seconds(duration):
    """`2s`, `1500ms`: what --lease takes, in seconds."""
    if duration.endswith("ms"):
        return int(duration[:-2]) / 1000
    return float(duration.rstrip("s"))


def overlaps(log):
    """The overlaps one key's log shows: an execution that found another's
    group alive when it started, or two logged runs whose times intersect."""
    lines = read_lines(log)
    found = [line for line in lines if line.startswith("overlap ")]
    times = {}
    for line in lines:
        kind, pid, *rest = line.split()
        if kind in ("start", "end") and rest:
            times.setdefault(pid, {})[kind] = float(rest[0])
    runs = sorted((t["start"], t["end"]) for t in times.values() if len(t) == 2)
    found += [f"runs {a} and {b} intersect" for a, b in zip(runs, runs[1:]) if b[0] < a[1]]
    return found


def partition(args, idem):
    lease = seconds(args.lease)
    violations, executions, cuts, stopped = [], 0, 0, 0
    exits = {}
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="idem-torture-") as root:
        net = Network(args.partition, root)
        try:
            for i in range(args.iterations):
                logs = os.path.join(root, str(i))
                os.mkdir(logs)
                keys = [f"p{i}-{k}" for k in range(args.keys)]
                # (when, what): staggered callers, then cuts and heals.
                plan = [(random.uniform(0, 1.0), "call", j) for j in range(args.callers)]
                for _ in range(random.randint(1, 3)):
                    at = random.uniform(0, 2.5)
                    plan.append((at, "cut", random.choice(SIDES)))
                    plan.append((at + random.uniform(0.2, 2.5 * lease), "heal", None))
                plan.sort(key=lambda event: event[0])
                procs, begin = [], time.time()
                deadline = begin + 120
                while time.time() < deadline and (plan or any(p.poll() is None for p in procs)):
                    while plan and plan[0][0] <= time.time() - begin:
                        _, what, which = plan.pop(0)
                        if what == "call":
                            side = SIDES[which % 2]
                            env = dict(os.environ, IDEM_DB=net.url(side), TORTURE_LOGS=logs,
                                       TORTURE_SLEEP=f"{random.uniform(0.05, 2 * lease):.2f}")
                            procs.append(subprocess.Popen(
                                net.inside(["unshare", "--uts", "sh", "-c",
                                            'hostname "$0" && exec "$@"', f"h{which}", idem,
                                            "run", "-k", random.choice(keys), "--lease",
                                            args.lease, "--on-duplicate", "wait",
                                            "--wait-timeout", "60s", "--",
                                            "sh", "-c", PARTITION_CHILD]),
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL))
                        elif what == "cut":
                            net.cut(which)
                            cuts += 1
                        else:
                            net.heal()
                    time.sleep(0.02)
                net.heal()
                for proc in procs:
                    if proc.poll() is None:
                        violations.append(f"iteration {i}: a caller still ran after 120 s")
                        proc.kill()
                    proc.wait()
                    exits[proc.returncode] = exits.get(proc.returncode, 0) + 1
                    stopped += proc.returncode == 125
                for key in keys:
                    log = os.path.join(logs, key)
                    executions += sum(1 for line in read_lines(log) if line.startswith("start "))
                    found = overlaps(log)
                    if found:
                        violations.append(f"{key}: " + "; ".join(found))
        finally:
            net.close()
    elapsed = time.time() - started
    codes = ", ".join(f"{code}: {n}" for code, n in sorted(exits.items()))
    print(f"{args.iterations} iterations on {args.partition}, {args.callers} callers on "
          f"{args.keys} keys each, --lease {args.lease}, {cuts} cuts, {executions} executions, "
          f"{stopped} exits 125, exits {{{codes}}}, {len(violations)} violations "
          f"({elapsed:.0f}s)")
    for v in violations[:20]:
        print("  " + v)
    return 1 if violations else 0


if __name__ == "__main__":
    main()
