//! The chart's alerts (`chart/files/alerts.yaml`) checked by Prometheus' own tool: the rule file
//! is valid, and every alert fires on the series that should raise it and stays silent on a
//! healthy installation (`tests/alerts/alerts.test.yaml`). promtool comes from
//! `testbed/build prometheus` (tests/run builds it).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// promtool from the testbed's cache, where `testbed/build prometheus` puts it.
fn promtool() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(". testbed/lib/common.sh && echo \"$PROMETHEUS_BIN/promtool\"")
        .current_dir(root())
        .output()?;
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: run testbed/build prometheus",
        path.display()
    );
    Ok(path)
}

fn run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(promtool()?)
        .args(args)
        .current_dir(root())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "promtool {args:?}:\n{text}");
    Ok(text)
}

#[test]
fn every_alert_is_valid_and_fires_as_its_unit_tests_say() -> anyhow::Result<()> {
    let checked = run(&["check", "rules", "chart/files/alerts.yaml"])?;
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = run(&["test", "rules", "tests/alerts/alerts.test.yaml"])?;
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert of the file has a test in which it fires.
    let rules = std::fs::read_to_string(root().join("chart/files/alerts.yaml"))?;
    let tests = std::fs::read_to_string(root().join("tests/alerts/alerts.test.yaml"))?;
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let firing = format!("alertname: {alert}\n        exp_alerts:");
        assert!(tests.contains(&firing), "no test shows {alert} firing");
    }
    Ok(())
}
