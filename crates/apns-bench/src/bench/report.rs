//! The reports as tables, and the sweep's markdown table and SVG chart.

use super::BenchReport;
use super::sender::SenderReport;

/// The report as a table.
pub fn print_table(r: &BenchReport) {
    let opt = |v: Option<f64>, unit: &str| {
        v.map(|x| format!("{x:.2} {unit}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "apns-worker bench: {} notifications ({} per job) of {} B over {} job queue(s), prefetch {}, {} connection(s), ack batch {}, {} sends in flight, APNs answers after {} ms{}",
        r.jobs,
        r.tokens_per_job,
        r.payload_bytes,
        r.shards,
        r.prefetch,
        r.connections,
        r.ack_batch,
        r.max_in_flight,
        r.apns_latency_ms,
        if r.outcomes {
            ", outcome stream on"
        } else {
            ""
        }
    );
    println!(
        "  bare lapin consumer (broker ceiling)  {}",
        opt(r.bare_consumer_per_sec, "notifications/s")
    );
    println!(
        "  worker drain                          {:.0} notifications/s",
        r.drain_per_sec
    );
    println!(
        "  worker / bare consumer                {}",
        r.ratio_to_bare
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  worker CPU per notification           {:.1} µs",
        r.cpu_us_per_notification
    );
    println!(
        "  mock APNs CPU per notification        {:.1} µs (same machine)",
        r.mock_cpu_us_per_notification
    );
    if let Some(b) = r.broker_cpu_us_per_message_drain {
        let per = if r.tokens_per_job > 1 {
            "notification"
        } else {
            "message     "
        };
        println!(
            "  broker CPU per {per}           {b:.1} µs in the drain{}",
            r.broker_cpu_us_per_message_bare
                .map(|x| format!(", {x:.1} µs with the bare consumer"))
                .unwrap_or_default()
        );
    }
    if let Some(c) = r.bare_consumer_cpu_us_per_message {
        println!("  bare consumer CPU per message         {c:.1} µs");
    }
    if let Some(b) = r.machine_busy_drain {
        println!(
            "  machine busy                          {:.0}% of {} CPUs in the drain{}",
            b * 100.0,
            r.cpus,
            r.machine_busy_bare
                .map(|x| format!(", {:.0}% with the bare consumer", x * 100.0))
                .unwrap_or_default()
        );
    }
    println!(
        "  worker peak RSS                       {:.1} MiB",
        r.peak_rss_mib
    );
    if let Some(rate) = r.latency_rate {
        println!(
            "  publish -> APNs latency at {rate}/s   p50 {} p99 {} p999 {} ({} samples)",
            opt(r.latency_p50_ms, "ms"),
            opt(r.latency_p99_ms, "ms"),
            opt(r.latency_p999_ms, "ms"),
            r.latency_samples.unwrap_or(0)
        );
    }
}

/// The sender-only report as a table.
pub fn print_sender_table(r: &SenderReport) {
    let us = |v: Option<f64>| {
        v.map(|x| format!("{x:.1} µs"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "apns-worker bench --sender-only: {} notifications, {} in flight, {} connection(s)",
        r.jobs, r.concurrency, r.connections
    );
    println!(
        "  client throughput                     {:.0} notifications/s",
        r.sender_only_per_sec
    );
    println!(
        "  client CPU per notification           {}",
        us(r.cpu_us_per_notification)
    );
    println!(
        "  mock APNs CPU per notification        {} (busy {})",
        us(r.mock_cpu_us_per_notification),
        r.mock_busy
            .map(|b| format!("{:.0}%", b * 100.0))
            .unwrap_or_else(|| "-".into())
    );
}

/// A bar chart of drain throughput per configuration.
pub fn svg_bars(reports: &[BenchReport]) -> String {
    let (w, h, left, bottom, top) = (980.0, 460.0, 70.0, 120.0, 40.0);
    let max = reports.iter().map(|r| r.drain_per_sec).fold(1.0, f64::max) * 1.1;
    let bw = (w - left - 20.0) / reports.len().max(1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<text x="{left}" y="22" font-size="14">apns-worker drain throughput (notifications/s) by prefetch / connections / ack batch</text>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
"#,
        h - bottom,
        h - bottom,
        w - 20.0,
        h - bottom
    );
    for k in 0..=5 {
        let v = max * k as f64 / 5.0;
        s.push_str(&format!(
            r##"<text x="{}" y="{}" text-anchor="end">{:.0}</text><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>
"##,
            left - 6.0,
            y(v) + 4.0,
            v,
            y(v),
            w - 20.0,
            y(v)
        ));
    }
    for (i, r) in reports.iter().enumerate() {
        let x = left + i as f64 * bw + 3.0;
        let color = match r.connections {
            1 => "#8da0cb",
            2 => "#66c2a5",
            _ => "#fc8d62",
        };
        s.push_str(&format!(
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" transform="rotate(-60 {:.1} {:.1})" text-anchor="end">p{} c{} a{}</text>
"#,
            y(r.drain_per_sec),
            bw - 6.0,
            (h - bottom) - y(r.drain_per_sec),
            x + bw / 2.0,
            h - bottom + 12.0,
            x + bw / 2.0,
            h - bottom + 12.0,
            r.prefetch,
            r.connections,
            r.ack_batch
        ));
    }
    s.push_str("</svg>\n");
    s
}
