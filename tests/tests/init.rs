//! `weft-proxy init`, the built binary, in network namespaces this test creates (each plays a
//! pod; needs root, as CI has; every namespace is deleted afterwards, also on failure): the
//! rules it installs, twice giving the same rules, `--uninstall` removing exactly weft's and
//! nothing else, `--dry-run` changing nothing, both iptables backends and IPv6, and the rules
//! doing their job: an app's outbound TCP reaches the outbound listener, which reads where it
//! was going (`SO_ORIGINAL_DST`, IPv4 and IPv6), and a skipped port does not.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

use weft_tests::{binary, Netns};

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod's network namespace: a veth pair inside it, one end holding 10.99.0.1/24 and
/// fd99::1/64 (addresses that exist only inside it).
struct Pod {
    netns: Netns,
}

impl Pod {
    fn create() -> Pod {
        let netns = Netns::create("init");
        netns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
        netns.ip(&["link", "set", "d0", "up"]);
        netns.ip(&["link", "set", "d1", "up"]);
        netns.ip(&["addr", "add", "10.99.0.1/24", "dev", "d0"]);
        netns.ip(&["-6", "addr", "add", "fd99::1/64", "dev", "d0", "nodad"]);
        Pod { netns }
    }

    fn exec(&self, program: &str, args: &[&str]) -> Output {
        self.netns.exec(program, args)
    }

    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.netns.inside(f)
    }

    fn init(&self, args: &[&str]) -> Output {
        let proxy = binary("weft-proxy");
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        self.exec(proxy.to_str().unwrap(), &all)
    }

    /// `iptables -t nat -S` (or ip6tables), in backend `backend` (`nft` or `legacy`).
    fn nat(&self, family: &str, backend: &str) -> String {
        ok(
            self.exec(&format!("{family}-{backend}"), &["-t", "nat", "-S"]),
            "iptables -S",
        )
    }
}

fn weft_lines(rules: &str) -> Vec<&str> {
    rules.lines().filter(|l| l.contains("WEFT_")).collect()
}

#[test]
fn init_twice_gives_the_same_rules_and_uninstall_removes_only_weft_rules() {
    for backend in ["nft", "legacy"] {
        let ns = Pod::create();
        // Someone else's rules, which must survive both.
        for family in ["iptables", "ip6tables"] {
            ok(
                ns.exec(
                    &format!("{family}-{backend}"),
                    &["-t", "nat", "-N", "OTHER"],
                ),
                "-N",
            );
            ok(
                ns.exec(
                    &format!("{family}-{backend}"),
                    &["-t", "nat", "-A", "OUTPUT", "-j", "OTHER"],
                ),
                "-A",
            );
        }
        let flags = [
            "--iptables-mode",
            backend,
            "--skip-outbound-cidrs",
            "10.98.0.0/16,fd98::/16",
        ];
        let said = ok(ns.init(&flags), "init");
        assert!(said.contains("IPv4") && said.contains("IPv6"), "{said}");
        for family in ["iptables", "ip6tables"] {
            let first = ns.nat(family, backend);
            assert!(
                first.contains("-A OUTPUT -j WEFT_OUTPUT"),
                "{backend} {family}: {first}"
            );
            assert!(
                first.contains("-A PREROUTING -j WEFT_PREROUTING"),
                "{first}"
            );
            assert!(first.contains("--uid-owner 2102"), "{first}");
            let cidr = if family == "iptables" {
                "10.98.0.0/16"
            } else {
                "fd98::/16"
            };
            assert!(first.contains(cidr), "{family}: {first}");
            let _ = ok(ns.init(&flags), "init again");
            assert_eq!(
                ns.nat(family, backend),
                first,
                "{backend} {family}: init twice"
            );
        }
        ok(
            ns.init(&["--iptables-mode", backend, "--uninstall"]),
            "uninstall",
        );
        for family in ["iptables", "ip6tables"] {
            let after = ns.nat(family, backend);
            assert!(weft_lines(&after).is_empty(), "{backend} {family}: {after}");
            assert!(
                after.contains("-A OUTPUT -j OTHER"),
                "{backend} {family}: {after}"
            );
        }
        // Nothing left to remove is no error.
        ok(
            ns.init(&["--iptables-mode", backend, "--uninstall"]),
            "uninstall again",
        );
    }
}

#[test]
fn auto_picks_the_backend_that_holds_rules_and_dry_run_changes_nothing() {
    let ns = Pod::create();
    ok(
        ns.exec(
            "iptables-legacy",
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-d",
                "10.97.0.1",
                "-j",
                "RETURN",
            ],
        ),
        "legacy rule",
    );
    let dry = ok(ns.init(&["--dry-run"]), "dry run");
    assert!(dry.contains("# IPv4 (Legacy)"), "{dry}");
    assert!(dry.contains("-A OUTPUT -j WEFT_OUTPUT"), "{dry}");
    assert!(weft_lines(&ns.nat("iptables", "legacy")).is_empty());
    assert!(weft_lines(&ns.nat("iptables", "nft")).is_empty());
    ok(ns.init(&[]), "init");
    assert!(
        !weft_lines(&ns.nat("iptables", "legacy")).is_empty(),
        "auto chose legacy"
    );
    assert!(
        weft_lines(&ns.nat("iptables", "nft")).is_empty(),
        "and left nft alone"
    );
}

#[test]
fn bad_flags_name_the_flag_and_change_nothing() {
    let ns = Pod::create();
    let out = ns.init(&[
        "--skip-outbound-ports",
        "ssh",
        "--skip-outbound-cidrs",
        "10.0.0.0/40",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--skip-outbound-ports: \"ssh\""), "{err}");
    assert!(
        err.contains("--skip-outbound-cidrs: \"10.0.0.0/40\""),
        "{err}"
    );
    assert!(weft_lines(&ns.nat("iptables", "nft")).is_empty());
}

/// Connects to `addr` and says what came back: the echo's answer, or why not.
fn call(addr: &'static str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(b"ping").map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).map_err(|e| e.to_string())?;
    Ok(got)
}

#[test]
fn the_app_outbound_tcp_reaches_the_outbound_listener_and_a_skipped_port_does_not() {
    let ns = Pod::create();
    ok(ns.init(&["--skip-outbound-ports", "9999"]), "init");
    // The outbound listener's port, played by an echo server (run as root: not the proxy's UID).
    ns.inside(|| {
        // [::] takes IPv4 too (REDIRECT sends local traffic to 127.0.0.1 or ::1).
        let listener = std::net::TcpListener::bind("[::]:15001").unwrap();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf);
                // What the proxy will route by: where the app was going.
                let local = s.local_addr().unwrap();
                let dst = weft_proxy::original_dst::original_dst(&s, local);
                let _ = write!(s, "at the outbound listener, for {dst:?}: ");
                let _ = s.write_all(&buf);
            }
        });
    });
    // Nothing is at 10.99.0.2 (on the veth's subnet, another pod's address): only the redirect
    // can answer.
    let redirected = ns.inside(|| call("10.99.0.2:80"));
    assert_eq!(
        redirected.as_deref(),
        Ok("at the outbound listener, for Ok(Some(10.99.0.2:80)): ping")
    );
    let v6 = ns.inside(|| call("[fd99::2]:8443"));
    assert_eq!(
        v6.as_deref(),
        Ok("at the outbound listener, for Ok(Some([fd99::2]:8443)): ping")
    );
    // Straight to the listener: not redirected, so no original destination.
    let direct = ns.inside(|| call("[::1]:15001"));
    assert_eq!(
        direct.as_deref(),
        Ok("at the outbound listener, for Ok(None): ping")
    );
    // A skipped port, a loopback destination and the pod's own address go where they were
    // going: nowhere.
    for addr in [
        "10.99.0.2:9999",
        "127.0.0.1:80",
        "10.99.0.1:80",
        "[fd99::1]:80",
    ] {
        let direct = ns.inside(move || call(addr));
        assert!(direct.is_err(), "{addr}: {direct:?}");
    }

    // Uninstalled, the app's traffic goes straight to its destination again.
    ok(ns.init(&["--uninstall"]), "uninstall");
    let direct = ns.inside(|| call("10.99.0.2:80"));
    assert!(direct.is_err(), "{direct:?}");
}

#[test]
fn a_missing_iptables_or_net_admin_is_said_plainly() {
    let ns = Pod::create();
    let proxy = binary("weft-proxy");
    let proxy = proxy.to_str().unwrap();
    let no_caps = ns.exec(
        "setpriv",
        &[
            "--bounding-set",
            "-net_admin,-net_raw",
            "--inh-caps",
            "-net_admin,-net_raw",
            proxy,
            "init",
        ],
    );
    assert_eq!(no_caps.status.code(), Some(1));
    let err = String::from_utf8_lossy(&no_caps.stderr);
    assert!(
        err.contains("needs root with NET_ADMIN and NET_RAW"),
        "{err}"
    );

    let no_iptables = ns.exec("env", &["PATH=/nonexistent", proxy, "init"]);
    assert_eq!(no_iptables.status.code(), Some(1));
    let err = String::from_utf8_lossy(&no_iptables.stderr);
    assert!(err.contains("iptables-nft-save not found"), "{err}");
    assert!(weft_lines(&ns.nat("iptables", "nft")).is_empty());
}
