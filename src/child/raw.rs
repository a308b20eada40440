//! System calls that leave `errno` alone, for the child between its start
//! and its exec.
//!
//! That child shares idem's memory (`exec`: started with `CLONE_VM`, as
//! `posix_spawn(3)` starts one, so no page tables are copied for it and
//! torn down again at its exec), idem's thread-local `errno` included:
//! libc's wrappers would write a failed call's error there, under the feet
//! of idem's own code. These make the call directly and return what the
//! kernel returned, a negative errno on failure. Elsewhere than x86_64 (the
//! only architecture this is tested on) the child is forked, its memory its
//! own, and libc's generic `syscall(2)` serves.

#![allow(unsafe_code)]

use libc::{c_char, c_int, c_long};

/// Makes system call `number` with `args`; the kernel's return value.
///
/// # Safety
/// As for the system call itself: pointers in `args` must be valid for it.
#[cfg(target_arch = "x86_64")]
unsafe fn call(number: c_long, args: [usize; 4]) -> isize {
    let ret: isize;
    // SAFETY: the Linux x86_64 system call convention; the kernel clobbers
    // rcx and r11 only. The caller vouches for the arguments.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn call(number: c_long, args: [usize; 4]) -> isize {
    // SAFETY: the caller vouches for the arguments; this child was forked,
    // so the errno written here is its own.
    let ret = unsafe { libc::syscall(number, args[0], args[1], args[2], args[3]) };
    if ret == -1 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as isize)
    } else {
        ret as isize
    }
}

/// `setpgid(0, 0)`: a process group of its own.
pub fn own_process_group() {
    // SAFETY: no pointers.
    unsafe { call(libc::SYS_setpgid, [0, 0, 0, 0]) };
}

/// Unblocks every signal, and gives SIGPIPE its default action (idem
/// ignores it, and an ignored disposition would survive exec).
pub fn default_signals() {
    // The kernel's sigset (8 bytes) and sigaction; all zero is an empty
    // mask and SIG_DFL without flags, whatever the architecture's layout.
    let none = [0u64; 4];
    let ptr = none.as_ptr() as usize;
    // SAFETY: `none` outlives both calls and is larger than either struct.
    unsafe {
        call(
            libc::SYS_rt_sigprocmask,
            [libc::SIG_SETMASK as usize, ptr, 0, 8],
        );
        call(libc::SYS_rt_sigaction, [libc::SIGPIPE as usize, ptr, 0, 8]);
    }
}

/// `dup3(from, to, 0)`: `to` becomes `from` (the two differ: idem's 0, 1
/// and 2 are always open, so its pipes and files are never those).
pub fn move_fd(from: c_int, to: c_int) {
    // SAFETY: no pointers.
    unsafe { call(libc::SYS_dup3, [from as usize, to as usize, 0, 0]) };
}

pub fn fsync(fd: c_int) {
    // SAFETY: no pointers.
    unsafe { call(libc::SYS_fsync, [fd as usize, 0, 0, 0]) };
}

pub fn close(fd: c_int) {
    // SAFETY: no pointers.
    unsafe { call(libc::SYS_close, [fd as usize, 0, 0, 0]) };
}

/// Reads into `buf`; the count, or a negative errno.
pub fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe {
        call(
            libc::SYS_read,
            [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0],
        )
    }
}

pub fn write(fd: c_int, buf: &[u8]) {
    // SAFETY: `buf` is valid for reads of its length.
    unsafe {
        call(
            libc::SYS_write,
            [fd as usize, buf.as_ptr() as usize, buf.len(), 0],
        )
    };
}

/// Returns only on failure, with the errno (positive).
///
/// # Safety
/// `path` must be a C string, `argv` and `envp` null-terminated arrays of C
/// strings.
pub unsafe fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> i32 {
    // SAFETY: the caller vouches for the pointers.
    let ret = unsafe {
        call(
            libc::SYS_execve,
            [path as usize, argv as usize, envp as usize, 0],
        )
    };
    i32::try_from(-ret).unwrap_or(libc::EIO)
}

pub fn exit(code: c_int) -> ! {
    loop {
        // SAFETY: no pointers; does not return.
        unsafe { call(libc::SYS_exit_group, [code as usize, 0, 0, 0]) };
    }
}
