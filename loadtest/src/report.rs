//! Results as files: `<out>/proof.json` (every figure), `<out>/proof.md` (the table people read),
//! and `<out>/<scenario>-<mode>.samples.json` (every request, for re-plotting).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::proof::{Mode, RunResult};

fn range(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (max - min).abs() < 0.05 {
        format!("{min:.1} s")
    } else {
        format!("{min:.1}–{max:.1} s")
    }
}

pub fn markdown(results: &[RunResult], lag: f64, margin: f64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Load balancer lag (kube-proxy paused): {lag:.0} s; preStop sleep and drain: lag + {margin:.0} s.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | mode | requests | failed | failure rate | wall time | wall vs none | old pods lived after removal | LB lag measured |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|---:|");
    for r in results {
        let none = results
            .iter()
            .find(|n| n.scenario == r.scenario && n.mode == Mode::None);
        let vs = match none {
            Some(n) if r.mode != Mode::None && n.wall_s > 0.0 => {
                format!("{:+.0}%", (r.wall_s / n.wall_s - 1.0) * 100.0)
            }
            _ => "–".into(),
        };
        let mode = match &r.webhook {
            Some(w) => format!("webhook ({w})"),
            None => r.mode.to_string(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2}% | {:.1} s | {} | {} | {:.1} s |",
            r.scenario,
            mode,
            r.requests,
            r.failed,
            r.failure_rate * 100.0,
            r.wall_s,
            vs,
            range(&r.lived()),
            r.lag_s
        );
    }
    md
}

pub fn write(out: &Path, results: &[RunResult], lag: f64, margin: f64) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let summary = json!({
        "generated_at": jiff::Timestamp::now().to_string(),
        "lag_s": lag,
        "margin_s": margin,
        "runs": results,
    });
    std::fs::write(
        out.join("proof.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    std::fs::write(out.join("proof.md"), markdown(results, lag, margin))?;
    for r in results {
        std::fs::write(
            out.join(format!("{}-{}.samples.json", r.scenario, r.mode)),
            serde_json::to_string(&r.samples)?,
        )?;
    }
    Ok(())
}

/// The targets, as a verdict: the webhook fails no request in any scenario where no mitigation
/// fails some, and its wall time stays within 5% of no mitigation.
pub fn verdict(results: &[RunResult]) -> Vec<String> {
    let mut problems = Vec::new();
    for none in results.iter().filter(|r| r.mode == Mode::None) {
        for w in results
            .iter()
            .filter(|r| r.scenario == none.scenario && r.mode == Mode::Webhook)
        {
            if none.failed == 0 {
                problems.push(format!(
                    "{}: no mitigation failed no request: the load balancer lag did not bite",
                    none.scenario
                ));
            }
            if w.failed > 0 {
                problems.push(format!(
                    "{}: {} requests failed with the webhook",
                    w.scenario, w.failed
                ));
            }
            if w.wall_s > none.wall_s * 1.05 {
                problems.push(format!(
                    "{}: wall time {:.1} s with the webhook vs {:.1} s without (+{:.0}%)",
                    w.scenario,
                    w.wall_s,
                    none.wall_s,
                    (w.wall_s / none.wall_s - 1.0) * 100.0
                ));
            }
        }
    }
    problems
}
