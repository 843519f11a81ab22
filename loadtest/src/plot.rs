//! One PNG per scenario: request outcomes over time, one panel per mode, on a common time axis
//! (0 = the load balancer stopped learning). Green: requests that succeeded per half second; red,
//! stacked on top: those that failed. Grey band: the load balancer's lag. Blue lines: an old pod
//! was removed (deleted, or taken out by the webhook); black ticks at the top: it was gone.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::proof::RunResult;

const BIN: f64 = 0.5;
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a system font for the labels (plotters draws text with it); Debian's
/// fonts-dejavu-core provides one.
fn font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!("no font found at {FONT_PATHS:?} (install fonts-dejavu-core)")
            })?;
        let bytes: &'static [u8] = Box::leak(
            std::fs::read(path)
                .map_err(|e| e.to_string())?
                .into_boxed_slice(),
        );
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

pub fn scenario(out: &Path, runs: &[&RunResult]) -> anyhow::Result<PathBuf> {
    font()?;
    let first = runs
        .first()
        .ok_or_else(|| anyhow::anyhow!("nothing to plot"))?;
    let path = out.join(format!("{}.png", first.scenario));
    let height = 70 + 260 * runs.len() as u32;
    draw(&path, height, runs, first)?;
    Ok(path)
}

fn draw(path: &Path, height: u32, runs: &[&RunResult], first: &RunResult) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(60);
    title.draw(&Text::new(
        format!(
            "{}: request outcomes per {BIN} s behind a load balancer lagging {:.0} s",
            first.scenario, first.lag_s
        ),
        (20, 18),
        ("sans-serif", 24).into_font(),
    ))?;
    let x_min = runs.iter().map(|r| -r.t0).fold(0.0, f64::min).floor();
    let x_max = runs
        .iter()
        .flat_map(|r| r.samples.last().map(|s| s.at - r.t0))
        .fold(10.0, f64::max)
        .ceil();
    let panels = body.split_evenly((runs.len(), 1));
    for (panel, run) in panels.iter().zip(runs) {
        let bins = ((x_max - x_min) / BIN).ceil() as usize + 1;
        let mut ok = vec![0u32; bins];
        let mut bad = vec![0u32; bins];
        for s in &run.samples {
            let i = (((s.at - run.t0) - x_min) / BIN).floor();
            if i >= 0.0 && (i as usize) < bins {
                if s.outcome.failed() {
                    bad[i as usize] += 1;
                } else {
                    ok[i as usize] += 1;
                }
            }
        }
        let y_max = ok
            .iter()
            .zip(&bad)
            .map(|(a, b)| a + b)
            .max()
            .unwrap_or(1)
            .max(1) as f64
            * 1.15;
        let label = match &run.webhook {
            Some(w) => format!("webhook ({w})"),
            None => run.mode.to_string(),
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!(
                    "{label}: {} of {} requests failed; wall time {:.1} s",
                    run.failed, run.requests, run.wall_s
                ),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds from the moment the load balancer stopped learning")
            .y_desc("requests")
            .light_line_style(WHITE)
            .draw()?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (run.resumed - run.t0, y_max)],
            RGBColor(225, 225, 225).filled(),
        )))?;
        chart.draw_series((0..bins).map(|i| {
            let x = x_min + i as f64 * BIN;
            Rectangle::new(
                [(x, 0.0), (x + BIN * 0.9, ok[i] as f64)],
                RGBColor(46, 160, 67).filled(),
            )
        }))?;
        chart.draw_series((0..bins).filter(|&i| bad[i] > 0).map(|i| {
            let x = x_min + i as f64 * BIN;
            Rectangle::new(
                [(x, ok[i] as f64), (x + BIN * 0.9, (ok[i] + bad[i]) as f64)],
                RGBColor(215, 38, 61).filled(),
            )
        }))?;
        for p in &run.pods {
            if let Some(r) = p.removed {
                chart.draw_series(LineSeries::new(
                    [(r - run.t0, 0.0), (r - run.t0, y_max)],
                    RGBColor(31, 111, 235).stroke_width(2),
                ))?;
            }
            if let Some(g) = p.gone {
                chart.draw_series(LineSeries::new(
                    [(g - run.t0, y_max * 0.93), (g - run.t0, y_max)],
                    BLACK.stroke_width(3),
                ))?;
            }
        }
    }
    root.present()?;
    Ok(())
}
