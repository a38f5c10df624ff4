//! What an app's connection speaks, from its first bytes: protocol detection for transparently
//! redirected connections (docs/interception.md, "Protocol detection").
//!
//! [`detect`] reads until the bytes are an HTTP/2 prior-knowledge preface, the start of an
//! HTTP/1 request line (a known method and a space), or can no longer be either; or until its
//! timeout, for protocols where the server speaks first and the client sends nothing. Whatever
//! it read is handed back, to be replayed in front of the rest.
//!
//! [`HttpGuard`] is the other side's check: bytes relayed as opaque TCP into a port that serves
//! HTTP must not be an HTTP request, or they would reach the app with headers (a forged
//! `x-weft-client-identity`) that no proxy checked.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How long detection waits for a client's first bytes before taking the connection as opaque
/// TCP. A client-first protocol sends its first bytes right after connecting (well within a
/// millisecond on a pod's loopback; a second allows for a starved, CPU-throttled client), and a
/// server-speaks-first one whose port is not listed in MeshConfig `opaquePorts` waits this long
/// for its server's greeting instead of Linkerd's 10 s, which outlasts many clients' connect
/// timeouts.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// HTTP/1 request methods detection knows (RFC 9110, and PATCH).
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Anything else: relayed byte for byte.
    Tcp,
}

impl Protocol {
    /// The `protocol` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
            Self::Tcp => "tcp",
        }
    }
}

/// The outcome of [`detect`].
#[derive(Debug)]
pub struct Detection {
    pub protocol: Protocol,
    /// The bytes read, to replay in front of the rest of the connection.
    pub prefix: Bytes,
    /// The client sent too little to tell within the timeout.
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Reads the first bytes of `io` to tell what it speaks, for at most `timeout`.
pub async fn detect<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> std::io::Result<Detection> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let mut timed_out = false;
    let protocol = loop {
        if let Some(p) = decide(&buf[..n]) {
            break p;
        }
        match tokio::time::timeout_at(deadline, io.read(&mut buf[n..])).await {
            Err(_) => {
                timed_out = true;
                break Protocol::Tcp;
            }
            // Closed before it could be told: whatever came is relayed as it is.
            Ok(Ok(0)) => break Protocol::Tcp,
            Ok(Ok(read)) => n += read,
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok(Detection {
        protocol,
        prefix: Bytes::copy_from_slice(&buf[..n]),
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// What `seen` is, or `None` while it could still become either HTTP version.
fn decide(seen: &[u8]) -> Option<Protocol> {
    if seen.is_empty() {
        return None;
    }
    if H2_PREFACE.starts_with(seen) {
        return (seen.len() == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    if METHODS.iter().any(|m| seen.starts_with(m)) {
        return Some(Protocol::Http1);
    }
    if METHODS.iter().any(|m| m.starts_with(seen)) {
        return None;
    }
    Some(Protocol::Tcp)
}

/// The most bytes [`looks_like_http`] looks at: a longer opening it cannot tell from a request
/// counts as one.
const MAX_HELD: usize = 64;
/// How long an [`HttpGuard`] waits for the rest of an opening it cannot tell yet.
const GUARD_TIMEOUT: Duration = DETECT_TIMEOUT;

/// Whether `seen` opens what an HTTP/1 server would take for a request line, as leniently as the
/// most lenient servers read one — white space first (blank lines, and what Python's `split`
/// skips), any token as the method (any case, any length), any such white space after it, and a
/// request target (`/…`, `*`, `scheme:…`; any target after
/// `CONNECT`, and HTTP/2's `PRI`) — or `None` while it cannot be told yet. Commands of
/// line-based protocols (`EHLO host`, `AUTH secret`, `PING`) are not requests. Past
/// `MAX_HELD` (64) bytes an opening still undecided counts as a request: refused, not guessed.
pub fn looks_like_http(seen: &[u8]) -> Option<bool> {
    let undecided = || (seen.len() >= MAX_HELD).then_some(true);
    let mut i = seen.iter().take_while(|b| is_blank(**b)).count();
    let start = i;
    while i < seen.len() && is_tchar(seen[i]) {
        i += 1;
    }
    let method = &seen[start..i];
    if i == seen.len() {
        return undecided();
    }
    // Within the line, a line end is no separator: `PING\r\n` is a whole command.
    let separator = |b: u8| is_blank(b) && b != b'\r' && b != b'\n';
    if method.is_empty() || !separator(seen[i]) {
        return Some(false);
    }
    while i < seen.len() && separator(seen[i]) {
        i += 1;
    }
    if method.eq_ignore_ascii_case(b"CONNECT") || method == b"PRI" {
        return Some(true);
    }
    let Some(&first) = seen.get(i) else {
        return undecided();
    };
    if first == b'/' || first == b'*' {
        return Some(true);
    }
    if !first.is_ascii_alphabetic() {
        return Some(false);
    }
    // An absolute URI: a scheme, then `:`.
    while i < seen.len()
        && (seen[i].is_ascii_alphanumeric() || matches!(seen[i], b'+' | b'-' | b'.'))
    {
        i += 1;
    }
    match seen.get(i) {
        None => undecided(),
        Some(b':') => Some(true),
        Some(_) => Some(false),
    }
}

/// What some server takes for white space around a request line's parts: ASCII white space, the
/// control characters Python's `str.split` splits on, and Latin-1's NEL and NBSP.
fn is_blank(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0
    )
}

/// A character of an HTTP token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A client stream relayed as opaque TCP that is refused (a read error) if its first bytes
/// [`looks_like_http`]; they are held back until that is decided.
///
/// An opening that stays undecided for `GUARD_TIMEOUT` (1 s) after its first byte is refused too: a
/// request must not slip through by arriving a byte at a time.
pub struct HttpGuard<T> {
    inner: T,
    held: Vec<u8>,
    /// Decided: not HTTP. `held` is being handed on.
    passed: bool,
    refused: bool,
    /// Running from the first byte until it is decided.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> HttpGuard<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::with_capacity(MAX_HELD),
            passed: false,
            refused: false,
            deadline: None,
        }
    }

    /// Whether it refused the stream as an HTTP request.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

/// The error an [`HttpGuard`] ends the relay with.
pub fn http_refused() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "an HTTP request sent as opaque TCP to a port that serves HTTP",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for HttpGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while !this.passed {
            let decided = match looks_like_http(&this.held) {
                None if this.held.len() >= MAX_HELD => Some(true),
                d => d,
            };
            match decided {
                Some(true) => {
                    this.refused = true;
                    return Poll::Ready(Err(http_refused()));
                }
                Some(false) => this.passed = true,
                None => {
                    if let Some(deadline) = this.deadline.as_mut() {
                        if deadline.as_mut().poll(cx).is_ready() {
                            this.refused = true;
                            return Poll::Ready(Err(http_refused()));
                        }
                    }
                    let mut bytes = [0u8; MAX_HELD];
                    let want = MAX_HELD - this.held.len();
                    let mut rb = ReadBuf::new(&mut bytes[..want]);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        // Closed while undecided: what it sent is not a request.
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => this.passed = true,
                        Poll::Ready(Ok(())) => {
                            this.held.extend_from_slice(rb.filled());
                            if this.deadline.is_none() {
                                let at = Instant::now() + GUARD_TIMEOUT;
                                this.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
                            }
                        }
                    }
                }
            }
        }
        if !this.held.is_empty() {
            let n = this.held.len().min(buf.remaining());
            buf.put_slice(&this.held[..n]);
            this.held.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HttpGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn detect_bytes(chunks: &[&[u8]], close: bool) -> Detection {
        let (mut client, mut server) = tokio::io::duplex(1024);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        if close {
            drop(client);
            detect(&mut server, Duration::from_secs(5)).await.unwrap()
        } else {
            let d = detect(&mut server, Duration::from_millis(50))
                .await
                .unwrap();
            drop(client);
            d
        }
    }

    #[tokio::test]
    async fn tells_http1_http2_and_the_rest() {
        let d = detect_bytes(&[b"GET / HTTP/1.1\r\n"], false).await;
        assert_eq!(
            (d.protocol, &d.prefix[..]),
            (Protocol::Http1, &b"GET / HTTP/1.1\r\n"[..])
        );
        let d = detect_bytes(&[b"DEL", b"ETE /x HTTP/1.1\r\n"], false).await;
        assert_eq!(d.protocol, Protocol::Http1, "a method split across reads");
        let d = detect_bytes(&[H2_PREFACE], false).await;
        assert_eq!((d.protocol, d.prefix.len()), (Protocol::Http2, 24));
        let d = detect_bytes(&[b"*1\r\n$4\r\nPING\r\n"], false).await;
        assert_eq!(
            (d.protocol, d.timed_out),
            (Protocol::Tcp, false),
            "Redis RESP"
        );
        let d = detect_bytes(&[b"\x16\x03\x01\x02\x00"], false).await;
        assert_eq!(d.protocol, Protocol::Tcp, "a TLS ClientHello");
        assert_eq!(
            &d.prefix[..],
            b"\x16\x03\x01\x02\x00",
            "what it read is kept"
        );
    }

    #[tokio::test]
    async fn silence_and_half_a_method_time_out_as_tcp_and_keep_their_bytes() {
        let d = detect_bytes(&[], false).await;
        assert!(d.timed_out && d.protocol == Protocol::Tcp && d.prefix.is_empty());
        let d = detect_bytes(&[b"PO"], false).await;
        assert!(d.timed_out && d.protocol == Protocol::Tcp);
        assert_eq!(&d.prefix[..], b"PO");
        let d = detect_bytes(&[b"PRI * HTTP/2"], true).await;
        assert!(
            !d.timed_out && d.protocol == Protocol::Tcp,
            "closed mid-preface"
        );
    }

    #[test]
    fn an_http_request_is_told_however_leniently_it_is_written() {
        for request in [
            &b"PROPFIND / HTTP/1.1"[..],
            b"OPTIONS * HTTP/1.1",
            b"GET HTTPS://x/ HTTP/1.1",
            b"GET mailto:x HTTP/1.1",
            b"MAIL FROM:<a@b>",
            b"CONNECT db:5432 HTTP/1.1",
            b"connect db:5432 HTTP/1.1",
            b"PRI * HTTP/2.0",
            b"\r\nGET / HTTP/1.1",
            b"get /admin HTTP/1.1",
            b"X-Y_1 /admin HTTP/1.1",
            b"GET  /two-spaces HTTP/1.1",
            b"GET\t/tab HTTP/1.1",
            b" GET /leading-space HTTP/1.1",
            b"GET\x0b/vertical-tab HTTP/1.1",
            b"\x0cGET\x1f/ HTTP/1.1",
            b"AVERYVERYVERYLONGMETHODNAME /x HTTP/1.1",
            &[b'A'; 64][..],
        ] {
            assert_eq!(
                looks_like_http(request),
                Some(true),
                "{}",
                String::from_utf8_lossy(request)
            );
        }
        for undecided in [
            &b""[..],
            b"GE",
            b"GET",
            b"GET ",
            b"GET htt",
            b"\r\n",
            b"EHLO",
        ] {
            assert_eq!(
                looks_like_http(undecided),
                None,
                "{}",
                String::from_utf8_lossy(undecided)
            );
        }
        for other in [
            &b"EHLO client.example\r\n"[..],
            b"AUTH hunter2\r\n",
            b"PING\r\n",
            b"*2\r\n",
            b"\x16\x03\x01",
            b"USER name\r\n",
        ] {
            assert_eq!(
                looks_like_http(other),
                Some(false),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[tokio::test]
    async fn the_guard_refuses_a_request_and_passes_anything_else_whole() {
        let mut refused = HttpGuard::new(&b"GET / HTTP/1.1\r\nx-weft-client-identity: x\r\n"[..]);
        let mut out = Vec::new();
        let e = refused.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(refused.refused());
        assert!(out.is_empty(), "nothing of it was handed on");

        let mut passed = HttpGuard::new(&b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n"[..]);
        let mut out = Vec::new();
        passed.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"EHLO client.example\r\nMAIL FROM:<a@b>\r\n");

        let mut short = HttpGuard::new(&b"QUIT"[..]);
        let mut out = Vec::new();
        short.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"QUIT", "closed undecided: passed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_refuses_an_opening_left_undecided() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET").await.unwrap();
        let mut guard = HttpGuard::new(server);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(GUARD_TIMEOUT * 2, guard.read(&mut buf)).await;
        let e = read
            .expect("decided within the guard's timeout")
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        drop(client);
    }
}
