//! `weft apply -f FILE`: every resource of a file (or stdin) written through the API, all or
//! nothing, with answers a person can act on.

use std::path::PathBuf;

use bytes::Bytes;
use serde::Deserialize;

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

/// `POST /api/v1/apply`'s answer: what happened (or would) to each resource, in order.
#[derive(Deserialize)]
struct Applied {
    results: Vec<Outcome>,
}

/// One resource's outcome (`state::WriteOutcome`).
#[derive(Deserialize)]
struct Outcome {
    kind: String,
    namespace: String,
    name: String,
    /// `created`, `configured` or `unchanged`.
    action: String,
}

impl Applied {
    /// `httproute/shop/orders configured`, one line each.
    fn lines(&self, dry_run: bool) -> String {
        self.results
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{} {}{}\n",
                    r.kind.to_ascii_lowercase(),
                    r.namespace,
                    r.name,
                    r.action,
                    if dry_run { " (dry run)" } else { "" }
                )
            })
            .collect()
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
    let applied: Applied = client::answer(&body)?;
    Ok(applied.lines(dry_run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_apply_answer_reads_into_one_line_per_resource() {
        let body = r#"{"dryRun":true,"results":[{"kind":"HTTPRoute","namespace":"shop","name":"orders","action":"configured","resourceVersion":"4"}]}"#;
        let applied: Applied = client::answer(body).unwrap();
        assert_eq!(
            applied.lines(true),
            "httproute/shop/orders configured (dry run)\n"
        );
        assert!(client::answer::<Applied>(r#"{"results":[{"kind":"Service"}]}"#).is_err());
    }
}
