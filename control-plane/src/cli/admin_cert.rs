//! `weft admin-cert NAME --out DIR`: an admin client certificate for the API.
//!
//! The key is made here and written only to `DIR/NAME.key` (mode 0600); the control plane
//! signs a CSR for `spiffe://TRUST_DOMAIN/ns/weft-system/sa/NAME`, and only for the holder of
//! its admin token (the CLI on its host, reading `DATA_DIR/admin-token`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::client::{self, ApiClient, ClientArgs};
use super::Error;

const SAID_BY: &str = "weft admin-cert";

#[derive(clap::Args)]
#[command(mut_arg("server", |a| a.help("The control plane's API, on loopback")))]
pub struct Args {
    /// The admin's name (a DNS label).
    name: String,
    /// Where to write NAME.crt, NAME.key and ca.crt.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// How long the certificate is valid (1m to 30d).
    #[arg(long, default_value = "24h")]
    ttl: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Args {
    pub async fn run(self, data_dir: Option<PathBuf>) -> Result<(), Error> {
        let api = self
            .client
            .connect(data_dir)
            .map_err(|e| Error::usage(SAID_BY, e))?;
        let out = admin_cert(&api, &self.name, &self.out, &self.ttl)
            .await
            .map_err(|e| Error::failed(SAID_BY, e))?;
        print!("{out}");
        Ok(())
    }
}

/// What the CLI needs of `GET /admin/config`: the identity to ask for is in this domain.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    trust_domain: String,
}

/// `POST /api/v1/ca/admin-certificates`'s answer (PEM).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Issued {
    certificate_chain: String,
    trust_anchors: String,
}

/// Makes the key, has the control plane sign it, writes the three files; returns what to print.
pub async fn admin_cert(
    api: &ApiClient,
    name: &str,
    out: &Path,
    ttl: &str,
) -> Result<String, String> {
    let (status, body) = api
        .request(http::Method::GET, "/admin/config", None)
        .await?;
    if status != 200 {
        return Err(format!(
            "the control plane answered {status}: {}",
            body.trim()
        ));
    }
    let config: Config = client::answer(&body)?;
    let identity = format!(
        "spiffe://{}/ns/{}/sa/{name}",
        config.trust_domain,
        crate::ca::SYSTEM_NAMESPACE
    );
    let (key, csr) = weft_runtime::tls::key_and_csr(&identity)?;
    let csr = csr.pem().map_err(|e| e.to_string())?;
    let (status, body) = api
        .request(
            http::Method::POST,
            "/api/v1/ca/admin-certificates",
            Some(serde_json::json!({ "name": name, "csr": csr, "ttl": ttl })),
        )
        .await?;
    if status != 200 {
        return Err(format!(
            "the control plane answered {status}: {}",
            body.trim()
        ));
    }
    let issued: Issued = client::answer(&body)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let (key_path, cert_path, ca_path) = (
        out.join(format!("{name}.key")),
        out.join(format!("{name}.crt")),
        out.join("ca.crt"),
    );
    write(&key_path, &key.serialize_pem(), 0o600)?;
    write(&cert_path, &issued.certificate_chain, 0o644)?;
    write(&ca_path, &issued.trust_anchors, 0o644)?;
    Ok(format!(
        "admin certificate for {identity} (valid {ttl})\n  certificate: {}\n  key:         {} (made here; never sent)\n  trust:       {}\nuse it with: weft --certificate-authority {} --client-certificate {} --client-key {} get services --server https://HOST:PORT\n",
        cert_path.display(),
        key_path.display(),
        ca_path.display(),
        ca_path.display(),
        cert_path.display(),
        key_path.display(),
    ))
}

/// Writes `text` to a fresh file with `mode` (a key is never readable by others, not even
/// for a moment).
fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
