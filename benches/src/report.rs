//! Figures, goals and the markdown table printed at the end.
//!
//! A scenario run returns a [`Report`]: named figures (some with a goal) and notes saying how
//! they were measured. Several runs of the same scenario are combined into one row per
//! figure with the median and the range ([`Table`]).

use std::fmt::Write as _;

/// What a figure should reach.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    /// At least this much (throughputs, ratios).
    AtLeast(f64),
    /// At most this much (latencies, memory).
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Self::AtLeast(goal) => value >= goal,
            Self::AtMost(goal) => value <= goal,
        }
    }

    fn describe(self, unit: &str) -> String {
        match self {
            Self::AtLeast(goal) => format!("≥ {} {unit}", number(goal)),
            Self::AtMost(goal) => format!("≤ {} {unit}", number(goal)),
        }
    }

    /// How far `value` is from the goal, as a signed percentage of the goal.
    fn shortfall(self, value: f64) -> f64 {
        match self {
            Self::AtLeast(goal) | Self::AtMost(goal) => (value / goal - 1.0) * 100.0,
        }
    }
}

/// One measured number.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// The scenario (`appends`, `latency`, …).
    pub scenario: String,
    /// What was measured (`group commit`, `p99`, …).
    pub measure: String,
    /// The value.
    pub value: f64,
    /// Its unit (`ev/s`, `ms`, `×`, …).
    pub unit: String,
    /// The goal, if the issue set one.
    pub goal: Option<Goal>,
}

/// What one run of one scenario measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The figures, in the order they should be shown.
    pub figures: Vec<Figure>,
    /// How they were measured (load, normalisation, caveats).
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a figure without a goal.
    pub fn add(&mut self, scenario: &str, measure: impl Into<String>, value: f64, unit: &str) {
        self.figures.push(Figure {
            scenario: scenario.to_owned(),
            measure: measure.into(),
            value,
            unit: unit.to_owned(),
            goal: None,
        });
    }

    /// Adds a figure with a goal.
    pub fn add_goal(
        &mut self,
        scenario: &str,
        measure: impl Into<String>,
        value: f64,
        unit: &str,
        goal: Goal,
    ) {
        self.add(scenario, measure, value, unit);
        if let Some(figure) = self.figures.last_mut() {
            figure.goal = Some(goal);
        }
    }

    /// Adds a note (shown once under the table even if several runs repeat it).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Appends another report's figures and notes.
    pub fn extend(&mut self, other: Self) {
        self.figures.extend(other.figures);
        self.notes.extend(other.notes);
    }
}

/// Several runs' figures combined: one row per `(scenario, measure)`.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Row {
    scenario: String,
    measure: String,
    unit: String,
    goal: Option<Goal>,
    values: Vec<f64>,
}

impl Table {
    /// Adds one run's figures.
    pub fn add_run(&mut self, report: &Report) {
        for figure in &report.figures {
            let row = self
                .rows
                .iter_mut()
                .find(|row| row.scenario == figure.scenario && row.measure == figure.measure);
            match row {
                Some(row) => row.values.push(figure.value),
                None => self.rows.push(Row {
                    scenario: figure.scenario.clone(),
                    measure: figure.measure.clone(),
                    unit: figure.unit.clone(),
                    goal: figure.goal,
                    values: vec![figure.value],
                }),
            }
        }
        for note in &report.notes {
            if !self.notes.contains(note) {
                self.notes.push(note.clone());
            }
        }
    }

    /// The median of a figure over the runs, if it was measured.
    pub fn median(&self, scenario: &str, measure: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|row| row.scenario == scenario && row.measure == measure)
            .map(|row| median(&row.values))
    }

    /// Whether every figure with a goal met it (by its median).
    pub fn all_goals_met(&self) -> bool {
        self.rows
            .iter()
            .all(|row| row.goal.is_none_or(|goal| goal.met(median(&row.values))))
    }

    /// The markdown table and the notes under it.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| scenario | measure | median | runs (min – max) | goal | met |\n");
        out.push_str("| --- | --- | ---: | --- | --- | --- |\n");
        for row in &self.rows {
            let median = median(&row.values);
            let (min, max) = row
                .values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(*v), hi.max(*v))
                });
            let spread = if row.values.len() == 1 {
                "1 run".to_owned()
            } else {
                format!("{}: {} – {}", row.values.len(), number(min), number(max))
            };
            let (goal, met) = match row.goal {
                None => (String::new(), String::new()),
                Some(goal) if goal.met(median) => (goal.describe(&row.unit), "yes".to_owned()),
                Some(goal) => (
                    goal.describe(&row.unit),
                    format!("**no** ({:+.0}%)", goal.shortfall(median)),
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {spread} | {goal} | {met} |",
                row.scenario,
                row.measure,
                number(median),
                row.unit,
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

/// The median (mean of the two middle values for an even count; NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A number for people: thousands separated, decimals only where they matter.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let abs = value.abs();
    if abs >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if abs >= 100.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(-4_000.0), "-4,000");
        assert_eq!(number(512.4), "512");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(0.634), "0.63");
    }

    #[test]
    fn medians_and_goals() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut table = Table::default();
        for value in [40_000.0, 60_000.0, 45_000.0] {
            let mut report = Report::default();
            report.add_goal("appends", "group", value, "ev/s", Goal::AtLeast(50_000.0));
            report.note("same note every run");
            table.add_run(&report);
        }
        assert_eq!(table.median("appends", "group"), Some(45_000.0));
        assert!(!table.all_goals_met());
        let text = table.markdown();
        assert!(text.contains("| appends | group | 45,000 ev/s | 3: 40,000 – 60,000 |"));
        assert!(text.contains("**no** (-10%)"));
        assert_eq!(text.matches("same note every run").count(), 1);
    }
}
