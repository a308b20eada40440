//! The lease model (`model/`, SPEC.md "Leases"): SPIN checks that the
//! shared stores' protocol keeps every property, and that each old rule
//! brings back a counterexample the issue saw.

use std::process::Command;

#[test]
#[ignore = "needs spin and a C compiler (.ci/run installs spin)"]
fn the_lease_model_holds_and_each_old_rule_fails_with_a_counterexample() {
    crate::support::tool("spin");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("model/check.sh");
    let out = Command::new(script).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(", 0 unexpected"), "{text}");
}
