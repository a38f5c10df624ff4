//! The nat rules of transparent interception, as `iptables-restore` input: what `weft-proxy
//! init` installs in a pod's network namespace and what `--uninstall` takes out. Pure text in,
//! text out — no process is run here (that is `init/iptables.rs`).
//!
//! weft's chains, all in the nat table, named so that `iptables -t nat -S` says whose they are:
//!
//! | chain | jumped to from | does |
//! |---|---|---|
//! | `WEFT_PREROUTING` | `PREROUTING` | inbound TCP: the proxy's own ports and `--skip-inbound-ports` return, the rest (or only `--include-inbound-ports`) goes to `WEFT_INBOUND_REDIRECT` |
//! | `WEFT_INBOUND_REDIRECT` | `WEFT_PREROUTING` | `REDIRECT` to the inbound listener |
//! | `WEFT_OUTPUT` | `OUTPUT` | outbound TCP: the inbound's connections to its app (from `127.0.0.6`, `::1`) return; the proxy's connections to its own pod (out on `lo`, not to loopback) go to `WEFT_INBOUND_REDIRECT`; the proxy's other traffic (by UID and GID), loopback destinations and the pod's own addresses (out on `lo`), `--skip-outbound-ports` and `--skip-outbound-cidrs` return, the rest goes to `WEFT_OUTBOUND_REDIRECT` |
//! | `WEFT_OUTBOUND_REDIRECT` | `WEFT_OUTPUT` | `REDIRECT` to the outbound listener |
//!
//! UDP is never touched, so DNS keeps working.

use std::net::IpAddr;

/// The prefix of every chain weft owns.
pub const CHAIN_PREFIX: &str = "WEFT_";
const PREROUTING: &str = "WEFT_PREROUTING";
const INBOUND_REDIRECT: &str = "WEFT_INBOUND_REDIRECT";
const OUTPUT: &str = "WEFT_OUTPUT";
const OUTBOUND_REDIRECT: &str = "WEFT_OUTBOUND_REDIRECT";
const CHAINS: [&str; 4] = [PREROUTING, INBOUND_REDIRECT, OUTPUT, OUTBOUND_REDIRECT];
/// The built-in chains weft jumps from, and where to.
const JUMPS: [(&str, &str); 2] = [("PREROUTING", PREROUTING), ("OUTPUT", OUTPUT)];

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The address the inbound connects to its app from (`transport::app_source`).
    fn app_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::1/128",
        }
    }
}

/// A port or an inclusive range, as the flags take them (`8080`, `9000-9100`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    fn iptables(self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }
}

/// An address range (`10.0.0.0/8`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    fn family(self) -> Family {
        if self.addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What the rules are made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Ports of the proxy's own (admin) that are never redirected, besides the two listeners.
    pub own_ports: Vec<u16>,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// `None`: every inbound port (the default); otherwise only these.
    pub include_inbound_ports: Option<Vec<Ports>>,
    pub skip_inbound_ports: Vec<Ports>,
    pub skip_outbound_ports: Vec<Ports>,
    pub skip_outbound_cidrs: Vec<Cidr>,
}

/// `iptables-restore --noflush` input that installs weft's rules for `family`. It declares
/// weft's chains (which empties them if they exist) and adds a jump from a built-in chain only
/// where `existing` (the family's `iptables-save -t nat`) has none: running it twice gives the
/// same rules.
pub fn install(settings: &Settings, family: Family, existing: &str) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    let rule = |out: &mut String, chain: &str, rest: &str| {
        out.push_str(&format!("-A {chain} {rest}\n"));
    };

    rule(
        &mut out,
        INBOUND_REDIRECT,
        &format!("-p tcp -j REDIRECT --to-ports {}", settings.inbound_port),
    );
    let mut own = vec![settings.inbound_port, settings.outbound_port];
    own.extend(&settings.own_ports);
    own.sort_unstable();
    own.dedup();
    for port in &own {
        rule(
            &mut out,
            PREROUTING,
            &format!("-p tcp --dport {port} -j RETURN"),
        );
    }
    for ports in &settings.skip_inbound_ports {
        rule(
            &mut out,
            PREROUTING,
            &format!("-p tcp --dport {} -j RETURN", ports.iptables()),
        );
    }
    match &settings.include_inbound_ports {
        None => rule(
            &mut out,
            PREROUTING,
            &format!("-p tcp -j {INBOUND_REDIRECT}"),
        ),
        Some(ports) => {
            for p in ports {
                rule(
                    &mut out,
                    PREROUTING,
                    &format!("-p tcp --dport {} -j {INBOUND_REDIRECT}", p.iptables()),
                );
            }
        }
    }

    rule(
        &mut out,
        OUTBOUND_REDIRECT,
        &format!("-p tcp -j REDIRECT --to-ports {}", settings.outbound_port),
    );
    // The inbound's connections to its app, made from the app source address, go through;
    // the proxy's other connections to its own pod (a Service whose endpoint is this pod) go
    // to its inbound listener, as a peer's would.
    rule(
        &mut out,
        OUTPUT,
        &format!("-s {} -o lo -j RETURN", family.app_source()),
    );
    for owner in [
        format!("--uid-owner {}", settings.proxy_uid),
        format!("--gid-owner {}", settings.proxy_gid),
    ] {
        rule(
            &mut out,
            OUTPUT,
            &format!(
                "! -d {} -o lo -p tcp -m owner {owner} -j {INBOUND_REDIRECT}",
                family.loopback()
            ),
        );
    }
    rule(
        &mut out,
        OUTPUT,
        &format!("-m owner --uid-owner {} -j RETURN", settings.proxy_uid),
    );
    rule(
        &mut out,
        OUTPUT,
        &format!("-m owner --gid-owner {} -j RETURN", settings.proxy_gid),
    );
    rule(
        &mut out,
        OUTPUT,
        &format!("-d {} -j RETURN", family.loopback()),
    );
    // The app calling its own pod's addresses (which leave by the loopback interface) stays
    // direct, as a pod talking to itself does without a mesh.
    rule(&mut out, OUTPUT, "-o lo -j RETURN");
    for ports in &settings.skip_outbound_ports {
        rule(
            &mut out,
            OUTPUT,
            &format!("-p tcp --dport {} -j RETURN", ports.iptables()),
        );
    }
    for cidr in settings
        .skip_outbound_cidrs
        .iter()
        .filter(|c| c.family() == family)
    {
        rule(
            &mut out,
            OUTPUT,
            &format!("-d {}/{} -j RETURN", cidr.addr, cidr.prefix),
        );
    }
    rule(&mut out, OUTPUT, &format!("-p tcp -j {OUTBOUND_REDIRECT}"));

    for (from, to) in JUMPS {
        let jump = format!("-A {from} -j {to}");
        if !existing.lines().any(|l| l.trim() == jump) {
            out.push_str(&jump);
            out.push('\n');
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input that removes exactly weft's rules, as `existing` (the
/// family's `iptables-save -t nat`) shows them: every rule elsewhere that jumps into a chain of
/// weft's, then weft's chains. `None` when there is nothing of weft's.
pub fn uninstall(existing: &str) -> Option<String> {
    let ours = |chain: &str| chain.starts_with(CHAIN_PREFIX);
    let mut deletes = Vec::new();
    let mut chains = Vec::new();
    for line in existing.lines().map(str::trim) {
        if let Some(chain) = line
            .strip_prefix(':')
            .and_then(|l| l.split_whitespace().next())
        {
            if ours(chain) {
                chains.push(chain.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            let target = rest
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .unwrap_or_default();
            if !ours(chain) && ours(target) {
                deletes.push(format!("-D {rest}"));
            }
        }
    }
    if chains.is_empty() && deletes.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    // Declaring a chain empties it, so that it can be deleted with rules that point between
    // weft's own chains.
    for chain in &chains {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for d in deletes {
        out.push_str(&d);
        out.push('\n');
    }
    for chain in &chains {
        out.push_str(&format!("-X {chain}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Whether `existing` (an `iptables-save -t nat`) holds anything of weft's.
pub fn installed(existing: &str) -> bool {
    existing.lines().any(|l| {
        l.starts_with(&format!(":{CHAIN_PREFIX}")) || l.contains(&format!("-j {CHAIN_PREFIX}"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings() -> Settings {
        Settings {
            inbound_port: 15006,
            outbound_port: 15001,
            own_ports: vec![15020],
            proxy_uid: 2102,
            proxy_gid: 2102,
            include_inbound_ports: None,
            skip_inbound_ports: vec![Ports {
                first: 22,
                last: 22,
            }],
            skip_outbound_ports: vec![Ports {
                first: 5432,
                last: 5433,
            }],
            skip_outbound_cidrs: vec![
                Cidr {
                    addr: "10.96.0.0".parse().unwrap(),
                    prefix: 12,
                },
                Cidr {
                    addr: "fd00::".parse().unwrap(),
                    prefix: 8,
                },
            ],
        }
    }

    #[test]
    fn install_writes_weft_chains_and_jumps_once() {
        let rules = install(&settings(), Family::V4, "");
        assert_eq!(
            rules,
            "*nat\n\
             :WEFT_PREROUTING - [0:0]\n\
             :WEFT_INBOUND_REDIRECT - [0:0]\n\
             :WEFT_OUTPUT - [0:0]\n\
             :WEFT_OUTBOUND_REDIRECT - [0:0]\n\
             -A WEFT_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n\
             -A WEFT_PREROUTING -p tcp --dport 15001 -j RETURN\n\
             -A WEFT_PREROUTING -p tcp --dport 15006 -j RETURN\n\
             -A WEFT_PREROUTING -p tcp --dport 15020 -j RETURN\n\
             -A WEFT_PREROUTING -p tcp --dport 22 -j RETURN\n\
             -A WEFT_PREROUTING -p tcp -j WEFT_INBOUND_REDIRECT\n\
             -A WEFT_OUTBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
             -A WEFT_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN\n\
             -A WEFT_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m owner --uid-owner 2102 -j WEFT_INBOUND_REDIRECT\n\
             -A WEFT_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m owner --gid-owner 2102 -j WEFT_INBOUND_REDIRECT\n\
             -A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN\n\
             -A WEFT_OUTPUT -m owner --gid-owner 2102 -j RETURN\n\
             -A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN\n\
             -A WEFT_OUTPUT -o lo -j RETURN\n\
             -A WEFT_OUTPUT -p tcp --dport 5432:5433 -j RETURN\n\
             -A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN\n\
             -A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT\n\
             -A PREROUTING -j WEFT_PREROUTING\n\
             -A OUTPUT -j WEFT_OUTPUT\n\
             COMMIT\n"
        );
        // IPv6: its own loopback and only its own CIDRs.
        let v6 = install(&settings(), Family::V6, "");
        assert!(v6.contains("-A WEFT_OUTPUT -d ::1/128 -j RETURN\n"), "{v6}");
        assert!(
            v6.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN\n"),
            "{v6}"
        );
        assert!(!v6.contains("10.96.0.0"), "{v6}");
        // The jumps are there already: not added again.
        let again = install(&settings(), Family::V4, &rules);
        assert!(!again.contains("-A PREROUTING"), "{again}");
        assert!(!again.contains("-A OUTPUT -j"), "{again}");
    }

    #[test]
    fn only_the_included_inbound_ports_are_redirected() {
        let mut s = settings();
        s.include_inbound_ports = Some(vec![
            Ports {
                first: 8080,
                last: 8080,
            },
            Ports {
                first: 9000,
                last: 9100,
            },
        ]);
        let rules = install(&s, Family::V4, "");
        assert!(rules.contains("-A WEFT_PREROUTING -p tcp --dport 8080 -j WEFT_INBOUND_REDIRECT\n"));
        assert!(rules
            .contains("-A WEFT_PREROUTING -p tcp --dport 9000:9100 -j WEFT_INBOUND_REDIRECT\n"));
        assert!(!rules.contains("-A WEFT_PREROUTING -p tcp -j WEFT_INBOUND_REDIRECT\n"));
    }

    #[test]
    fn uninstall_removes_exactly_weft_chains_and_jumps() {
        let saved = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:WEFT_OUTPUT - [0:0]\n:WEFT_OUTBOUND_REDIRECT - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A WEFT_OUTPUT -p tcp -j WEFT_OUTBOUND_REDIRECT\n-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-X\nCOMMIT\n";
        assert_eq!(
            uninstall(saved).unwrap(),
            "*nat\n:WEFT_OUTPUT - [0:0]\n:WEFT_OUTBOUND_REDIRECT - [0:0]\n-D OUTPUT -p tcp -j WEFT_OUTPUT\n-X WEFT_OUTPUT\n-X WEFT_OUTBOUND_REDIRECT\nCOMMIT\n"
        );
        assert!(installed(saved));
        let theirs = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
        assert_eq!(uninstall(theirs), None);
        assert!(!installed(theirs));
    }
}
