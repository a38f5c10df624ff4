//! Accept loops and draining, shared by every listener of the proxy.
//!
//! A listener runs until its shutdown token fires; then it stops accepting, asks each HTTP
//! connection to finish its in-flight requests (HTTP/2 GOAWAY, HTTP/1 close after the current
//! response), and waits for them and for every other connection task up to the grace period.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;

/// An HTTP/1.1 + HTTP/2 (prior knowledge) server connection builder.
#[derive(Clone)]
pub struct Http {
    builder: auto::Builder<TokioExecutor>,
}

impl Default for Http {
    fn default() -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        builder
            .http2()
            .timer(TokioTimer::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .max_concurrent_streams(1024)
            .keep_alive_interval(Duration::from_secs(20));
        Self { builder }
    }
}

impl Http {
    /// Serves one connection until it closes or, after a drain starts, finishes.
    pub async fn serve<I, S>(&self, io: I, watcher: Watcher, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                Request<Incoming>,
                Response = Response<Body>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// One accepted connection, with what its handler needs to serve it.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub watcher: Watcher,
    pub http: Http,
    pub tracker: TaskTracker,
}

/// Accepts connections until `shutdown`, hands each to `on_conn`, then drains for up to `grace`.
pub async fn accept_loop<F>(
    name: &'static str,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
    mut on_conn: F,
) where
    F: FnMut(Accepted),
{
    let graceful = GracefulShutdown::new();
    let tracker = TaskTracker::new();
    let http = Http::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                on_conn(Accepted {
                    stream,
                    peer,
                    watcher: graceful.watcher(),
                    http: http.clone(),
                    tracker: tracker.clone(),
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    tracker.close();
    let open = graceful.count();
    tracing::debug!(listener = name, open, "draining");
    let drained = async {
        graceful.shutdown().await;
        tracker.wait().await;
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            listener = name,
            ?grace,
            "drain timed out; closing remaining connections"
        );
    }
}
