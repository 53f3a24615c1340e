//! `--metrics-addr`: the metrics in Prometheus text format over HTTP/1.1 (`GET /metrics`) on any address
//! the operator gives; `--metrics-file`: the same text written to a file.

/// Serve `/metrics` on `addr` in the background (HTTP/1.1, plain text exposition format).
pub async fn serve(addr: std::net::SocketAddr) -> std::io::Result<()> {
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (200, crate::metrics::Metrics::global().render())
                    } else {
                        (404, "not found: metrics are at /metrics\n".to_string())
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(())
}

/// `--metrics-file`: write the metrics to `path` atomically; a failure is reported, never fatal.
pub fn write_file(path: &std::path::Path) {
    if let Err(e) = crate::metrics::Metrics::global().write_file(path) {
        tracing::error!(path = %path.display(), error = %e, "cannot write the metrics file");
    }
}
