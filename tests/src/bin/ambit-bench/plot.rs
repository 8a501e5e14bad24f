//! The bench's plots. `latency.png`: the `rr_1b` round-trip time distributions, direct and
//! meshed, cross-node and same-node (each panel with both meshed paths:
//! through the agent in user space, and on the kernel path), as CDFs on a log
//! time axis. Each curve is one real run's (the one with the median p50), as
//! `pod-tool rr` reported it.
//!
//! [`time_series`] draws the churn soak's series over time.
//!
//! Text is drawn with Debian's `DejaVu Sans` (`fonts-dejavu-core`), loaded
//! from its file: no font discovery, so no fontconfig.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::report::{PAIRS, Report};

/// The font every label uses, from `fonts-dejavu-core`.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The family name plotters asks for by default.
const FONT_FAMILY: &str = "sans-serif";

/// The image's size in pixels.
const SIZE: (u32, u32) = (1400, 620);

/// Curve colours, by place in a panel: direct, mesh, a second meshed path
/// (the kernel path).
const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// Loads the font; call once, before drawing.
pub fn load_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT_PATH).map_err(|error| {
        format!(
            "cannot read the plot's font {FONT_PATH} ({error}); install it with \
             `apt-get install fonts-dejavu-core` (`cargo xtask setup` does)"
        )
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FONT_FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT_PATH} is not a font plotters can read"))
}

/// Draws the CDFs into `path` (PNG).
pub fn latency_cdf(report: &Report, path: &Path) -> Result<(), String> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let title = format!(
        "rr_1b round-trip time (1-byte request/response, one connection): CDF of the median run of {}",
        report.runs
    );
    let root = root
        .titled(&title, (FONT_FAMILY, 24))
        .map_err(|error| error.to_string())?;
    let (x_min, x_max) = x_range(report);
    let panel_scenarios = panels();
    let areas = root.split_evenly((1, panel_scenarios.len()));
    for (panel, (caption, scenarios)) in areas.iter().zip(panel_scenarios) {
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, (FONT_FAMILY, 22))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..1.0)
            .map_err(|error| error.to_string())?;
        chart
            .configure_mesh()
            .x_desc("round-trip time (µs, log scale)")
            .y_desc("fraction of round trips ≤ x")
            .label_style((FONT_FAMILY, 15))
            .axis_desc_style((FONT_FAMILY, 17))
            .x_labels(30)
            .bold_line_style(BLACK.mix(0.15))
            .light_line_style(BLACK.mix(0.04))
            .x_label_formatter(&|us| tick_label(*us))
            .y_label_formatter(&|fraction| format!("{fraction:.1}"))
            .draw()
            .map_err(|error| error.to_string())?;
        let mut drew = false;
        for (name, colour) in scenarios.into_iter().zip(COLOURS) {
            let Some(scenario) = report.scenario(name) else {
                continue;
            };
            let Some(cdf) = scenario.rr_1b_cdf.as_ref() else {
                continue;
            };
            // The plotted run's own percentiles, which may differ from the
            // medians in the table.
            let figures = scenario
                .runs
                .iter()
                .find(|run| run.run == cdf.run)
                .and_then(|run| run.rr_1b)
                .map_or_else(String::new, |rr| {
                    format!(": p50 {:.1} µs, p99 {:.1} µs", rr.p50_us, rr.p99_us)
                });
            let style = ShapeStyle::from(colour).stroke_width(3);
            chart
                .draw_series(LineSeries::new(
                    cdf.points.iter().map(|&[fraction, us]| (us, fraction)),
                    style,
                ))
                .map_err(|error| error.to_string())?
                .label(format!("{name}, run {}{figures}", cdf.run))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], style));
            drew = true;
        }
        if drew {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FONT_FAMILY, 15))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(|error| error.to_string())?;
        } else {
            panel
                .draw_text(
                    "no rr_1b measurement",
                    &(FONT_FAMILY, 20).into_text_style(panel),
                    (120, 120),
                )
                .map_err(|error| error.to_string())?;
        }
    }
    root.present().map_err(|error| error.to_string())
}

/// One panel of [`time_series`]: lines over minutes.
pub struct Panel {
    /// The caption.
    pub title: String,
    /// Each line's label and its (minute, value) points.
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws `panels` in a grid of `columns` into `path` (PNG), each with a
/// dashed vertical line at every minute of `markers` (the handoffs).
pub fn time_series(
    path: &Path,
    title: &str,
    panels: &[Panel],
    columns: usize,
    markers: &[f64],
) -> Result<(), String> {
    let columns = columns.max(1);
    let rows = panels.len().div_ceil(columns).max(1);
    let height = u32::try_from(rows * 300 + 50).unwrap_or(u32::MAX);
    let root = BitMapBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let root = root
        .titled(title, (FONT_FAMILY, 22))
        .map_err(|error| error.to_string())?;
    for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
        let points = || panel.lines.iter().flat_map(|(_, points)| points);
        let x_max = points().map(|p| p.0).fold(1.0, f64::max);
        let (low, high) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        // From 0, so that a small wobble does not fill the panel.
        let y_max = if high.is_finite() {
            high.max(1.0) * 1.15
        } else {
            1.0
        };
        let y_min = if low.is_finite() && low < 0.0 {
            low * 1.15
        } else {
            0.0
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, (FONT_FAMILY, 17))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(|error| error.to_string())?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .label_style((FONT_FAMILY, 13))
            .axis_desc_style((FONT_FAMILY, 13))
            .bold_line_style(BLACK.mix(0.12))
            .light_line_style(BLACK.mix(0.0))
            .draw()
            .map_err(|error| error.to_string())?;
        for &minute in markers {
            chart
                .draw_series(DashedLineSeries::new(
                    [(minute, y_min), (minute, y_max)],
                    4,
                    4,
                    BLACK.mix(0.35).stroke_width(1),
                ))
                .map_err(|error| error.to_string())?;
        }
        for ((label, points), colour) in panel.lines.iter().zip(COLOURS.iter().cycle()) {
            let style = ShapeStyle::from(*colour).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(|error| error.to_string())?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT_FAMILY, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(|error| error.to_string())?;
    }
    root.present().map_err(|error| error.to_string())
}

/// The panels, from [`PAIRS`]: one per direct scenario, captioned with the
/// first pair's name, with the direct scenario and every meshed one
/// compared with it.
fn panels() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut panels: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (pair, mesh, direct) in PAIRS {
        match panels
            .iter_mut()
            .find(|(_, scenarios)| scenarios.first() == Some(&direct))
        {
            Some((_, scenarios)) => scenarios.push(mesh),
            None => panels.push((pair, vec![direct, mesh])),
        }
    }
    panels
}

/// The time axis: every curve's whole range, a little margin each side;
/// 1–1000 µs when there are none.
fn x_range(report: &Report) -> (f64, f64) {
    let all_us = report
        .scenarios
        .iter()
        .filter_map(|s| s.rr_1b_cdf.as_ref())
        .flat_map(|cdf| cdf.points.iter().map(|&[_, us]| us))
        .filter(|us| *us > 0.0);
    let (min, max) = all_us.fold((f64::INFINITY, 0.0_f64), |(min, max), us| {
        (min.min(us), max.max(us))
    });
    if min.is_finite() && max > min {
        // From a power of ten: plotters puts ticks at its multiples.
        (10_f64.powf((min * 0.9).log10().floor()), max * 1.1)
    } else {
        (1.0, 1000.0)
    }
}

/// Labels 1, 2 and 5 times a power of ten; the other ticks only get a
/// grid line, so the labels do not crowd.
fn tick_label(us: f64) -> String {
    let leading = us / 10_f64.powf(us.log10().floor());
    if [1.0, 2.0, 5.0]
        .iter()
        .any(|digit| (leading - digit).abs() < 1e-6)
    {
        format!("{us:.0}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AuthzReport, Durations, LatencyCdf, ScenarioReport, median_report};

    fn scenario(name: &'static str, scale: f64) -> ScenarioReport {
        let mut report = median_report(name, false, "c".into(), "s".into(), Vec::new());
        report.rr_1b_cdf = Some(LatencyCdf {
            run: 1,
            points: (1..=1000)
                .map(|permille| {
                    let fraction = f64::from(permille) / 1000.0;
                    [fraction, scale * (1.0 + 4.0 * fraction.powi(8))]
                })
                .collect(),
        });
        report
    }

    #[test]
    fn each_panel_has_both_meshed_paths() {
        let panels = panels();
        assert_eq!(panels.len(), 2);
        assert_eq!(
            panels[0],
            (
                "cross-node",
                vec![
                    "direct-cross-node",
                    "mesh-cross-node",
                    "mesh-cross-node-kernel"
                ]
            )
        );
        assert_eq!(
            panels[1],
            (
                "same-node",
                vec![
                    "direct-same-node",
                    "mesh-same-node",
                    "mesh-same-node-kernel"
                ]
            )
        );
    }

    #[test]
    fn draws_a_png() {
        if let Err(error) = load_font() {
            eprintln!("SKIPPED: {error}");
            return;
        }
        let durations = Durations::example();
        // No cross-node scenarios: that panel says so.
        let scenarios = vec![
            scenario("direct-same-node", 10.0),
            scenario("mesh-same-node", 40.0),
            scenario("mesh-same-node-kernel", 8.0),
        ];
        let report = Report::new(
            true,
            3,
            1000,
            durations,
            scenarios,
            AuthzReport::example(),
            Vec::new(),
        );
        let path =
            std::env::temp_dir().join(format!("ambit-bench-plot-{}.png", std::process::id()));
        latency_cdf(&report, &path).expect("draws");
        let png = std::fs::read(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 10_000, "{} bytes", png.len());
    }
}
