//! The inbound's connections to the app: one pair of pooled clients (HTTP/1.1 and HTTP/2) per
//! app address. `app-addr` has its pair from the start; a redirected connection goes to the
//! address its caller dialled (the pod's own IP and that port), whose pair is made on first use
//! and kept, up to [`MAX_KEPT`] addresses (past that, a connection's pair lives as long as it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use weft_runtime::body::Body;

use crate::transport::AppAt;

/// App addresses whose clients are kept: a pod's ports, which its Service declares.
const MAX_KEPT: usize = 64;

/// Pooled clients to one app address.
pub struct AppClients<C> {
    pub addr: SocketAddr,
    /// The local address connections to it are made from (`transport::app_source`), for an
    /// address other than `app-addr`.
    pub from: Option<std::net::IpAddr>,
    pub http1: Client<C, Body>,
    pub http2: Client<C, Body>,
}

impl<C> AppClients<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    fn new(addr: SocketAddr, from: Option<std::net::IpAddr>, connector: C) -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_initial_stream_window_size(1 << 20)
            .http2_initial_connection_window_size(4 << 20)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            addr,
            from,
            http1,
            http2,
        }
    }
}

/// The clients of every app address in use.
pub struct Apps<C> {
    connector: C,
    default: Arc<AppClients<C>>,
    others: Mutex<HashMap<SocketAddr, Arc<AppClients<C>>>>,
}

impl<C> Apps<C>
where
    C: Connect + AppAt + Clone + Send + Sync + 'static,
{
    /// `connector` reaches `app-addr`. An `app-addr` on one of the pod's own non-loopback
    /// addresses (`own`) is connected to from `transport::app_source`, as redirected ones are.
    pub fn new(app_addr: SocketAddr, connector: C, own: bool) -> Self {
        let default = if own {
            let from = Some(crate::transport::app_source(app_addr));
            AppClients::new(app_addr, from, connector.at(app_addr))
        } else {
            AppClients::new(app_addr, None, connector.clone())
        };
        Self {
            default: Arc::new(default),
            connector,
            others: Mutex::new(HashMap::new()),
        }
    }

    /// The clients of `app-addr`.
    pub fn default(&self) -> &Arc<AppClients<C>> {
        &self.default
    }

    /// The clients of `addr`.
    pub fn at(&self, addr: SocketAddr) -> Arc<AppClients<C>> {
        if addr == self.default.addr {
            return self.default.clone();
        }
        let from = Some(crate::transport::app_source(addr));
        let make = || Arc::new(AppClients::new(addr, from, self.connector.at(addr)));
        let Ok(mut others) = self.others.lock() else {
            return make();
        };
        if let Some(c) = others.get(&addr) {
            return c.clone();
        }
        let clients = make();
        if others.len() < MAX_KEPT {
            others.insert(addr, clients.clone());
        }
        clients
    }
}
