//! The soak's plots: `soak-processes.png` (each process figure, one panel
//! each, a line per agent node and the waypoint) and `soak-maps.png` (each
//! eBPF map's entries, a line per node), over minutes, with the handoffs
//! as dashed lines.

use std::path::Path;

use super::report::{MAP_PLOT, PROCESS_PLOT, SeriesReport, SoakReport};
use super::sample;
use crate::plot;

/// Writes the plots into `out_dir`.
pub fn draw(report: &SoakReport, out_dir: &Path) -> Result<(), String> {
    let markers: Vec<f64> = report.handoffs.iter().map(|h| h.at_secs / 60.0).collect();
    let line = |series: &SeriesReport| {
        let who = series.name.split(':').next().unwrap_or_default().to_owned();
        let points = series
            .points
            .iter()
            .map(|p| (p.t_secs / 60.0, p.value))
            .collect();
        (who, points)
    };
    let panels_of = |figures: Vec<String>, of: &dyn Fn(&SeriesReport, &str) -> bool| {
        figures
            .into_iter()
            .map(|figure| plot::Panel {
                lines: report
                    .series
                    .iter()
                    .filter(|s| of(s, &figure))
                    .map(line)
                    .collect(),
                title: figure,
            })
            .collect::<Vec<_>>()
    };
    let process_figures = sample::PROCESS_FIGURES.map(|(f, _)| f.to_owned()).to_vec();
    let processes = panels_of(process_figures, &|s, figure| {
        !s.name.contains(" maps: ") && s.name.ends_with(figure)
    });
    let mut maps: Vec<String> = report
        .series
        .iter()
        .filter_map(|s| Some(s.name.split_once(" maps: ")?.1.to_owned()))
        .collect();
    maps.sort();
    maps.dedup();
    let maps = panels_of(maps, &|s, figure| {
        s.name.contains(" maps: ") && s.name.ends_with(figure)
    });
    let title = |what: &str| {
        format!(
            "Churn soak, {} min: {what} (dashed: handoffs)",
            report.minutes
        )
    };
    plot::time_series(
        &out_dir.join(PROCESS_PLOT),
        &title("agents and waypoint"),
        &processes,
        2,
        &markers,
    )?;
    plot::time_series(
        &out_dir.join(MAP_PLOT),
        &title("eBPF map entries"),
        &maps,
        3,
        &markers,
    )
}
