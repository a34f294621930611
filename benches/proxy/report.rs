//! Medians with min–max over alternating runs, and the one summary table (Markdown) with each
//! figure's ratio to direct connections and to the better HAProxy mode.

use std::fmt::Write as _;

use crate::targets::{Kind, KINDS};

/// Which way a figure improves; picks the "better" HAProxy mode per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// Median and range of one figure over its samples.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// `median (min–max)`, with the sample count when it differs from `expected`.
    pub fn show(&self, expected: usize) -> String {
        let mut s = if self.n == 1 {
            num(self.median)
        } else {
            format!("{} ({}–{})", num(self.median), num(self.min), num(self.max))
        };
        if self.n != expected {
            let _ = write!(s, " [n={}]", self.n);
        }
        s
    }
}

/// The `q` quantile (0..=1) of `v`, nearest rank.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// A number with as many decimals as its size deserves.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Samples of one figure, per column.
#[derive(Default)]
pub struct Samples([Vec<f64>; 4]);

impl Samples {
    pub fn push(&mut self, kind: Kind, v: f64) {
        self.0[kind.index()].push(v);
    }

    pub fn get(&self, kind: Kind) -> &[f64] {
        &self.0[kind.index()]
    }
}

/// One row of the summary table.
pub struct Row {
    pub metric: String,
    pub better: Better,
    /// Whether a ratio to direct connections means anything (not for proxy-only figures or
    /// added latency, where direct is 0 by definition).
    pub vs_direct: bool,
    /// Samples expected per cell (the number of runs, or of flips).
    pub expected: usize,
    pub cells: [Option<Stat>; 4],
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Free-form lines printed under the table (what limited a figure, failures).
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a row from per-column samples, and prints it at once as the case's result.
    pub fn add(
        &mut self,
        metric: impl Into<String>,
        better: Better,
        vs_direct: bool,
        expected: usize,
        s: &Samples,
    ) {
        let row = Row {
            metric: metric.into(),
            better,
            vs_direct,
            expected,
            cells: KINDS.map(|k| Stat::of(s.get(k))),
        };
        let mut line = format!("  = {}:", row.metric);
        for k in KINDS {
            if let Some(st) = &row.cells[k.index()] {
                let _ = write!(line, "  {} {}", k.label(), st.show(expected));
            }
        }
        println!("{line}");
        self.rows.push(row);
    }

    pub fn note(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("  note: {line}");
        self.notes.push(line);
    }

    /// The summary table in Markdown, then the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| figure | direct | splicer | HAProxy splice-auto | HAProxy splice forced \
             | splicer ÷ direct | splicer ÷ better HAProxy |\n",
        );
        out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
        for r in &self.rows {
            let cell = |k: Kind| {
                r.cells[k.index()]
                    .map(|s| s.show(r.expected))
                    .unwrap_or_else(|| "–".to_owned())
            };
            let splicer = r.cells[Kind::Splicer.index()].map(|s| s.median);
            let direct = r.cells[Kind::Direct.index()]
                .map(|s| s.median)
                .filter(|_| r.vs_direct);
            let haproxy = [Kind::HaproxyAuto, Kind::HaproxySplice]
                .iter()
                .filter_map(|k| r.cells[k.index()].map(|s| s.median))
                .reduce(|a, b| match r.better {
                    Better::Higher => a.max(b),
                    Better::Lower => a.min(b),
                });
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
                _ => "–".to_owned(),
            };
            let arrow = match r.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let _ = writeln!(
                out,
                "| {} {arrow} | {} | {} | {} | {} | {} | {} |",
                r.metric,
                cell(Kind::Direct),
                cell(Kind::Splicer),
                cell(Kind::HaproxyAuto),
                cell(Kind::HaproxySplice),
                ratio(splicer, direct),
                ratio(splicer, haproxy),
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}
