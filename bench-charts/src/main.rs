//! `bench-charts SWEEPS.jsonl OUT_DIR`: draws the sweeps of `scripts/bench.sh` as SVG charts,
//! one per swept variable: throughput on the left, p50 and p99 latency on the right, the raw
//! AMQP limit and fib-rpc on the same axes.
//!
//! Each input line is `{"sweep": NAME, "x": VALUE, "bench": <fib-bench --json output>}`.

use anyhow::{bail, Context};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One side's figures at one point of a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    calls_per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

/// One point of a sweep: the swept value, and both sides measured there.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    x: f64,
    raw: Figures,
    rpc: Figures,
}

/// How each sweep is named on its chart.
fn axis_name(sweep: &str) -> &str {
    match sweep {
        "in-flight" => "calls in flight (one client thread)",
        "body" => "request and reply body (bytes)",
        "processes" => "client processes (one call in flight each)",
        other => other,
    }
}

/// The sweeps in `text`, by name, their points in the order of their x.
fn parse(text: &str) -> anyhow::Result<BTreeMap<String, Vec<Point>>> {
    let mut sweeps: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let context = || format!("line {}", number + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(context)?;
        let sweep = value["sweep"]
            .as_str()
            .context("no sweep")
            .with_context(context)?;
        let x = value["x"].as_f64().context("no x").with_context(context)?;
        let figures = |side: &str| -> anyhow::Result<Figures> {
            let report = &value["bench"][side];
            let number = |key: &str| {
                report[key]
                    .as_f64()
                    .with_context(|| format!("no {side}.{key}"))
            };
            Ok(Figures {
                calls_per_second: number("calls_per_second")?,
                p50_us: number("p50_us")?,
                p99_us: number("p99_us")?,
            })
        };
        let point = Point {
            x,
            raw: figures("raw").with_context(context)?,
            rpc: figures("rpc").with_context(context)?,
        };
        sweeps.entry(sweep.to_owned()).or_default().push(point);
    }
    for points in sweeps.values_mut() {
        points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    Ok(sweeps)
}

const RAW: RGBColor = RGBColor(31, 119, 180);
const RPC: RGBColor = RGBColor(214, 39, 40);
/// The p99 lines: each side's colour, lighter.
const RAW_TAIL: RGBColor = RGBColor(158, 202, 225);
const RPC_TAIL: RGBColor = RGBColor(252, 146, 114);

/// One chart of one sweep into `backend`.
fn draw<DB: DrawingBackend>(backend: DB, sweep: &str, points: &[Point]) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        bail!("sweep {sweep} has no points");
    };
    if first.x <= 0.0 {
        bail!(
            "sweep {sweep} has an x of {} (the axis is logarithmic)",
            first.x
        );
    }
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("fib-rpc beside the raw AMQP limit: {}", axis_name(sweep)),
        ("sans-serif", 18),
    )?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let x_range = (first.x * 0.8..last.x * 1.25).log_scale();
    let most_calls = points
        .iter()
        .map(|p| p.raw.calls_per_second.max(p.rpc.calls_per_second))
        .fold(0.0, f64::max);
    panel(
        &left,
        sweep,
        x_range.clone(),
        0.0..most_calls * 1.1,
        "calls/s",
        points,
        &[
            ("raw", RAW, |f| f.calls_per_second),
            ("fib-rpc", RPC, |f| f.calls_per_second),
        ],
    )?;
    let fastest = points
        .iter()
        .map(|p| p.raw.p50_us.min(p.rpc.p50_us))
        .fold(f64::INFINITY, f64::min);
    let slowest = points
        .iter()
        .map(|p| p.raw.p99_us.max(p.rpc.p99_us))
        .fold(1.0, f64::max);
    panel(
        &right,
        sweep,
        x_range,
        (fastest.max(1.0) * 0.8..slowest * 1.25).log_scale(),
        "latency (µs)",
        points,
        &[
            ("raw p50", RAW, |f| f.p50_us),
            ("raw p99", RAW_TAIL, |f| f.p99_us),
            ("fib-rpc p50", RPC, |f| f.p50_us),
            ("fib-rpc p99", RPC_TAIL, |f| f.p99_us),
        ],
    )?;
    root.present()?;
    Ok(())
}

/// A line's name, colour, and the figure it plots.
type Line = (&'static str, RGBColor, fn(&Figures) -> f64);

/// One panel: every line in `lines` for both sides, where a name starting "raw" reads the raw
/// side's figures and any other fib-rpc's.
fn panel<DB, X, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    sweep: &str,
    x_range: X,
    y_range: Y,
    y_name: &str,
    points: &[Point],
    lines: &[Line],
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)?;
    chart
        .configure_mesh()
        .x_desc(axis_name(sweep))
        .y_desc(y_name)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()?;
    for &(name, color, figure) in lines {
        let side = |point: &Point| match name.starts_with("raw") {
            true => point.raw,
            false => point.rpc,
        };
        let series: Vec<(f64, f64)> = points.iter().map(|p| (p.x, figure(&side(p)))).collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(
            series
                .into_iter()
                .map(|xy| Circle::new(xy, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// A tick label: 1500 → 1.5k, 2000000 → 2M.
fn short(value: f64) -> String {
    let (scaled, suffix) = match value.abs() {
        v if v >= 1e6 => (value / 1e6, "M"),
        v if v >= 1e3 => (value / 1e3, "k"),
        _ => (value, ""),
    };
    let text = format!("{scaled:.1}");
    format!("{}{suffix}", text.trim_end_matches(".0"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out] = args.as_slice() else {
        bail!("usage: bench-charts SWEEPS.jsonl OUT_DIR");
    };
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
    let sweeps = parse(&text).with_context(|| format!("reading {input}"))?;
    if sweeps.is_empty() {
        bail!("{input} holds no sweep");
    }
    for (sweep, points) in &sweeps {
        let path = Path::new(out).join(format!("{sweep}.svg"));
        draw(SVGBackend::new(&path, (1100, 440)), sweep, points)
            .with_context(|| format!("drawing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sweep: &str, x: u32, raw: f64, rpc: f64) -> String {
        let side = |rate: f64| {
            format!(
                r#"{{"calls_per_second":{rate},"p50_us":{},"p99_us":{}}}"#,
                1e6 / rate,
                3e6 / rate
            )
        };
        format!(
            r#"{{"sweep":"{sweep}","x":{x},"bench":{{"raw":{},"rpc":{}}}}}"#,
            side(raw),
            side(rpc)
        )
    }

    #[test]
    fn sweeps_are_grouped_and_ordered_by_x() {
        let text = [
            line("in-flight", 8, 9000.0, 8500.0),
            String::new(),
            line("body", 10, 3000.0, 2900.0),
            line("in-flight", 1, 3000.0, 2800.0),
        ]
        .join("\n");
        let sweeps = parse(&text).unwrap();
        let xs: Vec<f64> = sweeps["in-flight"].iter().map(|p| p.x).collect();
        assert_eq!(xs, [1.0, 8.0]);
        assert_eq!(sweeps["in-flight"][1].rpc.calls_per_second, 8500.0);
        assert_eq!(sweeps["body"].len(), 1);
    }

    #[test]
    fn a_line_without_a_side_names_what_is_missing() {
        let error = parse(r#"{"sweep":"body","x":10,"bench":{"raw":null,"rpc":{}}}"#).unwrap_err();
        assert!(format!("{error:#}").contains("line 1"), "{error:#}");
        assert!(
            format!("{error:#}").contains("raw.calls_per_second"),
            "{error:#}"
        );
    }

    #[test]
    fn a_chart_holds_both_sides_and_the_swept_axis() {
        let text = [1, 4, 16].map(|x| line("processes", x, 1000.0 * x as f64, 900.0 * x as f64));
        let sweeps = parse(&text.join("\n")).unwrap();
        let mut svg = String::new();
        draw(
            SVGBackend::with_string(&mut svg, (1100, 440)),
            "processes",
            &sweeps["processes"],
        )
        .unwrap();
        for label in ["raw p99", "fib-rpc p50", "client processes", "calls/s"] {
            assert!(svg.contains(label), "{label} not in the chart");
        }
        // A dot per point on each of the six lines.
        assert_eq!(svg.matches("<circle").count(), 3 * 6);
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert_eq!(short(12.0), "12");
    }
}
