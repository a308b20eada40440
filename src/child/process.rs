//! What Rust's start-up code did for idem before `main`, and no more.
//!
//! idem's entry point is its own C `main` (see `src/main.rs`): Rust's
//! runtime start-up reads /proc/self/maps on Linux to place a guard for the
//! main thread's stack, which cost every call a sixth of a replay's
//! instructions. Of the rest of that start-up, idem needs two things, done
//! here first thing: SIGPIPE ignored (a closed reader is an error to handle,
//! never a reason to die; the child gets the default back, see `exec`), and
//! fds 0-2 open, on /dev/null if they were closed, so that no file idem opens
//! (the store) can become its stdout or stderr.

#![allow(unsafe_code)]

/// Called first thing by `main` (not in unit tests, which have their own).
#[cfg_attr(test, allow(dead_code))]
pub fn init() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler;
    // no other thread exists yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd for the whole call.
    let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) };
    let closed = |fd: &libc::pollfd| fd.revents & libc::POLLNVAL != 0;
    if polled < 0 || !fds.iter().any(closed) {
        return;
    }
    for fd in fds.iter().filter(|fd| closed(fd)) {
        // Without O_CLOEXEC, like the descriptor it stands for. The lowest
        // free descriptor is taken: the closed one, as they fill in order.
        // SAFETY: a NUL-terminated path and plain flags.
        let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if null != fd.fd {
            // Cannot happen short of fd exhaustion at start; Rust's own
            // start-up aborts here too.
            std::process::abort();
        }
    }
}
