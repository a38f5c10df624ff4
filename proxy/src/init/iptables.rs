//! Running iptables for `weft-proxy init`: which backend (nft or legacy) and binaries to use,
//! reading the nat table with `*-save` and changing it atomically with `*-restore --noflush`,
//! and errors that say what is missing (the binary, NET_ADMIN) rather than iptables' own words
//! alone.

use std::io::Write;
use std::process::{Command, Stdio};

use super::rules::Family;

/// The iptables backend: the kernel's nf_tables or the legacy xtables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The backend that already holds rules in this namespace (legacy if only it does), else nft.
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{binary} not found: weft-proxy init runs iptables (Debian's iptables package; weft's image carries it)")]
    Missing { binary: String },
    #[error("{binary} was refused ({stderr}): weft-proxy init needs root with NET_ADMIN and NET_RAW in the pod's network namespace (the init container's securityContext)")]
    NotPermitted { binary: String, stderr: String },
    #[error("{binary} failed: {stderr}")]
    Failed { binary: String, stderr: String },
}

fn binary(mode: Mode, family: Family, tool: &str) -> String {
    let base = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let backend = match mode {
        Mode::Legacy => "legacy",
        Mode::Nft | Mode::Auto => "nft",
    };
    format!("{base}-{backend}{tool}")
}

fn run(binary: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing {
                binary: binary.to_string(),
            },
            _ => Error::Failed {
                binary: binary.to_string(),
                stderr: e.to_string(),
            },
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error shows up as the command's own failure below.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::Failed {
        binary: binary.to_string(),
        stderr: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let lower = stderr.to_lowercase();
    if lower.contains("permission denied") || lower.contains("operation not permitted") {
        Err(Error::NotPermitted {
            binary: binary.to_string(),
            stderr,
        })
    } else {
        Err(Error::Failed {
            binary: binary.to_string(),
            stderr,
        })
    }
}

/// The nat table as `iptables-save -t nat` prints it.
pub fn save(mode: Mode, family: Family) -> Result<String, Error> {
    run(&binary(mode, family, "-save"), &["-t", "nat"], None)
}

/// Applies `input` atomically, leaving every chain it does not name as it was.
pub fn restore(mode: Mode, family: Family, input: &str) -> Result<(), Error> {
    run(
        &binary(mode, family, "-restore"),
        &["--noflush", "--wait"],
        Some(input),
    )
    .map(|_| ())
}

/// The backend for `mode`: as asked, or for `Auto` the one that already has rules in this
/// namespace (both empty, as in a new pod: nft). Like Linkerd's and Kubernetes' iptables
/// wrappers, it counts the rules each backend shows.
pub fn resolve(mode: Mode) -> Result<Mode, Error> {
    if mode != Mode::Auto {
        return Ok(mode);
    }
    let rules = |mode: Mode| -> usize {
        ["-save"]
            .iter()
            .filter_map(|tool| run(&binary(mode, Family::V4, tool), &[], None).ok())
            .map(|s| s.lines().filter(|l| l.starts_with("-A ")).count())
            .sum()
    };
    let legacy = rules(Mode::Legacy);
    let nft = rules(Mode::Nft);
    // Neither answered: say what is missing rather than guess.
    if legacy == 0 && nft == 0 {
        save(Mode::Nft, Family::V4)?;
    }
    Ok(if legacy > nft {
        Mode::Legacy
    } else {
        Mode::Nft
    })
}
