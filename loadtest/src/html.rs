//! The HTML report: one self-contained page (inline CSS and SVG, no script, nothing fetched)
//! with the summary, latency over time, the percentile distributions, the server's RSS and CPU,
//! the per-stage times and the objectives.

use std::fmt::Write as _;

use crate::report::{Latency, RunReport};

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of a plot.
struct Series<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
}

/// Axis ticks: about `n` round values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 && out.len() < 50 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A line plot. `log_y`: logarithmic y axis (latencies spanning decades). `band`: an x range
/// shaded (the measured window). `x_label_of`: tick label for an x value.
fn plot(
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    log_y: bool,
    band: Option<(f64, f64)>,
    x_label_of: &dyn Fn(f64) -> String,
    x_ticks: Option<Vec<f64>>,
) -> String {
    let mut svg = String::new();
    let all: Vec<(f64, f64)> =
        series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let _ = write!(svg, "<figure><figcaption>{}</figcaption>", esc(title));
    if all.is_empty() {
        svg.push_str("<p class=\"none\">no data</p></figure>");
        return svg;
    }
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    if let Some((b0, b1)) = band {
        x0 = x0.min(b0);
        x1 = x1.max(b1);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let ty = |v: f64| if log_y { v.max(1e-3).log10() } else { v };
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(ty(p.1)), b.max(ty(p.1))));
    if log_y {
        y0 = y0.floor();
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = 0.0_f64.min(y0);
        y1 = if y1 <= y0 { y0 + 1.0 } else { y1 * 1.05 };
    }
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - (ty(y) - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"#fff\" stroke=\"#ccc\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    if let Some((b0, b1)) = band {
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{}\" fill=\"#eef5ee\"><title>measured window</title></rect>",
            px(b0),
            (px(b1) - px(b0)).max(0.0),
            H - TOP - BOTTOM
        );
    }
    // y grid and labels
    let y_ticks: Vec<f64> =
        if log_y { (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect() } else { ticks(y0, y1, 5) };
    for t in y_ticks {
        let y = py(t);
        let _ = write!(svg, "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>", W - RIGHT);
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" class=\"tick\">{}</text>",
            LEFT - 4.0,
            y + 4.0,
            fmt_num(t)
        );
    }
    for t in x_ticks.unwrap_or_else(|| ticks(x0, x1, 8)) {
        let x = px(t);
        let _ =
            write!(svg, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#f3f3f3\"/>", H - BOTTOM);
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" class=\"tick\">{}</text>",
            H - BOTTOM + 14.0,
            esc(&x_label_of(t))
        );
    }
    let _ = write!(
        svg,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\" class=\"axis\">{}</text>",
        H / 2.0,
        H / 2.0,
        esc(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if pts.len() == 1 {
            let _ = write!(svg, "<circle cx=\"{}\" r=\"3\" fill=\"{colour}\"/>", pts[0].replace(',', "\" cy=\""));
        }
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\" points=\"{}\"><title>{}</title></polyline>",
            pts.join(" "),
            esc(s.name)
        );
        let lx = LEFT + 10.0 + i as f64 * 130.0;
        let _ = write!(svg, "<rect x=\"{lx:.1}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{colour}\"/>", H - 12.0);
        let _ = write!(svg, "<text x=\"{:.1}\" y=\"{}\" class=\"legend\">{}</text>", lx + 16.0, H - 8.0, esc(s.name));
    }
    svg.push_str("</svg></figure>");
    svg
}

/// x position of a percentile on a "nines" axis: 0 at p0, 1 at p90, 2 at p99, ...
fn nines(p: f64) -> f64 {
    let rest = (100.0 - p).max(1e-4);
    (100.0 / rest).log10()
}

fn latency_row(name: &str, l: &Option<Latency>) -> String {
    match l {
        Some(l) => format!(
            "<tr><th>{}</th><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            esc(name),
            l.count,
            l.mean_ms,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        ),
        None => String::new(),
    }
}

/// The page.
pub fn render(r: &RunReport) -> String {
    let mut h = String::new();
    let title = format!("Vigil load test: {} ({})", r.scenario, r.started_at);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:900px}}\
         table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}\
         th{{background:#f6f6f6;text-align:left}}figure{{margin:16px 0}}figcaption{{font-weight:600;margin-bottom:4px}}\
         .tick{{font-size:10px;fill:#555}}.axis{{font-size:11px;fill:#333}}.legend{{font-size:11px;fill:#333}}\
         .ok{{color:#1a7f37}}.fail{{color:#c62828;font-weight:600}}.none{{color:#888}}</style></head><body>",
        esc(&title)
    );
    let _ = write!(h, "<h1>{}</h1><p>{}</p>", esc(&title), esc(&r.description));
    let machine: Vec<String> = r.machine.iter().map(|(k, v)| format!("{}: {}", esc(k), esc(v))).collect();
    let _ = write!(h, "<p>Target <b>{}</b>; {}.</p>", esc(&r.target), machine.join("; "));
    let l = &r.config.load;
    let _ = write!(
        h,
        "<p>Offered {:.0} msg/s over {} MLLP connections to {} patients; ramp {} s, warm-up {} s, measured {} s \
         (window {:.0}-{:.0} s from the start), {} pacing. Latency counts from each message's intended send time (open loop).</p>",
        r.offered_rate,
        l.connections,
        r.config.patients(),
        l.ramp_s,
        l.warmup_s,
        l.duration_s,
        r.window_s.0,
        r.window_s.1,
        l.pacing.name()
    );
    h.push_str("<h2>Summary</h2><table>");
    let _ = write!(h, "<tr><th>sent / acked</th><td>{} / {}</td></tr>", r.sent, r.acked);
    let _ = write!(h, "<tr><th>throughput (measured window)</th><td>{:.1} msg/s</td></tr>", r.throughput);
    if let Some(b) = &r.baseline {
        let _ = write!(h, "<tr><th>echo baseline, same run</th><td>{:.1} msg/s</td></tr>", b.throughput);
        let _ = write!(h, "<tr><th>fraction of echo</th><td>{:.1} %</td></tr>", b.fraction * 100.0);
    }
    if let Some(f) = r.fhir_throughput {
        let _ = write!(h, "<tr><th>FHIR Observations stored</th><td>{f:.1} /s</td></tr>");
    }
    let _ = write!(h, "<tr><th>errors</th><td>{}</td></tr>", r.error_total);
    for (kind, n) in &r.errors {
        let _ = write!(h, "<tr><th>&nbsp;&nbsp;{}</th><td>{n}</td></tr>", esc(kind));
    }
    for (code, n) in &r.by_code {
        let _ = write!(h, "<tr><th>MSA-1 {}</th><td>{n}</td></tr>", esc(code));
    }
    if r.alerts_expected > 0 {
        let _ = write!(
            h,
            "<tr><th>alerts expected / alert frames received</th><td>{} / {}</td></tr>",
            r.alerts_expected, r.alert_frames
        );
    }
    for a in r.slowest_alerts.iter().take(crate::load::SlowAlert::SHOWN) {
        let _ = write!(
            h,
            "<tr><th>slow alert, sent at {:.2} s</th><td>{} ms (each console)</td></tr>",
            a.at_s,
            a.ms_text(" / ")
        );
    }
    if let Some(u) = &r.server {
        let _ = write!(h, "<tr><th>server peak RSS</th><td>{:.1} MiB</td></tr>", u.peak_rss_mib);
        let _ = write!(h, "<tr><th>server mean CPU (window)</th><td>{:.0} % of a core</td></tr>", u.mean_cpu_pct);
    }
    h.push_str("</table>");
    if !r.slo.is_empty() {
        h.push_str("<h2>Objectives</h2><table><tr><th>objective</th><th>measured</th><th>result</th></tr>");
        for s in &r.slo {
            let measured = s.measured.map_or_else(|| "not measured".to_owned(), |v| format!("{v:.3}"));
            let (class, word) = if s.ok { ("ok", "met") } else { ("fail", "NOT MET") };
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td><td class=\"{class}\">{word}</td></tr>",
                esc(&s.objective),
                esc(&measured)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Latency (ms)</h2><table><tr><th></th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    h.push_str(&latency_row("ACK", &r.ack));
    h.push_str(&latency_row("harness send lag (part of the ACK)", &r.send_lag));
    h.push_str(&latency_row("alert (console)", &r.alert));
    h.push_str(&latency_row("ACK of the messages that alerted", &r.alert_ack));
    h.push_str(&latency_row("FHIR response", &r.fhir));
    if let Some(b) = &r.baseline {
        h.push_str(&latency_row("echo ACK", &b.ack));
    }
    if let Some(f) = &r.fsync_floor {
        h.push_str(&latency_row("disk flush (fdatasync)", &Some(f.fsync.clone())));
    }
    h.push_str("</table>");
    if let Some(f) = &r.fsync_floor {
        let _ = write!(
            h,
            "<p>Disk flush: <code>fdatasync</code> after a {} B append in {}, measured before the run with the \
             server idle. A durable ACK waits for at least one such flush: this is the floor under the ACK \
             latency on this machine.</p>",
            f.write_bytes,
            esc(&f.dir)
        );
    }

    let secs = |x: f64| format!("{x:.0} s");
    let over_time = [
        Series { name: "p50", points: r.timeline.iter().filter_map(|p| p.p50_ms.map(|v| (p.t_s, v))).collect() },
        Series { name: "p99", points: r.timeline.iter().filter_map(|p| p.p99_ms.map(|v| (p.t_s, v))).collect() },
        Series { name: "max", points: r.timeline.iter().filter_map(|p| p.max_ms.map(|v| (p.t_s, v))).collect() },
    ];
    h.push_str(&plot(
        "ACK latency over time (by intended send time; shaded: measured window)",
        "ms (log)",
        &over_time,
        true,
        Some(r.window_s),
        &secs,
        None,
    ));
    let replies = [Series { name: "replies/s", points: r.timeline.iter().map(|p| (p.t_s, p.replies_per_s)).collect() }];
    h.push_str(&plot("Throughput over time", "replies/s", &replies, false, Some(r.window_s), &secs, None));

    let mut dists = Vec::new();
    for (name, l) in [("ACK", &r.ack), ("alert", &r.alert), ("FHIR", &r.fhir)] {
        if let Some(l) = l {
            dists.push(Series { name, points: l.distribution.iter().map(|&(p, v)| (nines(p), v)).collect() });
        }
    }
    if let Some(Some(l)) = r.baseline.as_ref().map(|b| &b.ack) {
        dists.push(Series { name: "echo ACK", points: l.distribution.iter().map(|&(p, v)| (nines(p), v)).collect() });
    }
    let pct = |x: f64| {
        let p = 100.0 - 100.0 / 10f64.powf(x);
        let digits = format!("{p:.4}");
        format!("p{}", digits.trim_end_matches('0').trim_end_matches('.'))
    };
    let nine_ticks = (0..=5).map(f64::from).collect();
    h.push_str(&plot("Latency by percentile", "ms (log)", &dists, true, None, &pct, Some(nine_ticks)));

    if let Some(u) = &r.server {
        let rss = [Series { name: "RSS MiB", points: u.samples.iter().map(|s| (s.0, s.1)).collect() }];
        h.push_str(&plot("Server RSS", "MiB", &rss, false, Some(r.window_s), &secs, None));
        let cpu = [Series { name: "CPU %", points: u.samples.iter().map(|s| (s.0, s.2)).collect() }];
        h.push_str(&plot("Server CPU (% of one core)", "%", &cpu, false, Some(r.window_s), &secs, None));
    }
    if !r.stages.is_empty() {
        h.push_str("<h2>Where the time went (server stages, measured window)</h2>");
        h.push_str("<p>From the server's <code>vigil_stage_seconds</code> histograms on /metrics, read before and after the window; p50/p99 are estimates at the buckets' resolution.</p>");
        h.push_str("<table><tr><th>stage</th><th>count</th><th>mean µs</th><th>p50 µs</th><th>p99 µs</th></tr>");
        for s in &r.stages {
            let _ = write!(
                h,
                "<tr><th>{}</th><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                esc(&s.name),
                s.count,
                s.mean_us,
                s.p50_us,
                s.p99_us
            );
        }
        h.push_str("</table>");
        if let Some(per) = r.messages_per_store_write() {
            let _ = write!(
                h,
                "<p><code>store_write</code> is timed once per group commit: {per:.1} messages per batch.</p>"
            );
        }
        let max = r.stages.iter().map(|s| s.mean_us).fold(0.0, f64::max).max(1e-9);
        let bar_h = 22.0;
        let height = TOP + bar_h * r.stages.len() as f64 + 10.0;
        let _ = write!(
            h,
            "<figure><figcaption>Mean time per stage (µs)</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {height}\" width=\"{W}\" height=\"{height}\">"
        );
        for (i, s) in r.stages.iter().enumerate() {
            let y = TOP + i as f64 * bar_h;
            let w = s.mean_us / max * (W - 260.0);
            let _ = write!(
                h,
                "<text x=\"110\" y=\"{:.1}\" text-anchor=\"end\" class=\"legend\">{}</text>",
                y + 14.0,
                esc(&s.name)
            );
            let _ = write!(
                h,
                "<rect x=\"120\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>",
                bar_h - 6.0,
                COLOURS[0]
            );
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"legend\">{:.1}</text>",
                124.0 + w,
                y + 14.0,
                s.mean_us
            );
        }
        h.push_str("</svg></figure>");
    }
    let _ = write!(h, "<h2>Scenario</h2><pre>{}</pre>", esc(&toml::to_string(&r.config).unwrap_or_default()));
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    #[test]
    fn the_page_is_self_contained_with_its_plots() {
        let html = sample_report().to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("a &lt;sample&gt; &amp; more"), "description escaped");
        assert_eq!(html.matches("<svg").count(), 5, "latency, throughput, distribution, RSS, CPU");
        assert!(html.contains("ACK latency over time"));
        assert!(html.contains("Latency by percentile"));
        assert!(html.contains("fraction of echo"));
        assert!(html.contains("<polyline"));
        for forbidden in ["<script", "http://cdn", "https://", "src=\"http"] {
            assert!(!html.contains(forbidden), "{forbidden}");
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(3.0, 3.0, 5), vec![3.0]);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
        let html = sample_report().to_html();
        assert!(html.contains(">p99.99<") && html.contains(">p99.9<") && html.contains(">p0<"), "percentile ticks");
    }
}
