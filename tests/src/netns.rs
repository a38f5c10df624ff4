//! Network namespaces of a test's own (needs root, as the suite has): created with loopback up,
//! deleted with everything in them (links, addresses, iptables rules) when dropped, also when
//! the test fails. What goes inside — links, addresses, processes — is the test's.

use std::os::fd::AsFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip ARGS` in this namespace and panics, with its stderr, if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2; the suite runs as root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace named `weft-PREFIX-PID-N`.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(prefix: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "weft-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` inside the namespace; panics, with its stderr, if it fails.
    pub fn ip(&self, args: &[&str]) {
        ip(&[&["netns", "exec", &self.name, "ip"][..], args].concat());
    }

    /// Runs `program ARGS` inside the namespace and returns what it did.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs `f` on a thread inside the namespace: the sockets it makes are the namespace's.
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("the namespace");
        std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("enter the namespace");
            f()
        })
        .join()
        .expect("the thread inside the namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its links, and a veth's other end with them.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
