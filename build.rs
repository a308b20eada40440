//! Link arguments for the `idem` binary only (tests and proc-macros link as
//! usual): idem's start-up is paid on every call it guards (issue 15).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let static_build = features.split(',').any(|f| f == "crt-static");
    if os == "linux" && target_env == "gnu" && !static_build {
        // A dynamically linked build (`.cargo/config.toml` links statically)
        // is at least a fixed-address executable: its 5,500 internal
        // pointers are final at link time, so the dynamic loader neither
        // reads relocations for them nor writes the pages they are on (21
        // page faults and 68k instructions fewer per call than a
        // packed-relocation PIE). Libraries, stack and heap are still
        // placed at random. A static build gets the same from
        // `-C relocation-model=static`; `-no-pie` would break a static-pie.
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    order_hot_functions();
}

/// Lays out the functions a usual call runs side by side, where the linker
/// can (lld, the default linker of Rust 1.90 and later on x86-64 Linux).
/// The kernel maps a program's code as it runs, 16 pages per page fault:
/// together, a replay's functions cost 23 faults fewer, and a replay takes
/// 3-8 % less time on an idle machine, 17-28 % at load 8; a first run 2-3 %
/// and 7-16 % (issue 26). `link/hot-symbols.txt` lists them
/// (bench/hot-symbols.sh writes it); tests/cli/layout.rs checks its C names
/// and `bench/hot-symbols.sh --check` its Rust names, which a compiler or
/// code change renames; names the program lacks are skipped.
fn order_hot_functions() {
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = Path::new(&dir).join("link/hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    let args = [
        format!("-Wl,--symbol-ordering-file={}", list.display()),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    if list.is_file() && links_with(&args) {
        for arg in &args {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
        // For the test that checks the layout took effect.
        println!("cargo:rustc-env=IDEM_HOT_SYMBOLS=1");
    }
}

/// Whether rustc, with this build's target, flags and linker, links an
/// empty program given the link arguments `args`. Other linkers (GNU ld,
/// gold) refuse lld's options; the build then goes on without them.
fn links_with(args: &[String]) -> bool {
    let (Some(rustc), Some(out), Ok(target)) = (
        env::var_os("RUSTC"),
        env::var_os("OUT_DIR"),
        env::var("TARGET"),
    ) else {
        return false;
    };
    let out = PathBuf::from(out);
    let source = out.join("probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut probe = Command::new(rustc);
    probe
        .arg("--target")
        .arg(target)
        .arg("-o")
        .arg(out.join("probe"))
        .arg(&source);
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut arg = std::ffi::OsString::from("linker=");
        arg.push(linker);
        probe.arg("-C").arg(arg);
    }
    for arg in args {
        probe.arg("-C").arg(format!("link-arg={arg}"));
    }
    probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
