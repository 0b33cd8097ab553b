//! `GET /status`: one server-rendered HTML page for the on-call engineer. For each gateway its
//! health, breaker, whether it can send now (and why not), a bar per limit showing use against
//! the limit and when it resets, and the last 24 hours of sent and failed calls per hour as an
//! inline SVG chart; then the latest failed messages, each linking to its record
//! (`/api/messages/{id}`: recipients, attempts and events).
//!
//! No JavaScript and no external assets (styles inline, the chart is SVG in the page); the page
//! refreshes itself every 60 s with a `<meta http-equiv="refresh">`. Every value from the
//! config or the record is HTML-escaped. Times are UTC.

use std::fmt::Write as _;

use super::{GatewayStatus, HOUR_MS, HourActivity, Overview};
use crate::clock::{EpochMillis, civil_from_days, utc_day};

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn time(ms: EpochMillis) -> String {
    let (y, m, d) = civil_from_days(utc_day(ms));
    let secs = ms.rem_euclid(86_400_000) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;justify-content:space-between;align-items:baseline}\
header h1{font-size:18px;margin:0}\
main{padding:16px 24px;max-width:1200px}\
.summary{font-size:16px;margin:0 0 16px}\
.ok{color:#13795b}.bad{color:#b42318}.warn{color:#a15c07}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px}\
.card{background:#fff;border-radius:6px;padding:14px 16px;box-shadow:0 1px 2px #0002}\
.card h2{font-size:16px;margin:0 0 4px}\
.meta{color:#5b6475;font-size:12px;margin-bottom:8px}\
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600;margin-right:4px}\
.b-ok{background:#d1fadf;color:#05603a}.b-bad{background:#fee4e2;color:#912018}\
.b-warn{background:#fef0c7;color:#93370d}.b-off{background:#eaecf0;color:#344054}\
.why{margin:6px 0;font-size:13px}\
.bar{margin:6px 0}.bar .label{display:flex;justify-content:space-between;font-size:12px}\
.track{height:8px;background:#eaecf0;border-radius:4px;overflow:hidden}\
.fill{height:8px;background:#2e90fa}.fill.hot{background:#f79009}.fill.full{background:#d92d20}\
svg{display:block;margin-top:8px}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}\
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #eaecf0;vertical-align:top}\
th{background:#f9fafb}\
code{font-size:12px}\
h3{margin:24px 0 8px}";

/// Renders the page.
pub fn render(o: &Overview) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let can_send = o.gateways.iter().filter(|g| g.can_send).count();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"60\">\
         <title>Mail Gateway status</title><style>{STYLE}</style></head><body>\
         <header><h1>Mail Gateway status</h1><span>{}</span></header><main>",
        escape(&time(o.now))
    );
    let (class, text) = match (can_send, o.gateways.len()) {
        (_, 0) => ("bad", "No gateway is configured.".to_owned()),
        (0, n) => (
            "bad",
            format!("No gateway can send now ({n} configured): messages are being deferred."),
        ),
        (k, n) if k < n => ("warn", format!("{k} of {n} gateways can send now.")),
        (_, n) => ("ok", format!("All {n} gateways can send now.")),
    };
    let _ = write!(h, "<p class=\"summary {class}\">{}</p>", escape(&text));
    // The pause of all sending is on every gateway: shown once, above them.
    if let Some(all) = o
        .gateways
        .iter()
        .flat_map(|g| &g.levers)
        .find(|l| l.lever == "all_paused")
    {
        let _ = write!(
            h,
            "<p class=\"summary bad lever\">{}</p>",
            escape(&all.describe())
        );
    }
    h.push_str("<div class=\"grid\">");
    for g in &o.gateways {
        let hours = o.hourly.as_ref().and_then(|m| m.get(&g.id));
        card(
            &mut h,
            g,
            hours.map(Vec::as_slice),
            o.hourly.is_some(),
            o.now,
        );
    }
    h.push_str("</div>");
    failures(&mut h, o);
    h.push_str("</main></body></html>");
    h
}

fn health_badge(status: &str, stale: bool) -> String {
    let class = match status {
        "HEALTHY" => "b-ok",
        "DEGRADED" => "b-warn",
        "UNHEALTHY" => "b-bad",
        _ => "b-off",
    };
    let stale = if stale { " (stale)" } else { "" };
    format!("<span class=\"badge {class}\">health: {status}{stale}</span>")
}

fn breaker_badge(state: &str) -> String {
    let class = match state {
        "closed" => "b-ok",
        "half_open" => "b-warn",
        _ => "b-bad",
    };
    format!(
        "<span class=\"badge {class}\">breaker: {}</span>",
        state.replace('_', "-")
    )
}

fn card(
    h: &mut String,
    g: &GatewayStatus,
    hours: Option<&[HourActivity]>,
    has_record: bool,
    now: EpochMillis,
) {
    let _ = write!(
        h,
        "<section class=\"card\" id=\"gw-{id}\"><h2>{name}</h2>\
         <div class=\"meta\"><code>{id}</code> · {kind} · priority {p} · weight {w}</div>{hb}{bb}",
        id = escape(&g.id),
        name = escape(&g.display_name),
        kind = escape(g.kind),
        p = g.priority,
        w = g.weight,
        hb = health_badge(g.health.status, g.health.stale),
        bb = breaker_badge(g.breaker.state),
    );
    for l in g
        .levers
        .iter()
        .filter(|l| matches!(l.lever, "breaker_forced_closed" | "limits_overridden"))
    {
        let _ = write!(
            h,
            "<p class=\"why warn lever\">{}</p>",
            escape(&l.describe())
        );
    }
    match &g.blocked_by {
        None => h.push_str("<span class=\"badge b-ok\">can send</span>"),
        Some(why) => {
            let _ = write!(
                h,
                "<span class=\"badge b-bad\">cannot send</span><p class=\"why bad\">{}</p>",
                escape(why)
            );
        }
    }
    if let Some(checked) = g.health.checked_at {
        let latency = g
            .health
            .latency_ms
            .map(|ms| format!(", {ms} ms"))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<p class=\"meta\">last probe {}{latency}",
            escape(&time(checked))
        );
        if let Some(error) = &g.health.error {
            let _ = write!(h, ": {}", escape(error));
        }
        h.push_str("</p>");
    }
    if g.usage.is_empty() {
        h.push_str("<p class=\"meta\">no rate limits</p>");
    }
    for u in &g.usage {
        let used = if u.limit == 0 {
            100.0
        } else {
            (u.used as f64 / u.limit as f64 * 100.0).min(100.0)
        };
        let class = if used >= 100.0 {
            "fill full"
        } else if used >= 80.0 {
            "fill hot"
        } else {
            "fill"
        };
        let _ = write!(
            h,
            "<div class=\"bar\"><div class=\"label\"><span>{level}: {used_n} / {limit}</span>\
             <span>{reset}</span></div><div class=\"track\" role=\"img\" \
             aria-label=\"{level} {pct:.0}% used\"><div class=\"{class}\" style=\"width:{pct:.1}%\">\
             </div></div></div>",
            level = u.level,
            used_n = u.used,
            limit = u.limit,
            reset = if u.resets_at <= now {
                "all available".to_owned()
            } else {
                format!("resets {}", escape(&time(u.resets_at)))
            },
            pct = used,
        );
    }
    if has_record {
        chart(h, &g.id, hours.unwrap_or(&[]), now);
    }
    h.push_str("</section>");
}

/// 24 hourly columns, oldest left: sent (green) with failed (red) stacked on top.
fn chart(h: &mut String, id: &str, hours: &[HourActivity], now: EpochMillis) {
    const W: i64 = 336;
    const H: i64 = 90;
    const TOP: i64 = 14;
    const BASE: i64 = H - 16;
    let current = now.div_euclid(HOUR_MS) * HOUR_MS;
    let first = current - 23 * HOUR_MS;
    let columns: Vec<(EpochMillis, u64, u64)> = (0..24)
        .map(|i| {
            let hour = first + i * HOUR_MS;
            let a = hours.iter().find(|a| a.hour == hour);
            (hour, a.map_or(0, |a| a.sent), a.map_or(0, |a| a.failed))
        })
        .collect();
    let peak = columns.iter().map(|&(_, s, f)| s + f).max().unwrap_or(0);
    let sent: u64 = columns.iter().map(|c| c.1).sum();
    let failed: u64 = columns.iter().map(|c| c.2).sum();
    let _ = write!(
        h,
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{id}: last 24 hours, {sent} sent, {failed} failed\">\
         <title>Provider calls in the last 24 hours: {sent} accepted, {failed} failed (peak {peak} per hour)</title>\
         <text x=\"0\" y=\"10\" font-size=\"10\" fill=\"#5b6475\">calls, last 24 h: \
         <tspan fill=\"#12b76a\">{sent} sent</tspan> · <tspan fill=\"#d92d20\">{failed} failed</tspan> · peak {peak}/h</text>\
         <line x1=\"0\" y1=\"{BASE}\" x2=\"{W}\" y2=\"{BASE}\" stroke=\"#d0d5dd\"/>",
        id = escape(id),
    );
    let slot = W / 24;
    let scale = (BASE - TOP) as f64 / peak.max(1) as f64;
    for (i, &(hour, s, f)) in columns.iter().enumerate() {
        let x = i as i64 * slot + 1;
        let sh = (s as f64 * scale).round() as i64;
        let fh = (f as f64 * scale).round() as i64;
        let label = escape(&time(hour)[11..16]);
        if s > 0 {
            let _ = write!(
                h,
                "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{sh}\" fill=\"#12b76a\">\
                 <title>{label} UTC: {s} sent</title></rect>",
                BASE - sh,
                slot - 2
            );
        }
        if f > 0 {
            let _ = write!(
                h,
                "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{fh}\" fill=\"#d92d20\">\
                 <title>{label} UTC: {f} failed</title></rect>",
                BASE - sh - fh,
                slot - 2
            );
        }
        if i % 6 == 0 {
            let _ = write!(
                h,
                "<text x=\"{x}\" y=\"{}\" font-size=\"9\" fill=\"#5b6475\">{label}</text>",
                H - 4
            );
        }
    }
    h.push_str("</svg>");
}

fn failures(h: &mut String, o: &Overview) {
    h.push_str("<h3>Recent failures</h3>");
    let Some(failures) = &o.failures else {
        h.push_str(
            "<p class=\"meta\">This process keeps no record of delivery (the recorder writes it to MySQL).</p>",
        );
        return;
    };
    if failures.is_empty() {
        h.push_str("<p class=\"meta ok\">No failed or rejected message on record.</p>");
        return;
    }
    h.push_str(
        "<table><thead><tr><th>when</th><th>message</th><th>sender</th><th>status</th>\
         <th>gateway</th><th>reason</th></tr></thead><tbody>",
    );
    for r in failures {
        let _ = write!(
            h,
            "<tr><td>{}</td><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td>\
             <td class=\"bad\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&time(r.status_at.unwrap_or(r.updated_at))),
            escape(&crate::records::search::message_link(&r.message_id)),
            escape(&r.message_id),
            escape(&r.sender),
            r.status.as_str(),
            escape(r.gateway_id.as_deref().unwrap_or("—")),
            escape(r.last_error.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</tbody></table>");
}
