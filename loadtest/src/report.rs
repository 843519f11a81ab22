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

/// The runs of one scenario and mode, summed up.
pub struct Group<'a> {
    pub runs: Vec<&'a RunResult>,
}

impl Group<'_> {
    fn first(&self) -> &RunResult {
        self.runs[0]
    }
    pub fn requests(&self) -> usize {
        self.runs.iter().map(|r| r.requests).sum()
    }
    pub fn failed(&self) -> usize {
        self.runs.iter().map(|r| r.failed).sum()
    }
    pub fn walls(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.wall_s).collect()
    }
    pub fn median_wall(&self) -> f64 {
        let mut w = self.walls();
        w.sort_by(f64::total_cmp);
        match w.len() {
            0 => 0.0,
            n if n % 2 == 1 => w[n / 2],
            n => (w[n / 2 - 1] + w[n / 2]) / 2.0,
        }
    }
}

/// Runs grouped by scenario and mode, in the order they ran.
pub fn groups(results: &[RunResult]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in results {
        match out
            .iter_mut()
            .find(|g| g.first().scenario == r.scenario && g.first().mode == r.mode)
        {
            Some(g) => g.runs.push(r),
            None => out.push(Group { runs: vec![r] }),
        }
    }
    out
}

pub fn markdown(results: &[RunResult], lag: f64, margin: f64) -> String {
    let mut md = String::new();
    let groups = groups(results);
    let reps = groups.first().map(|g| g.runs.len()).unwrap_or(0);
    let _ = writeln!(
        md,
        "Load balancer lag (kube-proxy paused): {lag:.0} s; preStop sleep and drain: lag + {margin:.0} s; {reps} run(s) per row (requests and failures summed, wall time: median, then range).\n"
    );
    let _ = writeln!(
        md,
        "| scenario | mode | requests | failed | failure rate | wall time | wall vs none | old pods lived after removal | LB lag measured |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---|---:|");
    for g in &groups {
        let r = g.first();
        let none = groups
            .iter()
            .find(|n| n.first().scenario == r.scenario && n.first().mode == Mode::None);
        let vs = match none {
            Some(n) if r.mode != Mode::None && n.median_wall() > 0.0 => {
                format!("{:+.0}%", (g.median_wall() / n.median_wall() - 1.0) * 100.0)
            }
            _ => "–".into(),
        };
        let mode = match &r.webhook {
            Some(w) => format!("webhook ({w})"),
            None => r.mode.to_string(),
        };
        let lived: Vec<f64> = g.runs.iter().flat_map(|r| r.lived()).collect();
        let lags: Vec<f64> = g.runs.iter().map(|r| r.lag_s).collect();
        let walls = if g.runs.len() > 1 {
            format!("{:.1} s ({})", g.median_wall(), range(&g.walls()))
        } else {
            format!("{:.1} s", g.median_wall())
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2}% | {} | {} | {} | {} |",
            r.scenario,
            mode,
            g.requests(),
            g.failed(),
            g.failed() as f64 * 100.0 / g.requests().max(1) as f64,
            walls,
            vs,
            range(&lived),
            range(&lags)
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
            out.join(format!("{}-{}-{}.samples.json", r.scenario, r.mode, r.rep)),
            serde_json::to_string(&r.samples)?,
        )?;
    }
    Ok(())
}

/// The targets, as a verdict: the webhook fails no request in any scenario where no mitigation
/// fails some, and its wall time stays within 5% of no mitigation.
pub fn verdict(results: &[RunResult]) -> Vec<String> {
    let groups = groups(results);
    let mut problems = Vec::new();
    for none in groups.iter().filter(|g| g.first().mode == Mode::None) {
        let scenario = none.first().scenario;
        for w in groups
            .iter()
            .filter(|g| g.first().scenario == scenario && g.first().mode == Mode::Webhook)
        {
            if none.failed() == 0 {
                problems.push(format!(
                    "{scenario}: no mitigation failed no request: the load balancer lag did not bite"
                ));
            }
            if w.failed() > 0 {
                problems.push(format!(
                    "{scenario}: {} requests failed with the webhook",
                    w.failed()
                ));
            }
            if w.median_wall() > none.median_wall() * 1.05 {
                problems.push(format!(
                    "{scenario}: wall time {:.1} s with the webhook vs {:.1} s without (+{:.0}%)",
                    w.median_wall(),
                    none.median_wall(),
                    (w.median_wall() / none.median_wall() - 1.0) * 100.0
                ));
            }
        }
    }
    problems
}
