//! Source checks no compiler makes.

use std::fs;
use std::path::Path;

/// A panic on a closed stderr between claim and outcome loses the record,
/// so every line idem prints goes through `src/say.rs`, which never panics.
#[test]
fn only_say_rs_prints() {
    let mut offenders = Vec::new();
    visit(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path(),
        &mut |path, text| {
            if path.ends_with("say.rs") {
                return;
            }
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for mac in ["eprintln!", "println!", "eprint!(", "print!(", "dbg!("] {
                    if code.contains(mac) {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        },
    );
    assert!(
        offenders.is_empty(),
        "print outside src/say.rs:\n{}",
        offenders.join("\n")
    );
}

/// idem starts from its own C `main` (no Rust runtime start-up), where
/// `std::env::args_os()` is filled only by a glibc extension: on another C
/// library it would be empty. `main` reads its own argc and argv instead,
/// and nothing else may read the arguments from std.
#[test]
fn nothing_reads_the_arguments_from_std() {
    let mut offenders = Vec::new();
    visit(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path(),
        &mut |path, text| {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("env::args") || code.contains("args_os()") {
                    offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        },
    );
    assert!(
        offenders.is_empty(),
        "arguments read from std::env (main has them from argv):\n{}",
        offenders.join("\n")
    );
}

fn visit(dir: &Path, each: &mut dyn FnMut(&Path, &str)) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, each);
        } else if path.extension().is_some_and(|e| e == "rs") {
            each(&path, &fs::read_to_string(&path).unwrap());
        }
    }
}
