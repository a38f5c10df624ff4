//! Load: callers sending requests back to back until stopped, counting what succeeded
//! ([`Load`]). One request at a time is [`crate::client`]'s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::client::{get, http1_client, Reply};

/// Callers sending requests back to back until stopped, counting what succeeded.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `callers` concurrent callers send `GET /` with Host `host` to `addr`; a response counts as
    /// a success when `good` says so (every other outcome is printed and counted as a failure).
    pub fn start(
        addr: SocketAddr,
        host: &'static str,
        callers: usize,
        good: fn(&Reply) -> bool,
    ) -> Self {
        let http = http1_client();
        Self::with(callers, move || {
            let http = http.clone();
            async move {
                let r = get(&http, addr, host, "/").await?;
                anyhow::ensure!(good(&r), "unexpected reply: {r:?}");
                Ok(())
            }
        })
    }

    /// `callers` concurrent callers each run `exchange` in a loop until stopped; an `Err` is
    /// printed and counted as a failure.
    pub fn with<F, Fut>(callers: usize, exchange: F) -> Self
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let callers = (0..callers)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let exchange = exchange.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match exchange().await {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("failed exchange: {e:#}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            callers,
        }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the callers; returns (succeeded, failed).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.callers {
            c.await.expect("caller panicked");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
