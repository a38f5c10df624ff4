//! `weft delete KIND NAME [-n NAMESPACE]`: one resource applied through the API, removed.

use super::client::{self, ApiClient, ClientArgs};
use super::Error;
use crate::resources;

const SAID_BY: &str = "weft delete";

#[derive(clap::Args)]
pub struct Args {
    /// The kind (singular or plural, any case).
    kind: String,
    name: String,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

impl Args {
    pub async fn run(self, data_dir: Option<std::path::PathBuf>) -> Result<(), Error> {
        let api = self
            .client
            .connect(data_dir)
            .map_err(|e| Error::usage(SAID_BY, e))?;
        let out = delete(&api, &self.kind, &self.name, &self.namespace)
            .await
            .map_err(|e| Error::failed(SAID_BY, e))?;
        print!("{out}");
        Ok(())
    }
}

/// Deletes one resource; returns the line to print.
pub async fn delete(
    api: &ApiClient,
    kind: &str,
    name: &str,
    namespace: &str,
) -> Result<String, String> {
    let Some(kind) = resources::kind_named(kind) else {
        return Err(format!(
            "unknown kind {kind:?}; known kinds: {} (singular or plural, any case)",
            resources::known_kinds()
        ));
    };
    let (status, body) = api
        .request(
            http::Method::DELETE,
            &format!("/api/v1/{kind}/{namespace}/{name}"),
            None,
        )
        .await?;
    if status != 200 {
        return Err(client::explain(status, &body));
    }
    Ok(format!(
        "{}/{namespace}/{name} deleted\n",
        kind.to_ascii_lowercase()
    ))
}
