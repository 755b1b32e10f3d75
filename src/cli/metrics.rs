//! `--metrics`: the metrics facade's values for Prometheus, and the
//! health probes.

use std::net::SocketAddr;
use std::time::Duration;

use super::Usage;

/// `--metrics`: the facade's values for Prometheus, and the probes.
pub(crate) async fn serve_metrics(
    addr: SocketAddr,
    handle: crate::Handle,
    sample: Duration,
) -> Result<tokio::task::JoinHandle<()>, Box<dyn std::error::Error>> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use metrics_util::MetricKindMask;
    // A removed slot's gauges are set no more: gone after a few samples.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(
            MetricKindMask::GAUGE,
            Some((sample * 5).max(Duration::from_millis(500))),
        )
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herd_reload_duration_seconds".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herd_http_response_seconds".into()),
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
        )?
        .install_recorder()?;
    // After an upgrade in place, the listener the previous master served:
    // probes queued on it during the exec are answered, not refused.
    let key = format!("metrics:{addr}");
    let listener = match handle.take_carried(&key) {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)?
        }
        None => tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Usage(format!("--metrics {addr}: {e}")))?,
    };
    handle.carry(&key, &listener)?;
    Ok(tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            let prometheus = prometheus.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => {
                            prometheus.run_upkeep();
                            (200, prometheus.render())
                        }
                        "/healthz" => (200, "ok\n".to_owned()),
                        "/readyz" => {
                            let workers = handle.workers();
                            let ready = handle.phase() == crate::Phase::Running
                                && workers.iter().any(|w| w.state == crate::WorkerState::Ready)
                                && workers.iter().all(|w| {
                                    matches!(
                                        w.state,
                                        crate::WorkerState::Ready | crate::WorkerState::Failed
                                    )
                                });
                            if ready {
                                (200, "ready\n".to_owned())
                            } else {
                                (503, "not ready\n".to_owned())
                            }
                        }
                        _ => (404, "GET /metrics, /healthz or /readyz\n".to_owned()),
                    };
                    let response = hyper::Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)));
                    async move { response }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    }))
}
