//! `weft-pause`: the pod sandbox process of the test cluster's images (what the `pause`
//! container is to a kubelet): it holds the pod's namespaces open by doing nothing. It runs as
//! PID 1 of the pod's PID namespace when that is shared, so it reaps every orphan that is
//! handed to it (SIGCHLD → `wait` until nothing is left), and exits 0 on SIGTERM or SIGINT —
//! as PID 1 a signal without a handler would be ignored, and the pod would be killed only
//! after its grace period.

use rustix::process::{wait, WaitOptions};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::io::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut child = signal(SignalKind::child())?;
            reap();
            loop {
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = int.recv() => return Ok(()),
                    _ = child.recv() => reap(),
                }
            }
        })
}

/// Collects every child that has exited; signals coalesce, so one SIGCHLD may stand for many.
fn reap() {
    while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
}
