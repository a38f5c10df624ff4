//! Upstream apps for the tests: an HTTP app that reports what it saw, a TCP echo server, a
//! WebSocket echo, and a gRPC echo service.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role};

use crate::grpc;

/// An HTTP/1.1 + HTTP/2 app. It answers with its name, and reports in headers what reached it:
/// `x-app`, `x-seen-version`, `x-seen-host`, `x-seen-identity`, `x-seen-path` (the path as it
/// arrived), `x-served-path` (the path a lenient server would serve for it, [`lenient_path`]),
/// and `x-seen-<h>` for each trace header `h` (`traceparent`, `b3`, `x-b3-*`). `/delay/MS` waits first;
/// `/status/CODE` answers that status; `/ws` is a WebSocket echo.
pub struct HttpApp {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

impl HttpApp {
    pub async fn start(name: &str) -> Self {
        Self::with_delay(name, Duration::ZERO).await
    }

    /// Every request waits `delay` before its answer.
    pub async fn with_delay(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(name, delay, listener)
    }

    /// The app on a listener the caller bound (the container image's `weft-test-app http`
    /// binds `[::]:PORT`).
    pub fn serve(name: &str, delay: Duration, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (name, counter) = (Arc::<str>::from(name), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, counter) = (name.clone(), counter.clone());
                let svc = hyper::service::service_fn(move |req| {
                    respond(name.clone(), delay, counter.clone(), req)
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, hits }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

async fn respond(
    name: Arc<str>,
    delay: Duration,
    hits: Arc<AtomicU64>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = req.uri().path().to_string();
    if path == "/ws" {
        return Ok(websocket(&mut req));
    }
    let mut status = StatusCode::OK;
    if let Some(ms) = path.strip_prefix("/delay/").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|v| v.parse::<u16>().ok())
    {
        status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let identity = req
        .headers()
        .get("x-weft-client-identity")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let version = format!("{:?}", req.version());
    let served = lenient_path(&path);
    let trace_headers: Vec<(String, http::HeaderValue)> = weft_runtime::trace::HEADER_NAMES
        .iter()
        .filter_map(|h| Some((format!("x-seen-{h}"), req.headers().get(*h)?.clone())))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut rsp = Response::new(Full::new(if body.is_empty() {
        Bytes::from(name.to_string())
    } else {
        body
    }));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert("x-app", name.parse().unwrap());
    h.insert("x-seen-version", version.parse().unwrap());
    h.insert(
        "x-seen-host",
        host.parse().unwrap_or_else(|_| "?".parse().unwrap()),
    );
    h.insert(
        "x-seen-identity",
        identity.parse().unwrap_or_else(|_| "?".parse().unwrap()),
    );
    // Percent-encoded so that any byte the proxy let through fits in a header value.
    h.insert("x-seen-path", header_safe(&path).parse().unwrap());
    h.insert("x-served-path", header_safe(&served).parse().unwrap());
    for (name, value) in trace_headers {
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value,
        );
    }
    Ok(rsp)
}

/// The path a lenient server resolves a request path to before it picks a handler, taking the
/// most permissive reading each common server has: `;params` stripped from every segment
/// (Tomcat, Spring), percent-escapes decoded once including `%2F` and `%5C`, `\` read as `/`
/// (IIS, some Java servlet containers), repeated slashes merged and dot segments resolved (nginx,
/// most frameworks). A proxy that checked a path must never let it become another path here.
pub fn lenient_path(raw: &str) -> String {
    let strip_params = |s: &str| {
        s.split('/')
            .map(|seg| seg.split(';').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/")
    };
    let decoded = percent_decode(&strip_params(&raw.replace('\\', "/")));
    let decoded = strip_params(&decoded.replace('\\', "/"));
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = format!("/{}", out.join("/"));
    let ends_in_dir = ["/", "/.", "/.."].iter().any(|e| decoded.ends_with(e));
    if ends_in_dir && path != "/" {
        path.push('/');
    }
    path
}

/// Decodes every `%XX` (invalid ones stay as they are); bytes that are not UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` with every byte outside printable ASCII percent-encoded.
fn header_safe(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            0x21..=0x7e => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Accepts a WebSocket upgrade and echoes every message back.
fn websocket(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        let mut rsp = Response::new(Full::new(Bytes::from_static(b"not a websocket request")));
        *rsp.status_mut() = StatusCode::BAD_REQUEST;
        return rsp;
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut rsp = Response::new(Full::new(Bytes::new()));
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = rsp.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", key.parse().unwrap());
    rsp
}

/// A TCP echo server: copies everything back, then closes its side after the client's FIN
/// (so a test can check half-close is carried through).
pub async fn tcp_echo() -> SocketAddr {
    tcp_echo_on(TcpListener::bind("127.0.0.1:0").await.expect("bind"))
}

/// [`tcp_echo`] on a listener the caller bound.
pub fn tcp_echo_on(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"<eof seen>").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A gRPC echo server named `name`.
pub async fn grpc_echo(name: &str) -> SocketAddr {
    grpc_echo_on(name, TcpListener::bind("127.0.0.1:0").await.expect("bind"))
}

/// [`grpc_echo`] on a listener the caller bound.
pub fn grpc_echo_on(name: &str, listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    let svc = grpc::echo_server::EchoServer::new(Echo {
        name: name.to_string(),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

struct Echo {
    name: String,
}

type ReplyStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<grpc::EchoReply, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl grpc::echo_server::Echo for Echo {
    async fn unary(
        &self,
        req: tonic::Request<grpc::EchoRequest>,
    ) -> Result<tonic::Response<grpc::EchoReply>, tonic::Status> {
        let m = req.into_inner().message;
        if m == "fail" {
            return Err(tonic::Status::failed_precondition("asked to fail"));
        }
        Ok(tonic::Response::new(grpc::EchoReply {
            message: m,
            server: self.name.clone(),
            index: 0,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        req: tonic::Request<grpc::EchoRequest>,
    ) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
        let req = req.into_inner();
        let server = self.name.clone();
        let stream = tokio_stream::iter((0..req.count).map(move |index| {
            Ok(grpc::EchoReply {
                message: req.message.clone(),
                server: server.clone(),
                index,
            })
        }));
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// What a [`FaultyApp`] does with the requests it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200, with `x-app` and the request body echoed.
    Healthy,
    /// Answers this status.
    Status(u16),
    /// Closes the connection without answering.
    Reset,
    /// Never answers.
    Hang,
    /// Answers after this many milliseconds.
    Slow(u64),
    /// Sends a 200 head and one chunk of body, then nothing more.
    StallBody,
    /// A gRPC error: a trailers-only response with this `grpc-status`.
    GrpcStatus(u16),
}

/// An HTTP/1.1 + HTTP/2 app that fails on command: `fail_next(n, b)` behaves as `b` for the next
/// `n` requests, then as the standing behaviour (`set`). It counts requests and remembers their
/// methods.
#[derive(Clone)]
pub struct FaultyApp {
    pub addr: SocketAddr,
    state: Arc<std::sync::Mutex<FaultState>>,
    hits: Arc<AtomicU64>,
}

struct FaultState {
    name: String,
    standing: Behaviour,
    next: std::collections::VecDeque<Behaviour>,
    methods: Vec<String>,
}

impl FaultyApp {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = Self {
            addr,
            state: Arc::new(std::sync::Mutex::new(FaultState {
                name: name.to_string(),
                standing: Behaviour::Healthy,
                next: Default::default(),
                methods: Vec::new(),
            })),
            hits: Arc::new(AtomicU64::new(0)),
        };
        let served = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let app = served.clone();
                tokio::spawn(async move {
                    let (kill_tx, kill_rx) = tokio::sync::watch::channel(false);
                    let svc = hyper::service::service_fn(move |req| {
                        let (app, kill) = (app.clone(), kill_tx.clone());
                        async move { app.respond(req, kill).await }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    let mut kill_rx = kill_rx;
                    tokio::select! {
                        _ = conn => {}
                        _ = kill_rx.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        app
    }

    /// The behaviour for requests after the queued ones.
    pub fn set(&self, b: Behaviour) {
        self.state.lock().unwrap().standing = b;
    }

    /// The next `n` requests behave as `b`.
    pub fn fail_next(&self, n: usize, b: Behaviour) {
        let mut s = self.state.lock().unwrap();
        s.next.extend(std::iter::repeat_n(b, n));
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn reset_hits(&self) {
        self.hits.store(0, Ordering::Relaxed);
        self.state.lock().unwrap().methods.clear();
    }

    /// The methods of the requests seen, in order.
    pub fn methods(&self) -> Vec<String> {
        self.state.lock().unwrap().methods.clone()
    }

    async fn respond(
        &self,
        req: Request<Incoming>,
        kill: tokio::sync::watch::Sender<bool>,
    ) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let (behaviour, name) = {
            let mut s = self.state.lock().unwrap();
            s.methods.push(req.method().to_string());
            let b = s.next.pop_front().unwrap_or(s.standing);
            (b, s.name.clone())
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let full = |status: u16, body: Bytes| {
            let mut rsp = Response::new(Full::new(body).boxed());
            *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
            rsp.headers_mut().insert("x-app", name.parse().unwrap());
            Ok(rsp)
        };
        match behaviour {
            Behaviour::Healthy => full(
                200,
                if body.is_empty() {
                    Bytes::from(name.clone())
                } else {
                    body
                },
            ),
            Behaviour::Status(code) => full(code, Bytes::from(format!("{name} says {code}"))),
            Behaviour::Slow(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                full(200, Bytes::from(name.clone()))
            }
            Behaviour::Hang => std::future::pending().await,
            Behaviour::GrpcStatus(code) => {
                let mut rsp = Response::new(Full::new(Bytes::new()).boxed());
                let h = rsp.headers_mut();
                h.insert("content-type", "application/grpc".parse().unwrap());
                h.insert("grpc-status", code.into());
                h.insert("x-app", name.parse().unwrap());
                Ok(rsp)
            }
            Behaviour::Reset => {
                let _ = kill.send(true);
                std::future::pending().await
            }
            Behaviour::StallBody => {
                let first = futures_util::stream::once(async {
                    Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(b"partial")))
                });
                let stream = first.chain(futures_util::stream::pending());
                let mut rsp =
                    Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)));
                rsp.headers_mut().insert("x-app", name.parse().unwrap());
                Ok(rsp)
            }
        }
    }
}
