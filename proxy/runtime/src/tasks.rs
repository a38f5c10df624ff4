//! A running binary's tasks and their one shutdown signal: every long-lived task (accept loops,
//! watchers, streams) is spawned here, a drain is requested once for all of them, and joining
//! waits until each has finished.
//!
//! The proxy's and the control plane's `Running` each hold one; what the tasks do, and how a
//! task reacts to the signal (stop accepting, finish in-flight work), is theirs.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Tasks that run until [`Tasks::shutdown`], then finish on their own.
#[derive(Debug, Default)]
pub struct Tasks {
    shutdown: CancellationToken,
    set: JoinSet<()>,
}

impl Tasks {
    /// The signal every task watches: cancelled by [`Tasks::shutdown`].
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` on the runtime; [`Tasks::join`] waits for it.
    pub fn spawn<F>(&mut self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.set.spawn(task);
    }

    /// Requests a drain: every task sees its shutdown token cancelled.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves once a drain has been requested.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await;
    }

    /// Waits for every task to finish (after a drain, or on its own).
    pub async fn join(mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_waits_for_every_task_after_a_shutdown() {
        let mut tasks = Tasks::default();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(2);
        for _ in 0..2 {
            let (stop, done) = (tasks.shutdown_token().clone(), done_tx.clone());
            tasks.spawn(async move {
                stop.cancelled().await;
                let _ = done.send(()).await;
            });
        }
        drop(done_tx);
        tasks.shutdown();
        tasks.shutdown_requested().await;
        tasks.join().await;
        assert_eq!(done_rx.recv().await, Some(()));
        assert_eq!(done_rx.recv().await, Some(()));
        assert_eq!(done_rx.recv().await, None, "both tasks ran to their end");
    }
}
