//! `weft ca status|rotate`: the mesh CA's state and trust-anchor rotation, through the API
//! (`/api/v1/ca`). The CA itself is `crate::ca`; the API's side, `crate::api::ca`.

use std::fmt::Write as _;
use std::path::PathBuf;

use http::Method;
use serde::Deserialize;

use super::client::{self, ClientArgs};
use super::Error;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Show the trust anchors, the issuer, the rotation phase and which proxies hold
    /// certificates from which issuer.
    Status,
    /// One step of a trust-anchor rotation: prepare (trust a new root beside the old), activate
    /// (sign with the new issuer; proxies renew), retire (stop trusting the old root).
    Rotate {
        #[arg(value_enum)]
        step: RotateStep,
        /// Retire even though some connected proxies still hold certificates from the old
        /// issuer (they will fail to talk to the others until they renew).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RotateStep {
    Prepare,
    Activate,
    Retire,
}

/// The API's answer to both commands: the CA's state (after the step, for `rotate`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    source: String,
    /// `None` for a CA from `--ca-cert` files, which rotate by replacing them.
    phase: Option<String>,
    issuer: Certificate,
    trust_anchors: Vec<Certificate>,
    proxies: Proxies,
    next: Option<String>,
}

#[derive(Deserialize)]
struct Certificate {
    subject: String,
    fingerprint: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Proxies {
    current_issuer: u64,
    other_issuer: u64,
}

impl Args {
    pub async fn run(self, data_dir: Option<PathBuf>) -> Result<(), Error> {
        let api = self
            .client
            .connect(data_dir)
            .map_err(|e| Error::usage("weft ca", e))?;
        let failed = |e: String| Error::failed("weft", e);
        let (method, path, body) = match &self.command {
            Command::Status => (Method::GET, "/api/v1/ca", None),
            Command::Rotate { step, force } => (
                Method::POST,
                "/api/v1/ca/rotate",
                Some(serde_json::json!({
                    "step": match step {
                        RotateStep::Prepare => "prepare",
                        RotateStep::Activate => "activate",
                        RotateStep::Retire => "retire",
                    },
                    "force": force,
                })),
            ),
        };
        let (status, body) = api.request(method, path, body).await.map_err(failed)?;
        if !(200..300).contains(&status) {
            return Err(failed(body.trim().to_string()));
        }
        let status: Status = client::answer(&body).map_err(failed)?;
        print!("{}", status.show());
        Ok(())
    }
}

impl Status {
    /// What `weft ca status` prints: a certificate by the first 16 digits of its fingerprint.
    fn show(&self) -> String {
        let short = |c: &Certificate| {
            format!(
                "{}  {}",
                c.fingerprint.get(..16).unwrap_or_default(),
                c.subject
            )
        };
        let mut out = String::new();
        let _ = writeln!(out, "source:  {}", self.source);
        let _ = writeln!(
            out,
            "phase:   {}",
            self.phase.as_deref().unwrap_or_default()
        );
        let _ = writeln!(out, "issuer:  {}", short(&self.issuer));
        for a in &self.trust_anchors {
            let _ = writeln!(out, "anchor:  {}", short(a));
        }
        let _ = writeln!(
            out,
            "proxies: {} on the current issuer, {} on another",
            self.proxies.current_issuer, self.proxies.other_issuer
        );
        if let Some(next) = &self.next {
            let _ = writeln!(out, "next:    {next}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_answer_reads_into_lines() {
        let body = r#"{"source":"managed","phase":"prepared",
            "issuer":{"subject":"CN=issuer","fingerprint":"0123456789abcdef0123","notAfter":"1970-01-01T00:00:01Z"},
            "trustAnchors":[{"subject":"CN=root","fingerprint":"fedcba9876543210fe","notAfter":"1970-01-01T00:00:01Z"}],
            "proxies":{"currentIssuer":2,"otherIssuer":1,"withoutCertificate":0,"onOtherIssuer":[]},
            "next":"weft ca rotate activate"}"#;
        let status: Status = client::answer(body).unwrap();
        assert_eq!(
            status.show(),
            "source:  managed\nphase:   prepared\nissuer:  0123456789abcdef  CN=issuer\n\
             anchor:  fedcba9876543210  CN=root\nproxies: 2 on the current issuer, 1 on another\n\
             next:    weft ca rotate activate\n"
        );
        assert!(client::answer::<Status>(r#"{"source":"managed"}"#).is_err());
    }
}
