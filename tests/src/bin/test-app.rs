//! `weft-test-app`: the workload of the test cluster's `localhost/weft/test-app:dev` image. The
//! servers are the end-to-end suite's own upstream apps (`weft_tests::apps`) on a fixed port of
//! every address; `get` is the caller a Job runs; `sleep` is a container that does nothing.
//!
//! - `http --name NAME [--port 8080]`: [`HttpApp`] — answers with its name, reports what reached
//!   it in `x-seen-*` headers.
//! - `tcp-echo [--port 9000]`, `grpc [--name NAME] [--port 50051]`: the TCP echo and the gRPC echo.
//! - `get URL [--expect-status 200] [--timeout 10s] [--retry-for 30s]`: one HTTP/1.1 GET, host
//!   names resolved by the system resolver (`/etc/resolv.conf`, so cluster DNS). Prints the
//!   status line, the headers and the body; exits 0 when the status is the expected one, 1
//!   otherwise. A failed resolve, connect or exchange is retried until `--retry-for` has passed
//!   (the pod may start before DNS or endpoints are there); a status is never retried.
//! - `sleep`: until SIGTERM.
//!
//! Every subcommand exits at once on SIGTERM or SIGINT (0 for the servers and `sleep`, 143 for a
//! `get` cut short): pods are deleted with a short grace period in the tests.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use weft_runtime::duration::parse_duration;
use weft_tests::apps::{grpc_echo_on, tcp_echo_on, HttpApp};

#[derive(Parser)]
#[command(
    name = "weft-test-app",
    about = "weft's test workload: servers, a client, a sleeper"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The HTTP/1.1 + HTTP/2 app that answers with its name and reports what reached it.
    Http {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// A TCP echo server (closes its side after the client's FIN, writing `<eof seen>`).
    TcpEcho {
        #[arg(long, default_value_t = 9000)]
        port: u16,
    },
    /// The gRPC echo service (`weft.test.v1.Echo`).
    Grpc {
        #[arg(long, default_value = "grpc")]
        name: String,
        #[arg(long, default_value_t = 50051)]
        port: u16,
    },
    /// One HTTP/1.1 GET; exit 0 when the status is the expected one.
    Get {
        url: Uri,
        #[arg(long, default_value_t = 200)]
        expect_status: u16,
        /// Limit for one attempt: resolve, connect, request and the whole body.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Keep retrying a failed attempt until this long after the start.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        retry_for: Duration,
    },
    /// Sleep until SIGTERM.
    Sleep,
    /// Print a file (the image has no shell: what `kubectl exec … cat` would be).
    Cat { path: std::path::PathBuf },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_get = matches!(cli.command, Command::Get { .. });
    let work = async {
        match cli.command {
            Command::Http { name, port } => {
                let app = HttpApp::serve(&name, Duration::ZERO, listen(port)?);
                eprintln!("http app {name} listening on {}", app.addr);
                std::future::pending().await
            }
            Command::TcpEcho { port } => {
                eprintln!("tcp echo listening on {}", tcp_echo_on(listen(port)?));
                std::future::pending().await
            }
            Command::Grpc { name, port } => {
                let addr = grpc_echo_on(&name, listen(port)?);
                eprintln!("grpc echo {name} listening on {addr}");
                std::future::pending().await
            }
            Command::Get {
                url,
                expect_status,
                timeout,
                retry_for,
            } => get(&url, expect_status, timeout, retry_for).await,
            Command::Sleep => std::future::pending().await,
            Command::Cat { path } => {
                let bytes = tokio::fs::read(&path).await?;
                let mut stdout = tokio::io::stdout();
                tokio::io::AsyncWriteExt::write_all(&mut stdout, &bytes).await?;
                tokio::io::AsyncWriteExt::flush(&mut stdout).await?;
                Ok(0)
            }
        }
    };
    let stopped = async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    };
    let code = tokio::select! {
        result = work => match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("weft-test-app: {e:#}");
                1
            }
        },
        signalled = stopped => match signalled {
            Ok(()) if is_get => 143,
            Ok(()) => 0,
            Err(e) => {
                eprintln!("weft-test-app: signals: {e:#}");
                1
            }
        },
    };
    let _ = std::io::stdout().flush();
    // Straight out: the runtime's shutdown would wait for nothing useful.
    std::process::exit(code)
}

/// A listener on `port` of every address: `[::]` taking IPv4 too when the pod has IPv6,
/// `0.0.0.0` when it has not.
fn listen(port: u16) -> anyhow::Result<TcpListener> {
    let bind = |domain: Domain, addr: SocketAddr| -> std::io::Result<Socket> {
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if domain == Domain::IPV6 {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    };
    let socket = bind(Domain::IPV6, (Ipv6Addr::UNSPECIFIED, port).into())
        .or_else(|_| bind(Domain::IPV4, (Ipv4Addr::UNSPECIFIED, port).into()))
        .with_context(|| format!("bind port {port}"))?;
    Ok(TcpListener::from_std(socket.into())?)
}

async fn get(
    url: &Uri,
    expect_status: u16,
    timeout: Duration,
    retry_for: Duration,
) -> anyhow::Result<i32> {
    if url.scheme_str() != Some("http") {
        bail!("{url}: only http:// URLs");
    }
    let authority = url
        .authority()
        .ok_or_else(|| anyhow!("{url}: no host"))?
        .clone();
    let deadline = Instant::now() + retry_for;
    let mut attempt = 1;
    let (status_line, headers, body) = loop {
        let once = tokio::time::timeout(timeout, get_once(url, &authority));
        let failure = match once.await {
            Ok(Ok(answer)) => break answer,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        let pause = Duration::from_millis(500);
        if Instant::now() + pause >= deadline {
            bail!("GET {url}: {failure} (attempt {attempt}, retried for {retry_for:?})");
        }
        eprintln!("GET {url}: {failure}; retrying (attempt {attempt})");
        attempt += 1;
        tokio::time::sleep(pause).await;
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{status_line}")?;
    for (name, value) in &headers {
        writeln!(out, "{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
    }
    writeln!(out)?;
    out.write_all(&body)?;
    if !body.ends_with(b"\n") {
        writeln!(out)?;
    }
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    if code == Some(expect_status) {
        Ok(0)
    } else {
        eprintln!("GET {url}: expected status {expect_status}, got {status_line}");
        Ok(1)
    }
}

/// Resolve, connect to the first address that takes it, send the GET, read the whole body.
async fn get_once(
    url: &Uri,
    authority: &http::uri::Authority,
) -> anyhow::Result<(String, http::HeaderMap, Bytes)> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolve {host}"))?
        .collect();
    let mut stream = None;
    let mut last = anyhow!("{host} resolved to no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = anyhow!(e).context(format!("connect {addr}")),
        }
    }
    let Some(stream) = stream else {
        return Err(last);
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(header::HOST, authority.as_str())
        .header(header::USER_AGENT, "weft-test-app")
        .body(Empty::<Bytes>::new())?;
    let rsp = sender.send_request(req).await.context("request")?;
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.context("response body")?.to_bytes();
    let status_line = format!("{:?} {}", parts.version, parts.status);
    Ok((status_line, parts.headers, body))
}
