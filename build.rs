//! Link arguments for the `idem` binary only (tests and proc-macros link as
//! usual): idem's start-up is paid on every call it guards (issue 15).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // 5,500 relative relocations become a bitmap of a few hundred bytes
        // (DT_RELR, glibc 2.36+): less for the dynamic loader to read and apply.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
