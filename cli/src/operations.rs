//! What operators of `fib-server` watch: Prometheus metrics at `/metrics`, liveness at
//! `/healthz`, readiness at `/readyz`, on an HTTP listener of its own (`--metrics-addr`).

use fib_rpc::{ServerMonitor, ServerStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One served queue and the view of its server.
pub type Watched = Vec<(String, ServerMonitor)>;

/// Serves the endpoints on `addr` from a thread of its own, for as long as the process runs.
/// `draining` turns `/readyz` to 503 before a stop begins.
pub fn serve(addr: SocketAddr, watched: Watched, draining: Arc<AtomicBool>) -> std::io::Result<()> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    // The address bound, which tells the port when `addr` asked for any (port 0).
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    log::info!("metrics and health on http://{bound}/metrics, /healthz, /readyz");
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics {
        watched: watched.clone(),
        draining: Arc::clone(&draining),
    }));
    std::thread::Builder::new()
        .name("fib-server-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, content_type, body) = answer(&request, &registry, &watched, &draining);
                let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("a valid header");
                let response = tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header);
                // A client that went away is its own business.
                let _ = request.respond(response);
            }
        })?;
    Ok(())
}

const TEXT: &str = "text/plain; charset=utf-8";

fn answer(
    request: &tiny_http::Request,
    registry: &Registry,
    watched: &Watched,
    draining: &AtomicBool,
) -> (u16, &'static str, String) {
    if *request.method() != tiny_http::Method::Get {
        return (405, TEXT, "only GET\n".into());
    }
    match request.url() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (200, "text/plain; version=0.0.4; charset=utf-8", text),
                Err(_) => (500, TEXT, "cannot encode the metrics\n".into()),
            }
        }
        "/healthz" => match watched.iter().find(|(_, monitor)| !monitor.is_running()) {
            None => (200, TEXT, "ok\n".into()),
            Some((queue, _)) => (503, TEXT, format!("the server of {queue} has stopped\n")),
        },
        "/readyz" => {
            if draining.load(Ordering::Relaxed) {
                return (503, TEXT, "draining\n".into());
            }
            for (queue, monitor) in watched.iter() {
                let stats = monitor.stats();
                if !stats.consuming {
                    return (503, TEXT, format!("not consuming {queue}\n"));
                }
                if let Some(reason) = stats.blocked {
                    let text = format!("the broker blocks the server of {queue}: {reason}\n");
                    return (503, TEXT, text);
                }
            }
            (200, TEXT, "ready\n".into())
        }
        _ => (404, TEXT, "try /metrics, /healthz or /readyz\n".into()),
    }
}

/// The servers' figures, read at each scrape.
#[derive(Debug)]
struct Metrics {
    watched: Watched,
    draining: Arc<AtomicBool>,
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<(&str, ServerStats)> = self
            .watched
            .iter()
            .map(|(queue, monitor)| (queue.as_str(), monitor.stats()))
            .collect();

        let mut family = encoder.encode_descriptor(
            "fib_rpc_requests",
            "Requests taken off the queue and acked, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for (queue, stats) in &snapshots {
            for (outcome, value) in [
                ("answered", stats.answered),
                ("error_reply", stats.error_replies),
                ("expired", stats.expired),
                ("unanswerable", stats.unanswerable),
                ("duplicate", stats.duplicates),
                ("cancelled", stats.cancelled),
            ] {
                let labels = [("queue", *queue), ("outcome", outcome)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "fib_rpc_handler_duration_seconds",
            "How long the handler took per request.",
            None,
            MetricType::Histogram,
        )?;
        for (queue, stats) in &snapshots {
            let durations = &stats.handler_durations;
            family
                .encode_family(&[("queue", *queue)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    durations.sum_seconds,
                    durations.count,
                    &durations.buckets,
                    None,
                )?;
        }

        gauge_per_queue(
            &mut encoder,
            "fib_rpc_requests_in_hand",
            "Requests taken off the queue and not yet acked.",
            &snapshots,
            |stats| stats.in_hand as f64,
        )?;
        let mut family = encoder.encode_descriptor(
            "fib_rpc_channel_losses",
            "Worker channels the broker closed (consumer timeout, message size), each replaced.",
            None,
            MetricType::Counter,
        )?;
        for (queue, stats) in &snapshots {
            ConstCounter::new(stats.channel_losses)
                .encode(family.encode_family(&[("queue", *queue)])?)?;
        }
        gauge_per_queue(
            &mut encoder,
            "fib_rpc_blocked",
            "1 while the broker blocks publishing on the connection (a resource alarm), else 0.",
            &snapshots,
            |stats| f64::from(u8::from(stats.blocked.is_some())),
        )?;
        let mut family = encoder.encode_descriptor(
            "fib_rpc_cancels_received",
            "Cancels heard from callers who gave up, whether or not this server had the request.",
            None,
            MetricType::Counter,
        )?;
        for (queue, stats) in &snapshots {
            ConstCounter::new(stats.cancels_received)
                .encode(family.encode_family(&[("queue", *queue)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "fib_rpc_reconnects",
            "Connections made again after one was lost.",
            None,
            MetricType::Counter,
        )?;
        for (queue, stats) in &snapshots {
            ConstCounter::new(stats.reconnects)
                .encode(family.encode_family(&[("queue", *queue)])?)?;
        }
        gauge_per_queue(
            &mut encoder,
            "fib_rpc_seconds_since_connect",
            "Seconds since the last successful connection (NaN before the first).",
            &snapshots,
            |stats| {
                stats
                    .since_connected
                    .map_or(f64::NAN, |since| since.as_secs_f64())
            },
        )?;
        gauge_per_queue(
            &mut encoder,
            "fib_rpc_consuming",
            "1 while every worker consumes the queue, else 0.",
            &snapshots,
            |stats| f64::from(u8::from(stats.consuming)),
        )?;

        let draining = ConstGauge::new(i64::from(self.draining.load(Ordering::Relaxed)));
        draining.encode(encoder.encode_descriptor(
            "fib_rpc_draining",
            "1 once a stop has begun, else 0.",
            None,
            draining.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "fib_rpc_build_info",
            "The version of fib-server, as a label.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

fn gauge_per_queue(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snapshots: &[(&str, ServerStats)],
    value: impl Fn(&ServerStats) -> f64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (queue, stats) in snapshots {
        ConstGauge::new(value(stats)).encode(family.encode_family(&[("queue", *queue)])?)?;
    }
    Ok(())
}
