//! The program's layout (issues 15 and 26): the functions a usual call
//! runs, listed in link/hot-symbols.txt, lie side by side, so a call maps
//! few pages of code, and the C functions among them (SQLite's, the C
//! library's) are all still in the program. A debug build has those as a
//! release build does, but for the release optimizer's clones
//! (`name.part.0`, `name.isra.0`); Rust's names carry hashes that differ
//! between the two builds, so `bench/hot-symbols.sh --check` checks those
//! on a release build (in CI).

use crate::support::bin;
use std::collections::HashMap;
use std::process::Command;

#[test]
fn the_functions_a_usual_call_runs_are_there_and_lie_together() {
    let comment = Command::new("readelf")
        .args(["-p", ".comment"])
        .arg(bin())
        .output()
        .expect("readelf (binutils) runs");
    let linked_by_lld = String::from_utf8_lossy(&comment.stdout).contains("Linker: LLD");
    if option_env!("IDEM_HOT_SYMBOLS").is_none() {
        // build.rs found a linker that cannot order functions.
        assert!(
            !linked_by_lld,
            "lld linked idem, yet build.rs did not give it link/hot-symbols.txt"
        );
        eprintln!("skipped: this build's linker does not take --symbol-ordering-file");
        return;
    }
    let nm = Command::new("nm")
        .args(["--defined-only", "--print-size"])
        .arg(bin())
        .output()
        .expect("nm (binutils) runs");
    assert!(nm.status.success(), "nm failed: {nm:?}");
    // Every defined name, and name -> (address, size) for functions.
    let mut defined = std::collections::HashSet::new();
    let mut code = HashMap::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let Some(name) = fields.last() {
            defined.insert((*name).to_owned());
        }
        if let [address, size, kind, name] = fields[..] {
            if kind.eq_ignore_ascii_case("t") {
                let hex = |s: &str| u64::from_str_radix(s, 16).unwrap();
                code.insert(name.to_owned(), (hex(address), hex(size)));
            }
        }
    }
    let list =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/link/hot-symbols.txt"))
            .unwrap();
    let listed: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    let gone: Vec<&str> = listed
        .iter()
        .copied()
        .filter(|name| !name.contains('.') && !is_rust(name) && !defined.contains(*name))
        .collect();
    assert!(
        gone.is_empty(),
        "{} C functions of link/hot-symbols.txt are no longer in idem (a new SQLite or \
         C library, or calls that changed): run bench/hot-symbols.sh to rewrite the list. \
         The first: {:?}",
        gone.len(),
        &gone[..gone.len().min(10)]
    );
    let found: Vec<(u64, u64)> = listed
        .iter()
        .filter_map(|name| code.get(*name).copied())
        .collect();
    assert!(
        found.len() >= 200,
        "only {} of the listed functions have a size in the binary",
        found.len()
    );
    let start = found.iter().map(|(a, _)| a).min().unwrap();
    let end = found.iter().map(|(a, s)| a + s).max().unwrap();
    let size: u64 = found.iter().map(|(_, s)| s).sum();
    let all_code: u64 = code.values().map(|(_, s)| s).sum();
    // Scattered, they would span most of the program's code.
    assert!(
        end - start <= 2 * size,
        "the {} listed functions ({size} bytes) span {} bytes of {all_code}",
        found.len(),
        end - start
    );
}

/// Whether `name` is a Rust function's (legacy `_ZN…E` or v0 `_R…`
/// mangling); no C++ is linked in.
fn is_rust(name: &str) -> bool {
    name.starts_with("_ZN") || name.starts_with("_R")
}
