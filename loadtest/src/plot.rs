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

/// The `due` benchmark: the distribution of deletion lateness (CDF, p50 and p99 marked) above the
/// timeline (seconds from the first DELETE): delete-ats and deletions per half second, and the
/// product's API requests per second between reads of the API server's counters.
pub fn due_lateness(out: &Path, r: &crate::due::DueReport) -> anyhow::Result<PathBuf> {
    font()?;
    let path = out.join("due-lateness.png");
    draw_due(&path, r)?;
    Ok(path)
}

fn draw_due(path: &Path, r: &crate::due::DueReport) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);
    let l = &r.lateness;
    let mut late: Vec<f64> = r.pod_times.iter().filter_map(|p| p.late_s).collect();
    late.sort_by(f64::total_cmp);
    let x_lo = late.first().copied().unwrap_or(0.0).min(0.0);
    let x_hi = (late.last().copied().unwrap_or(1.0) * 1.1).max(0.1);
    let mut cdf = ChartBuilder::on(&top)
        .caption(
            format!(
                "Deletion lateness of {} pods due at once ({} EndpointSlices in the namespace): p50 {:.3} s, p99 {:.3} s, max {:.3} s",
                l.count, r.endpoint_slices, l.p50_s, l.p99_s, l.max_s
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, 0.0..1.0)?;
    cdf.configure_mesh()
        .x_desc("seconds from delete-at to the pod seen terminating")
        .y_desc("fraction of pods")
        .draw()?;
    let n = late.len().max(1) as f64;
    let mut steps = vec![(x_lo, 0.0)];
    for (i, x) in late.iter().enumerate() {
        steps.push((*x, i as f64 / n));
        steps.push((*x, (i + 1) as f64 / n));
    }
    cdf.draw_series(LineSeries::new(steps, BLACK.stroke_width(2)))?;
    for (x, label, color) in [
        (l.p50_s, "p50", RGBColor(31, 111, 235)),
        (l.p99_s, "p99", RGBColor(215, 38, 61)),
    ] {
        cdf.draw_series(LineSeries::new([(x, 0.0), (x, 1.0)], color.stroke_width(1)))?
            .label(format!("{label} {x:.3} s"))
            .legend(move |(a, b)| PathElement::new([(a, b), (a + 20, b)], color));
    }
    cdf.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;

    let at: Vec<f64> = r.pod_times.iter().filter_map(|p| p.delete_at_s).collect();
    let gone: Vec<f64> = r
        .pod_times
        .iter()
        .filter_map(|p| p.deleted_seen_s)
        .collect();
    let t_lo = r.samples.first().map_or(0.0, |s| s.t).min(-1.0).floor();
    let t_hi = r
        .samples
        .last()
        .map_or(1.0, |s| s.t)
        .max(gone.iter().copied().fold(0.0, f64::max))
        .ceil();
    let bins = ((t_hi - t_lo) / BIN).ceil() as usize + 1;
    let count = |xs: &[f64]| {
        let mut v = vec![0u32; bins];
        for x in xs {
            let i = ((x - t_lo) / BIN).floor();
            if i >= 0.0 && (i as usize) < bins {
                v[i as usize] += 1;
            }
        }
        v
    };
    let (due_bins, gone_bins) = (count(&at), count(&gone));
    let y_max = due_bins
        .iter()
        .chain(&gone_bins)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.15;
    let rates: Vec<(f64, f64)> = r
        .samples
        .windows(2)
        .filter(|w| w[1].t - w[0].t > 0.05)
        .map(|w| {
            (
                (w[0].t + w[1].t) / 2.0,
                (w[1].counters.requests - w[0].counters.requests) / (w[1].t - w[0].t),
            )
        })
        .collect();
    let rate_max = rates.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut tl = ChartBuilder::on(&bottom)
        .caption(
            format!(
                "Timeline: {:.2} API requests of the product per drained pod beyond its idle rate; peak {:.0}/s",
                r.requests.per_pod, r.requests.peak_per_second
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(t_lo..t_hi, 0.0..y_max)?
        .set_secondary_coord(t_lo..t_hi, 0.0..rate_max);
    tl.configure_mesh()
        .x_desc("seconds from the first DELETE")
        .y_desc(format!("pods per {BIN} s"))
        .light_line_style(WHITE)
        .draw()?;
    tl.configure_secondary_axes()
        .y_desc("product's API requests per second")
        .draw()?;
    let due_color = RGBColor(150, 190, 240);
    let gone_color = RGBColor(46, 160, 67);
    tl.draw_series((0..bins).filter(|&i| due_bins[i] > 0).map(|i| {
        let x = t_lo + i as f64 * BIN;
        Rectangle::new(
            [(x, 0.0), (x + BIN * 0.45, due_bins[i] as f64)],
            due_color.filled(),
        )
    }))?
    .label("delete-at")
    .legend(move |(a, b)| Rectangle::new([(a, b - 5), (a + 15, b + 5)], due_color.filled()));
    tl.draw_series((0..bins).filter(|&i| gone_bins[i] > 0).map(|i| {
        let x = t_lo + i as f64 * BIN + BIN * 0.45;
        Rectangle::new(
            [(x, 0.0), (x + BIN * 0.45, gone_bins[i] as f64)],
            gone_color.filled(),
        )
    }))?
    .label("seen terminating")
    .legend(move |(a, b)| Rectangle::new([(a, b - 5), (a + 15, b + 5)], gone_color.filled()));
    tl.draw_secondary_series(LineSeries::new(
        rates,
        RGBColor(215, 38, 61).stroke_width(2),
    ))?
    .label("product's API requests/s (right axis)")
    .legend(|(a, b)| PathElement::new([(a, b), (a + 20, b)], RGBColor(215, 38, 61)));
    tl.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
