//! `weft apply -f FILE`: every resource of a file (or stdin) written through the API, all or
//! nothing, with answers a person can act on.

use std::path::PathBuf;

use bytes::Bytes;
use serde_json::Value;

use super::client::{self, ApiClient, ClientArgs};
use super::Error;

const SAID_BY: &str = "weft apply";

#[derive(clap::Args)]
pub struct Args {
    /// A file of YAML or JSON resources (multi-document), or `-`.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Check everything on the server and print what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Args {
    pub async fn run(self, data_dir: Option<PathBuf>) -> Result<(), Error> {
        let text = if self.file.as_os_str() == "-" {
            let mut t = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map(|_| t)
        } else {
            std::fs::read_to_string(&self.file)
        }
        .map_err(|e| Error::usage(SAID_BY, format!("{}: {e}", self.file.display())))?;
        let api = self
            .client
            .connect(data_dir)
            .map_err(|e| Error::usage(SAID_BY, e))?;
        let out = apply(&api, text, self.dry_run)
            .await
            .map_err(|e| Error::failed(SAID_BY, e))?;
        print!("{out}");
        Ok(())
    }
}

/// Applies every document of `text` (YAML or JSON), all or nothing. Returns the lines to print
/// (`httproute/shop/orders configured`), or every problem. A dry run checks everything and
/// says what would happen, storing nothing.
pub async fn apply(api: &ApiClient, text: String, dry_run: bool) -> Result<String, String> {
    let path = if dry_run {
        "/api/v1/apply?dryRun=true"
    } else {
        "/api/v1/apply"
    };
    let (status, body) = api
        .send(
            http::Method::POST,
            path,
            Bytes::from(text),
            "application/yaml",
        )
        .await?;
    if status != 200 {
        return Err(client::explain(status, &body));
    }
    let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut out = String::new();
    for r in doc["results"].as_array().into_iter().flatten() {
        let s = |f: &str| r[f].as_str().unwrap_or("?").to_string();
        out.push_str(&format!(
            "{}/{}/{} {}{}\n",
            s("kind").to_ascii_lowercase(),
            s("namespace"),
            s("name"),
            s("action"),
            if dry_run { " (dry run)" } else { "" }
        ));
    }
    Ok(out)
}
