//! `weft-proxy init`: the init container's job. Installs (or with `--uninstall` removes) the nat
//! rules that send a pod's TCP traffic through its proxy, in the current network namespace, for
//! IPv4 and IPv6. What the rules are is `init/rules.rs`; running iptables is `init/iptables.rs`.
//! docs/interception.md describes the rules for users.

mod iptables;
pub mod rules;

use std::net::IpAddr;
use std::process::ExitCode;

use iptables::Mode;
use rules::{Cidr, Family, Ports, Settings};

/// The settings of `weft-proxy init`, as flags or `WEFT_PROXY_INIT_*` variables.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Remove weft's chains and the jumps to them, and nothing else.
    #[arg(long)]
    uninstall: bool,
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// iptables backend: nft, legacy, or auto (the one that already holds rules, else nft).
    #[arg(
        long,
        env = "WEFT_PROXY_INIT_IPTABLES_MODE",
        value_enum,
        default_value = "auto"
    )]
    iptables_mode: Mode,
    /// The proxy's inbound listener port (where inbound TCP is redirected).
    #[arg(long, env = "WEFT_PROXY_INIT_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's outbound listener port (where the app's outbound TCP is redirected).
    #[arg(long, env = "WEFT_PROXY_INIT_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    /// The proxy's admin port: never redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_ADMIN_PORT", default_value_t = 15020)]
    admin_port: u16,
    /// The UID the proxy runs as: its own traffic is never redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_PROXY_UID", default_value_t = 2102)]
    proxy_uid: u32,
    /// The GID the proxy runs as: its own traffic is never redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_PROXY_GID", default_value_t = 2102)]
    proxy_gid: u32,
    /// Inbound ports to redirect (`*` for all, the default), comma-separated; ranges as `A-B`.
    #[arg(
        long,
        env = "WEFT_PROXY_INIT_INCLUDE_INBOUND_PORTS",
        default_value = "*"
    )]
    include_inbound_ports: String,
    /// Inbound ports never redirected, comma-separated; ranges as `A-B`.
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_INBOUND_PORTS", default_value = "")]
    skip_inbound_ports: String,
    /// Outbound destination ports never redirected, comma-separated; ranges as `A-B`.
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_OUTBOUND_PORTS", default_value = "")]
    skip_outbound_ports: String,
    /// Outbound destinations never redirected, as comma-separated CIDRs (IPv4 and IPv6).
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_OUTBOUND_CIDRS", default_value = "")]
    skip_outbound_cidrs: String,
}

/// A flag's value that does not parse, naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct BadFlag {
    flag: &'static str,
    problem: String,
}

fn bad(flag: &'static str, problem: impl Into<String>) -> BadFlag {
    BadFlag {
        flag,
        problem: problem.into(),
    }
}

fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_ports(flag: &'static str, value: &str) -> Result<Vec<Ports>, BadFlag> {
    items(value)
        .map(|item| {
            let port = |s: &str| {
                s.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    bad(
                        flag,
                        format!("{item:?} is not a port (1-65535) or a range A-B"),
                    )
                })
            };
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (port(a)?, port(b)?),
                None => (port(item)?, port(item)?),
            };
            if first > last {
                return Err(bad(
                    flag,
                    format!("{item:?}: the range ends before it starts"),
                ));
            }
            Ok(Ports { first, last })
        })
        .collect()
}

fn parse_cidrs(flag: &'static str, value: &str) -> Result<Vec<Cidr>, BadFlag> {
    items(value)
        .map(|item| {
            let wrong = || {
                bad(
                    flag,
                    format!("{item:?} is not an address range like 10.0.0.0/8 or fd00::/8"),
                )
            };
            let (addr, prefix) = item.split_once('/').ok_or_else(wrong)?;
            let addr: IpAddr = addr.parse().map_err(|_| wrong())?;
            let prefix: u8 = prefix.parse().map_err(|_| wrong())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > max {
                return Err(wrong());
            }
            Ok(Cidr { addr, prefix })
        })
        .collect()
}

impl Args {
    fn settings(&self) -> Result<Settings, Vec<BadFlag>> {
        let mut errors = Vec::new();
        let mut keep =
            |r: Result<Vec<Ports>, BadFlag>| r.map_err(|e| errors.push(e)).unwrap_or_default();
        let include = if self.include_inbound_ports.trim() == "*" {
            None
        } else {
            Some(keep(parse_ports(
                "include-inbound-ports",
                &self.include_inbound_ports,
            )))
        };
        let skip_inbound_ports = keep(parse_ports("skip-inbound-ports", &self.skip_inbound_ports));
        let skip_outbound_ports = keep(parse_ports(
            "skip-outbound-ports",
            &self.skip_outbound_ports,
        ));
        let skip_outbound_cidrs = parse_cidrs("skip-outbound-cidrs", &self.skip_outbound_cidrs)
            .map_err(|e| errors.push(e))
            .unwrap_or_default();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Settings {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            own_ports: vec![self.admin_port],
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            include_inbound_ports: include,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_outbound_cidrs,
        })
    }
}

/// A line on stdout; a closed stdout (`| head`) is no reason to fail.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// The families to change: IPv6 only where this namespace has it.
fn families() -> Vec<Family> {
    let mut families = vec![Family::V4];
    if std::path::Path::new("/proc/net/if_inet6").exists() {
        families.push(Family::V6);
    } else {
        eprintln!("weft-proxy init: this network namespace has no IPv6; only IPv4 rules");
    }
    families
}

/// Runs `weft-proxy init`: 0 when the rules are in place (or gone, with `--uninstall`), 64 for
/// a bad flag, 1 when iptables could not do it.
pub fn main(args: Args) -> ExitCode {
    let settings = match args.settings() {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("weft-proxy init: {e}");
            }
            return ExitCode::from(64);
        }
    };
    match apply(&args, &settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn apply(args: &Args, settings: &Settings) -> Result<(), iptables::Error> {
    let mode = if args.dry_run && args.iptables_mode == Mode::Auto {
        // A dry run need not be able to read the tables.
        iptables::resolve(Mode::Auto).unwrap_or(Mode::Nft)
    } else {
        iptables::resolve(args.iptables_mode)?
    };
    for family in families() {
        let existing = if args.dry_run {
            iptables::save(mode, family).unwrap_or_default()
        } else {
            iptables::save(mode, family)?
        };
        let name = match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        let input = if args.uninstall {
            match rules::uninstall(&existing) {
                Some(input) => input,
                None => {
                    say(&format!(
                        "weft-proxy init: {name} ({mode:?}): no rules of weft's to remove"
                    ));
                    continue;
                }
            }
        } else {
            rules::install(settings, family, &existing)
        };
        if args.dry_run {
            say(&format!(
                "# {name} ({mode:?}): iptables-restore --noflush input\n{input}"
            ));
            continue;
        }
        iptables::restore(mode, family, &input)?;
        let verb = if args.uninstall {
            "removed"
        } else {
            "installed"
        };
        say(&format!(
            "weft-proxy init: {name} ({mode:?}): {verb} weft's nat rules"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_bad_ones_name_their_flag() {
        assert_eq!(
            parse_ports("skip-inbound-ports", "22, 9000-9100").unwrap(),
            vec![
                Ports {
                    first: 22,
                    last: 22
                },
                Ports {
                    first: 9000,
                    last: 9100
                }
            ]
        );
        assert!(parse_ports("skip-inbound-ports", "").unwrap().is_empty());
        for bad in ["0", "70000", "ssh", "9100-9000", "1-"] {
            let e = parse_ports("skip-inbound-ports", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--skip-inbound-ports: "), "{bad}: {e}");
        }
    }

    #[test]
    fn cidrs_parse_for_both_families_and_bad_ones_name_their_flag() {
        let cidrs = parse_cidrs("skip-outbound-cidrs", "10.0.0.0/8,fd00::/8").unwrap();
        assert_eq!(cidrs.len(), 2);
        for bad in ["10.0.0.0", "10.0.0.0/33", "fd00::/129", "nope/8"] {
            let e = parse_cidrs("skip-outbound-cidrs", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("--skip-outbound-cidrs: "), "{bad}: {e}");
        }
    }
}
