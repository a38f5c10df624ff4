//! The demo's sample workloads: small HTTP apps that call each other through their sidecars.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What one app does with a request.
#[derive(Clone)]
pub struct App {
    pub name: &'static str,
    /// The sidecar `upstream` listener of the service it calls, if any.
    pub calls: Option<SocketAddr>,
    /// Its own work, in milliseconds (uniformly drawn).
    pub work_ms: (u64, u64),
    /// Share of requests it fails with a 500.
    pub error_rate: f64,
}

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(app: App, listener: TcpListener, shutdown: CancellationToken) {
    let app = Arc::new(app);
    let client = client();
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            () = shutdown.cancelled() => return,
        };
        let (app, client) = (app.clone(), client.clone());
        let svc = hyper::service::service_fn(move |req| handle(app.clone(), client.clone(), req));
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    app: Arc<App>,
    client: HttpClient,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (lo, hi) = app.work_ms;
    let (work, fail) = {
        let mut rng = rand::rng();
        (rng.random_range(lo..=hi), rng.random_bool(app.error_rate))
    };
    tokio::time::sleep(Duration::from_millis(work)).await;
    if fail {
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}: simulated failure\n", app.name),
        ));
    }
    let mut body = format!("{} handled {}\n", app.name, req.uri().path());
    if let Some(next) = app.calls {
        let uri = format!("http://{next}{}", req.uri().path());
        // Like any app in a mesh, pass the trace context on, so that one trace spans every hop.
        let mut downstream = Request::get(uri);
        for h in weft_runtime::trace::HEADER_NAMES {
            if let Some(v) = req.headers().get(h) {
                downstream = downstream.header(h, v);
            }
        }
        let downstream = match downstream.body(Full::new(Bytes::new())) {
            Ok(r) => client.request(r).await,
            Err(e) => return Ok(reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        };
        match downstream {
            Ok(rsp) if rsp.status().is_success() => {
                let bytes = rsp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                body.push_str(&String::from_utf8_lossy(&bytes));
            }
            Ok(rsp) => {
                return Ok(reply(
                    StatusCode::BAD_GATEWAY,
                    format!("{}: downstream answered {}\n", app.name, rsp.status()),
                ))
            }
            Err(e) => {
                return Ok(reply(
                    StatusCode::BAD_GATEWAY,
                    format!("{}: downstream failed: {e}\n", app.name),
                ))
            }
        }
    }
    Ok(reply(StatusCode::OK, body))
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp
}

/// Sends `rps` requests a second to `target` until `shutdown`, without waiting for answers
/// before sending the next (constant rate, not closed loop).
pub async fn load(target: SocketAddr, rps: u32, shutdown: CancellationToken) {
    let client = client();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        n += 1;
        let client = client.clone();
        let uri = format!("http://{target}/orders/{}", n % 1000);
        tokio::spawn(async move {
            if let Ok(req) = Request::get(uri).body(Full::new(Bytes::new())) {
                let sent = tokio::time::timeout(Duration::from_secs(5), client.request(req));
                if let Ok(Ok(rsp)) = sent.await {
                    let _ = rsp.into_body().collect().await;
                }
            }
        });
    }
}
