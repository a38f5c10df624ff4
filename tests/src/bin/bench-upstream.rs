//! The benchmark's upstream app: answers every request with a fixed 1 KiB body.
//! `bench-upstream ADDR [STATUS]` (HTTP/1.1 and HTTP/2); STATUS (default 200) is the status of
//! every answer, to stand in for a failing instance.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let status = match std::env::args().nth(2).map(|s| s.parse::<u16>()) {
        None => hyper::StatusCode::OK,
        Some(Ok(code)) => hyper::StatusCode::from_u16(code).map_err(std::io::Error::other)?,
        Some(Err(e)) => return Err(std::io::Error::other(format!("STATUS: {e}"))),
    };
    let body = Bytes::from(vec![b'w'; 1024]);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            let mut rsp = hyper::Response::new(Full::new(body));
                            *rsp.status_mut() = status;
                            Ok::<_, Infallible>(rsp)
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
}
