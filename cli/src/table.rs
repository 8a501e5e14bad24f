//! Tables for people, and the one switch between table, JSON and YAML.

use std::fmt::{Display, Write as _};

use clap::ValueEnum;
use serde::Serialize;

/// Output format of listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON, as the admin API serves it.
    Json,
    /// YAML.
    Yaml,
}

/// Renders `value` as `output` asks; `table` makes the table form.
pub fn output<T: Serialize + ?Sized>(
    value: &T,
    output: Output,
    table: impl FnOnce(&T) -> String,
) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        Output::Yaml => serde_yaml::to_string(value).unwrap_or_default(),
        Output::Table => table(value),
    }
}

/// Rows as aligned columns under a header; the last column is not padded.
#[must_use]
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `-` for nothing.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_lines_not_padded_at_the_end() {
        let out = render(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "ambit_connect4".into()],
                vec!["123".into(), "x".into()],
            ],
        );
        assert_eq!(out, "ID   NAME\n1    ambit_connect4\n123  x\n");
    }

    #[test]
    fn output_switches_between_formats() {
        let value = vec![1, 2];
        let table = |_: &Vec<i32>| "table\n".to_owned();
        assert_eq!(output(&value, Output::Table, table), "table\n");
        assert_eq!(output(&value, Output::Json, table), "[\n  1,\n  2\n]\n");
        assert_eq!(output(&value, Output::Yaml, table), "- 1\n- 2\n");
    }
}
