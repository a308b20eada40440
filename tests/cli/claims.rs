//! What the README and docs/ claim, checked against idem, against each
//! other and against bench/RESULTS.md: every figure quoted from the bench
//! is its latest table's, there is one set of SQLite timings, the
//! defaults, exit codes, JSON fields and time limits stated are idem's,
//! and the README stays short and links its pages.

use crate::docs::{make_records, pages, read, root};
use crate::support::{bin, Env};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The latest table of bench/RESULTS.md: row id to its cells.
fn latest_results() -> HashMap<String, Vec<String>> {
    let results = read("bench/RESULTS.md");
    results
        .lines()
        .skip_while(|line| !line.starts_with("| # |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<String> = line
                .split(" | ")
                .map(|c| c.trim_matches(['|', ' ']).to_owned())
                .collect();
            (cells[0].clone(), cells)
        })
        .collect()
}

/// The text of bench/RESULTS.md's latest round (its first section).
fn latest_round() -> String {
    let results = read("bench/RESULTS.md");
    let start = results.find("\n## ").unwrap() + 1;
    let end = results[start + 3..]
        .find("\n## ")
        .map_or(results.len(), |e| start + 3 + e);
    results[start..end].to_owned()
}

/// `1.44 ± 0.24 ms (1.44, n=300)` or `…: 1.57 ± 0.33 ms (1.53)`: the median.
fn median(cell: &str) -> String {
    let open = cell.rfind('(').unwrap();
    cell[open + 1..]
        .split([',', ')'])
        .next()
        .unwrap()
        .to_owned()
}

/// `0.92× (0.94×)`: the ratio of means.
fn ratio(cell: &str) -> String {
    cell.split_whitespace().next().unwrap().to_owned()
}

/// `687774` instructions as `0.69` million.
fn millions(count: &str) -> String {
    let count: f64 = count
        .split(':')
        .next_back()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    format!("{:.2}", count / 1e6)
}

fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn figures_in_the_docs_are_bench_results_latest() {
    let r = latest_results();
    let cell = |id: &str, n: usize| -> &str { &r[id][n] };
    let replay = median(cell("1", 2));
    let bkt_hit = median(cell("3", 3));
    let first = median(cell("2a", 2));
    let bkt_miss = median(cell("2c", 3));
    let purge = cell("7a", 2).split(',').next().unwrap().to_owned();
    let faults_bkt = cell("8c", 3).trim_start_matches("bkt hit: ");
    let expected: [(&str, String); 8] = [
        (
            "docs/speed.md",
            format!(
                "| replay of a completed key (`-- true`) | {replay} ms, {} M instructions, {} page faults | cache hit: {bkt_hit} ms, {} M, {faults_bkt} | {} | {} ms |",
                millions(cell("8a", 2)), cell("8c", 2), millions(cell("8a", 3)), ratio(cell("3", 4)), median(cell("1x", 2))
            ),
        ),
        (
            "docs/speed.md",
            format!(
                "| first run, durable | {first} ms, {} M instructions | miss (no fsync): {bkt_miss} ms, {} M | {} | {} ms |",
                millions(cell("8b", 2)), millions(cell("8b", 3)), ratio(cell("2c", 4)), median(cell("2x", 2))
            ),
        ),
        (
            "docs/speed.md",
            format!("| replay / first run on a 1,000,000-record store | {} / {} of the empty store |", ratio(cell("4a", 4)), ratio(cell("4b", 4))),
        ),
        (
            "docs/speed.md",
            format!(
                "| replay of a 48 MiB output | {} `cat` to a pipe, {} into a file; {} peak RSS; capturing it: {} |",
                ratio(cell("5", 4)), ratio(cell("5e", 4)), cell("5b", 2), cell("5c", 2)
            ),
        ),
        ("docs/speed.md", format!("| `idem logs` of that output | {} `cat` to a pipe |", ratio(cell("5d", 4)))),
        ("docs/speed.md", format!("a bare `true` took {} ms", median(cell("1", 3)))),
        (
            "README.md",
            format!("a replay takes {replay} ms (bkt's cache hit: {bkt_hit} ms), a durable first run {first} ms (bkt's miss, which does not fsync: {bkt_miss} ms)"),
        ),
        ("docs/operating.md", format!("records purge in about {purge}")),
    ];
    for (page, text) in expected {
        assert!(
            flat(&read(page)).contains(&flat(&text)),
            "{page} does not say, as bench/RESULTS.md does:\n{text}"
        );
    }
    assert!(flat(&read("docs/speed.md")).contains(&format!(
        "| `idem purge` of 1,000,000 expired records | {purge} |"
    )));
}

/// Every SQLite timing the pages give (a decimal number of ms in a
/// paragraph that names no server) is one of bench/RESULTS.md's latest
/// round: one set of figures, not three.
#[test]
fn every_sqlite_timing_is_from_the_latest_bench_round() {
    let round = latest_round();
    for (page, text) in pages() {
        for paragraph in text.split("\n\n") {
            if ["PostgreSQL", "Redis", "pgbench"]
                .iter()
                .any(|s| paragraph.contains(s))
            {
                continue;
            }
            let words: Vec<&str> = paragraph.split_whitespace().collect();
            for pair in words.windows(2) {
                let number = pair[0].trim_start_matches(|c: char| !c.is_ascii_digit());
                if pair[1].starts_with("ms")
                    && number.contains('.')
                    && number.parse::<f64>().is_ok()
                {
                    assert!(
                        round.contains(&format!("{number} ms"))
                            || round.contains(&format!("({number}")),
                        "{page}: {number} ms is not in bench/RESULTS.md's latest round"
                    );
                }
            }
        }
    }
}

#[test]
fn defaults_the_docs_state_are_idems() {
    let help = Command::new(bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut defaults = HashMap::new();
    let mut flag = String::new();
    for line in help.lines().map(str::trim) {
        if line.starts_with('-') {
            if let Some(long) = line.split([' ', ',', '=']).find(|w| w.starts_with("--")) {
                flag = long.to_owned();
            }
        }
        if let Some(value) = line.strip_prefix("[default: ") {
            defaults.insert(flag.clone(), value.trim_end_matches(']').to_owned());
        }
    }
    assert!(defaults.len() >= 5, "{defaults:?}");
    let mut checked = 0;
    for (page, text) in pages() {
        let text = flat(&text);
        for (flag, value) in &defaults {
            for (at, _) in text.match_indices(&format!("`{flag}`")) {
                let after: String = text[at..].chars().take(60).collect();
                if let Some(stated) = after.split("default `").nth(1) {
                    let stated = stated.split('`').next().unwrap();
                    assert_eq!(stated, value, "{page}: {after}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 3, "{checked} defaults checked");
}

/// A server that takes the connection and never answers.
fn silent_server() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// The number of seconds `page` states right after `before`.
fn stated_seconds(page: &str, before: &str) -> u64 {
    let text = flat(&read(page));
    let at = text
        .find(before)
        .unwrap_or_else(|| panic!("{page} lacks `{before}`"));
    text[at + before.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs a call against `url`, a server that never answers, and checks
/// that idem gives up (exit 125) after the time the docs state, give or
/// take a second.
fn gives_up_after(url: &str, stated: Duration) {
    let env = Env::sqlite();
    let start = Instant::now();
    let out = env
        .idem()
        .args(["--db", url, "run", "-k", "k", "--", "true"])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        took + Duration::from_secs(1) >= stated && took <= stated + Duration::from_millis(1500),
        "{url}: gave up after {took:?}, the docs say {stated:?}"
    );
}

#[test]
fn a_silent_server_is_given_up_on_after_the_time_the_docs_state() {
    let page = "docs/stores.md";
    let (_postgres, pg_port) = silent_server();
    let (_redis, redis_port) = silent_server();
    let pg = stated_seconds(
        page,
        "PostgreSQL server that takes the connection and never answers is given up after",
    );
    let redis = stated_seconds(
        page,
        "Redis server that takes the connection and never answers is given up after",
    );
    std::thread::scope(|scope| {
        scope.spawn(|| {
            gives_up_after(
                &format!("postgres://idem@127.0.0.1:{pg_port}/jobs"),
                Duration::from_secs(pg),
            );
        });
        gives_up_after(
            &format!("redis://127.0.0.1:{redis_port}/0"),
            Duration::from_secs(redis),
        );
    });
}

#[test]
fn the_readme_stays_short_and_links_its_pages() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 420, "README.md has {lines} lines");
    for page in [
        "deciding",
        "callers",
        "stores",
        "leases",
        "operating",
        "speed",
        "building",
    ] {
        assert!(
            readme.contains(&format!("(docs/{page}.md)")),
            "README.md does not link docs/{page}.md"
        );
    }
}

/// The codes an `EXIT STATUS` section of the man pages lists (`.TP` then
/// `\fBN\fR`).
fn man_exit_codes() -> BTreeSet<u8> {
    let mut codes = BTreeSet::new();
    for page in std::fs::read_dir(root().join("man")).unwrap() {
        let text = std::fs::read_to_string(page.unwrap().path()).unwrap();
        let Some(start) = text.find(".SH \"EXIT STATUS\"") else {
            continue;
        };
        let section = &text[start..];
        let section = &section[..section[4..].find("\n.SH").map_or(section.len(), |e| e + 4)];
        let mut lines = section.lines();
        while let Some(line) = lines.next() {
            if line == ".TP" {
                let code = lines.next().unwrap_or_default();
                if let Some(code) = code
                    .strip_prefix("\\fB")
                    .and_then(|c| c.strip_suffix("\\fR"))
                {
                    codes.extend(code.parse::<u8>().ok());
                }
            }
        }
    }
    codes
}

#[test]
fn the_readmes_exit_codes_are_the_man_pages() {
    let readme = read("README.md");
    let table: BTreeSet<u8> = readme
        .lines()
        .skip_while(|line| *line != "## Exit status")
        .take_while(|line| !line.starts_with("## How"))
        .filter_map(|line| line.strip_prefix("| ")?.split(" |").next()?.parse().ok())
        .collect();
    let mut man = man_exit_codes();
    man.remove(&0);
    assert!(man.len() >= 10, "{man:?}");
    assert_eq!(
        table, man,
        "README.md's exit status table and the man pages' EXIT STATUS"
    );
}

/// The field names in the first column of the first table after
/// `heading` in `page` (`` `a`, `b` `` is two fields).
fn documented_fields(page: &str, heading: &str) -> BTreeSet<String> {
    let text = read(page);
    let at = text
        .find(heading)
        .unwrap_or_else(|| panic!("{page} lacks {heading}"));
    text[at..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .flat_map(|line| {
            line.split(" | ")
                .next()
                .unwrap()
                .trim_start_matches("| ")
                .split(", ")
                .map(|f| f.trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn keys_of(json: &str) -> BTreeSet<String> {
    let value: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    value.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_fields_of_inspect_json_are_the_documented_ones() {
    let env = Env::sqlite();
    make_records(&env);
    let out = env
        .idem()
        .args(["inspect", "--json", "report-2026-11"])
        .output()
        .unwrap();
    assert_eq!(
        keys_of(&String::from_utf8(out.stdout).unwrap()),
        documented_fields("docs/operating.md", "### JSON for scripts")
    );
}

#[test]
fn the_fields_of_the_report_are_the_documented_ones() {
    let env = Env::sqlite();
    let out = env
        .idem()
        .args(["run", "--key", "r", "--report", "/dev/stdout", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(
        keys_of(&String::from_utf8(out.stdout).unwrap()),
        documented_fields("docs/callers.md", "## The report")
    );
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_link_between_the_pages_leads_somewhere() {
    let mut checked = 0;
    for (page, text) in pages() {
        let dir = Path::new(&page).parent().unwrap().to_owned();
        for (at, _) in text.match_indices("](") {
            let target = &text[at + 2..];
            let target = &target[..target.find(')').unwrap()];
            if target.contains("://") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                Path::new(&page).to_owned()
            } else {
                dir.join(file)
            };
            // docs/leases.md is written by the lease work, in parallel.
            if path.ends_with("docs/leases.md") && !root().join(&path).exists() {
                continue;
            }
            assert!(
                root().join(&path).exists(),
                "{page}: {target} leads nowhere"
            );
            if !fragment.is_empty() {
                let target_text = std::fs::read_to_string(root().join(&path)).unwrap();
                assert!(
                    target_text
                        .lines()
                        .filter(|l| l.starts_with('#'))
                        .any(|l| anchor(l) == fragment),
                    "{page}: {target}: no such heading"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} links");
}
