//! The start of the small Python programs that drive an interactive shell
//! on a pseudo-terminal (`pty.fork`), as a user at a keyboard would: the
//! job-control and completion tests append what they type and wait for.

/// Defines `start(argv)`, which runs argv on a new pty (its fd in `fd`),
/// and `until(token)`, which waits at most 20 s for `token` and returns all
/// that came up to it; later calls see only what followed. On a timeout it
/// prints the whole transcript and exits 1; `transcript()` is all seen.
pub const DRIVER: &str = r#"
import os, pty, select, subprocess, sys, time
fd, done, seen = None, b"", b""
def start(argv):
    global fd
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
def transcript():
    return (done + seen).decode(errors="replace")
def until(token):
    global done, seen
    deadline = time.time() + 20
    while token.encode() not in seen:
        if time.time() > deadline:
            sys.stdout.write(transcript())
            sys.stdout.write("\nTIMEOUT waiting for %r\n" % token)
            sys.exit(1)
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                sys.stdout.write(transcript())
                sys.stdout.write("\nEOF waiting for %r\n" % token)
                sys.exit(1)
    end = seen.index(token.encode()) + len(token)
    got, seen = seen[:end], seen[end:]
    done += got
    return got.decode(errors="replace")
"#;
