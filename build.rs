//! Link arguments for the `idem` binary only (tests and proc-macros link as
//! usual): idem's start-up is paid on every call it guards (issue 15).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let static_build = features.split(',').any(|f| f == "crt-static");
    if os == "linux" && env == "gnu" && !static_build {
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
}
