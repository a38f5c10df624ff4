//! Callers, as an app or an operator makes them: pooled HTTP/1.1 and HTTP/2 clients, one request
//! read whole ([`send`], [`Reply`]), one call to a control plane's API as its admin
//! ([`api_call`]), and a metric read from a Prometheus exposition ([`metric`]). Callers that keep
//! sending are [`crate::load`]'s.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::data_dirs::admin_token;
use crate::mesh::Mesh;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client, as an app would use.
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A pooled HTTP/2 (prior knowledge) client.
pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a request to `addr` with `host` as its Host (an app using `HTTP_PROXY` or a local
/// `upstream` listener) and reads the whole response.
pub async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    send_body(client, addr, host, method, path, headers, Bytes::new()).await
}

/// Like [`send`], with a request body.
pub async fn send_body(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<Reply> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Full::new(body))?),
    )
    .await??;
    let status = rsp.status().as_u16();
    let headers = rsp.headers().clone();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<Reply> {
    send(client, addr, host, "GET", path, &[]).await
}

/// The sum of a metric's series whose label sets contain every one of `labels` (written as in
/// the exposition: `service="orders.shop"`), from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates a join token through the control plane's API; returns (id, token).
pub async fn create_token(mesh: &Mesh, workload: &str, ttl: &str) -> (String, String) {
    let body = serde_json::json!({ "workload": workload, "ttl": ttl }).to_string();
    let (status, doc) = api_call(mesh.api_addr, "POST", "/api/v1/tokens", &body).await;
    assert_eq!(status, 201, "{doc}");
    (
        doc["id"].as_str().unwrap().to_string(),
        doc["token"].as_str().unwrap().to_string(),
    )
}

/// One request to the control plane's API as its admin (with its admin token), a body sent as
/// JSON or YAML: the status and the body as JSON (a JSON string when the body is not JSON).
pub async fn api_call(
    api: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let token = admin_token(api);
    assert!(token.is_some(), "no admin token known for {api}");
    api_call_as(api, token.as_deref(), method, path, body).await
}

/// Like [`api_call`], with `Authorization: Bearer TOKEN` when a token is given, and with no
/// credential at all when not.
pub async fn api_call_as(
    api: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{api}{path}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if !body.is_empty() {
        let json = serde_json::from_str::<serde_json::Value>(body).is_ok();
        req = req.header(
            http::header::CONTENT_TYPE,
            if json {
                "application/json"
            } else {
                "application/yaml"
            },
        );
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let rsp = http1_client().request(req).await.unwrap();
    let status = rsp.status().as_u16();
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, value)
}

/// Upgrades `tcp` to a WebSocket at `url` (the test apps' `/ws` echo), checks `rounds` messages
/// come back as sent, and closes it.
pub async fn websocket_echoes(tcp: tokio::net::TcpStream, url: &str, rounds: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, rsp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(rsp.status(), 101);
    for i in 0..rounds {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.close(None).await.unwrap();
}
