//! Line charts as inline SVG, written by hand: a few polylines, axes with
//! round ticks and a legend (smaller than any charting crate, and nothing
//! to load when the report is opened).

use std::fmt::Write;

/// One line of a chart.
pub struct Series {
    pub name: &'static str,
    pub color: &'static str,
    /// (seconds, value), in time order.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 920.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// A chart of `series` over time, `unit` naming the y axis.
pub fn line_chart(title: &str, unit: &str, series: &[Series]) -> String {
    let t_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    // four gridlines at round steps
    let y_max = 4.0
        * nice_ceiling(
            series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0.0_f64, f64::max)
                / 4.0,
        );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(title)
    );
    // grid and y ticks
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#e3e6ea"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            WIDTH - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            short(v)
        );
    }
    // x ticks
    let step = nice_ceiling(t_max / 6.0).max(1.0);
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
            x(t),
            HEIGHT - BOTTOM + 16.0,
            short_time(t)
        );
        t += step;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">time since the start</text><text x="14" y="{:.1}" text-anchor="middle" class="axis" transform="rotate(-90 14 {:.1})">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 4.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(unit)
    );
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let mut points = String::new();
        for (t, v) in &s.points {
            let _ = write!(points, "{:.1},{:.1} ", x(*t), y(*v));
        }
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round" points="{}"/>"#,
            s.color,
            points.trim_end()
        );
    }
    // legend, top right
    let mut lx = WIDTH - RIGHT;
    for s in series.iter().rev() {
        // 12px text: about 7.5px a character, then a gap
        lx -= 28.0 + 7.5 * s.name.chars().count() as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="{}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{}" class="legend">{}</text>"#,
            TOP - 12.0,
            s.color,
            lx + 13.0,
            TOP - 3.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v` (1 for nothing).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * magnitude >= v {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

/// 1200 → "1.2k".
fn short(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if v >= 1_000.0 {
        format!("{:.1}k", v / 1_000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 75 → "1m15s".
fn short_time(t: f64) -> String {
    let s = t.round() as u64;
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_lines_are_drawn() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
        assert_eq!(nice_ceiling(2100.0), 2500.0);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short_time(75.0), "1m15s");
        let svg = line_chart(
            "resources/s",
            "resources/s",
            &[Series {
                name: "settled",
                color: "#1f77b4",
                points: vec![(0.0, 0.0), (1.0, 50.0), (2.0, 40.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(svg.contains(">settled<"), "{svg}");
    }
}
