//! The testbed's own lifecycle: `down` leaves nothing behind, `up` on a running cluster is a
//! no-op, `up` after a crash cleans the leftovers first, and a component that fails to start is
//! named (with its command and log) and nothing is left half-started.
//!
//! These tests stop and start the whole testbed, so they are `#[ignore]`d in a plain `cargo test`
//! and run, alone, by `tests/run` after every other test. They do not apply to an external cluster.

use std::path::PathBuf;
use std::process::{Command, Output};

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testbed")
}

fn run(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(scripts().join(script));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
        .unwrap_or_else(|e| panic!("running testbed/{script}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_clean(when: &str) {
    let left = run("leftovers", &[], &[]);
    assert!(
        left.status.success(),
        "{when}: the testbed left traces behind:\n{}",
        text(&left)
    );
}

fn external() -> bool {
    if std::env::var_os("PGD_TEST_KUBECONFIG").is_some() {
        eprintln!("PGD_TEST_KUBECONFIG is set: the testbed lifecycle does not apply to it");
        return true;
    }
    false
}

#[test]
#[ignore = "stops and starts the whole testbed: run alone by tests/run"]
fn lifecycle() {
    if external() {
        return;
    }
    // up on a healthy cluster: nothing is done, and the last line tells how to use it.
    let first = run("up", &["1"], &[]);
    assert!(first.status.success(), "up failed:\n{}", text(&first));
    let again = run("up", &["1"], &[]);
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(
        again.status.success(),
        "second up failed:\n{}",
        text(&again)
    );
    assert!(
        out.contains("already up"),
        "second up was not a no-op:\n{out}"
    );
    assert!(
        out.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("export KUBECONFIG=/")),
        "up must end with the export line:\n{out}"
    );

    // A crash: the control plane dies without `down`. The next `up` cleans up and starts afresh.
    for name in ["kube-apiserver", "etcd"] {
        let pid = std::fs::read_to_string(format!("/run/pgd-testbed/pids/{name}"))
            .unwrap_or_else(|e| panic!("pid file of {name}: {e}"));
        let killed = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill");
        assert!(killed.success(), "could not kill {name}");
    }
    let recovered = run("up", &["1"], &[]);
    let out = text(&recovered);
    assert!(
        recovered.status.success(),
        "up after a crash failed:\n{out}"
    );
    assert!(
        out.contains("leftovers"),
        "up did not say it cleaned leftovers:\n{out}"
    );
    let health = run("lib/health", &["1"], &[]);
    assert!(
        health.status.success(),
        "not healthy after recovery:\n{}",
        text(&health)
    );

    // down leaves nothing: processes, mounts, namespaces, cgroups, rules, runtime files.
    let down = run("down", &[], &[]);
    assert!(down.status.success(), "down failed:\n{}", text(&down));
    assert_clean("after down");

    // A component that cannot start: up names it, shows its command and log, and cleans up.
    let failed = run(
        "up",
        &["1"],
        &[("PGD_TESTBED_APISERVER_FLAGS", "--no-such-flag=1")],
    );
    let out = text(&failed);
    assert!(
        !failed.status.success(),
        "up with a broken apiserver succeeded:\n{out}"
    );
    assert!(
        out.contains("up FAILED at: kube-apiserver"),
        "the failed component is not named:\n{out}"
    );
    assert!(
        out.contains("command:") && out.contains("--no-such-flag=1"),
        "the command is not shown:\n{out}"
    );
    assert!(
        out.contains("unknown flag: --no-such-flag"),
        "the component's log is not shown:\n{out}"
    );
    assert_clean("after a failed up");
}
