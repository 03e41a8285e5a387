//! The side-by-side table and the verdicts.

use cni_testbed::percentile;

use crate::side::{PhaseStats, SideReport};

/// Performance targets as tailroute/reference ratios.
#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

struct Row {
    label: String,
    values: [Option<f64>; 2],
    decimals: usize,
    ratio: bool,
    target: Option<Target>,
}

fn pick(s: &SideReport, which: usize) -> &PhaseStats {
    [&s.serial_add, &s.serial_del, &s.conc_add, &s.conc_del][which]
}

/// None when no call succeeded: "-" reads better than a fake 0.00.
fn ms(p: &PhaseStats, pct: f64) -> Option<f64> {
    (!p.latencies.is_empty()).then(|| percentile(&p.latencies, pct).as_secs_f64() * 1e3)
}

fn rows(sides: [Option<&SideReport>; 2], c: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add =
        |label: String, decimals, ratio, target, f: &dyn Fn(&SideReport) -> Option<f64>| {
            rows.push(Row {
                label,
                values: sides.map(|s| s.and_then(f)),
                decimals,
                ratio,
                target,
            });
        };
    let latency = [
        ("ADD serial", 0, Some(Target::AtMost(0.3))),
        ("DEL serial", 1, Some(Target::AtMost(0.8))),
        ("ADD @C", 2, None),
        ("DEL @C", 3, None),
    ];
    for (name, which, p50_target) in latency {
        for pct in [50.0, 90.0, 99.0] {
            let target = if pct == 50.0 { p50_target } else { None };
            let label = format!("{name} p{pct} (ms)").replace("@C", &format!("@{c}"));
            add(label, 2, true, target, &move |s| ms(pick(s, which), pct));
        }
    }
    add(
        format!("ADD/s @ C={c}"),
        1,
        true,
        Some(Target::AtLeast(3.0)),
        &|s| Some(s.conc_add.per_sec),
    );
    add(format!("DEL/s @ C={c}"), 1, true, None, &|s| {
        Some(s.conc_del.per_sec)
    });
    add("ADD/s serial".into(), 1, true, None, &|s| {
        Some(s.serial_add.per_sec)
    });
    add("peak RSS, own (KiB)".into(), 0, true, None, &|s| {
        Some(s.own_peak_rss_kib as f64)
    });
    add("ru_maxrss in runs (KiB)".into(), 0, true, None, &|s| {
        Some(s.peak_rss_kib as f64)
    });
    add("failures".into(), 0, false, None, &|s| {
        Some(s.failures as f64)
    });
    add("duplicate IPs".into(), 0, false, None, &|s| {
        Some(s.duplicates as f64)
    });
    add("links gone, serial (ms)".into(), 1, false, None, &|s| {
        Some(s.teardown_ms[0])
    });
    add(format!("links gone, @{c} (ms)"), 1, false, None, &|s| {
        Some(s.teardown_ms[1])
    });
    add("leftovers".into(), 0, false, None, &|s| {
        Some(s.leftovers.len() as f64)
    });
    add("dataDir files at end".into(), 0, false, None, &|s| {
        Some(s.data_dir_listing.0 as f64)
    });
    add("dataDir bytes at end".into(), 0, false, None, &|s| {
        Some(s.data_dir_listing.1 as f64)
    });
    rows
}

fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// One table line; trailing blanks trimmed.
fn line(c: [&str; 6]) {
    let text = format!(
        "{:<22} {:>11} {:>11} {:>9}  {:<9} {}",
        c[0], c[1], c[2], c[3], c[4], c[5]
    );
    println!("{}", text.trim_end());
}

/// Prints the table; returns (targets met, targets evaluated).
pub fn print(sides: [Option<&SideReport>; 2], concurrency: usize) -> (usize, usize) {
    let (mut met, mut evaluated) = (0, 0);
    line([
        "metric",
        "reference",
        "tailroute",
        "t/r",
        "target",
        "verdict",
    ]);
    println!("{}", "-".repeat(76));
    for row in rows(sides, concurrency) {
        let ratio = match row.values {
            [Some(r), Some(t)] if row.ratio && r > 0.0 => Some(t / r),
            _ => None,
        };
        let (target, verdict) = match row.target {
            None => (String::new(), String::new()),
            Some(t) => {
                let (text, ok) = match t {
                    Target::AtMost(x) => (format!("<= {x:.2}x"), ratio.map(|r| r <= x)),
                    Target::AtLeast(x) => (format!(">= {x:.2}x"), ratio.map(|r| r >= x)),
                };
                let verdict = match ok {
                    Some(true) => "MET",
                    Some(false) => "MISSED",
                    None => "n/a",
                };
                if let Some(ok) = ok {
                    evaluated += 1;
                    met += usize::from(ok);
                }
                (text, verdict.to_owned())
            }
        };
        line([
            &row.label,
            &cell(row.values[0], row.decimals),
            &cell(row.values[1], row.decimals),
            &ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            &target,
            &verdict,
        ]);
    }
    (met, evaluated)
}

/// Prints failure and leftover details of one side, if any.
pub fn print_problems(label: &str, s: &SideReport) {
    for note in &s.failure_notes {
        println!("{label} failure: {note}");
    }
    if s.failures > s.failure_notes.len() {
        println!("{label}: ... {} failures in all", s.failures);
    }
    for l in s.leftovers.iter().take(5) {
        println!("{label} leftover: {l}");
    }
    if s.leftovers.len() > 5 {
        println!("{label}: ... {} leftovers in all", s.leftovers.len());
    }
}
