//! `weft token create|revoke|list`: join tokens, through the API (`/api/v1/tokens`), which
//! takes the admin's credential for them. The tokens themselves are `crate::tokens`.

use std::path::PathBuf;

use http::Method;
use serde::Deserialize;

use super::client::{self, ClientArgs};
use super::table::remaining;
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
    /// Print a new join token for NAMESPACE/SERVICEACCOUNT.
    Create {
        /// The workload the token proves, NAMESPACE/SERVICEACCOUNT (e.g. shop/orders): a proxy
        /// that presents it gets the certificate spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICEACCOUNT.
        #[arg(value_name = "NAMESPACE/SERVICEACCOUNT")]
        workload: String,
        /// How long the token may be used.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
    /// Revoke a token (by id, or the whole token).
    Revoke {
        /// The token's id (as `weft token list` shows it), or the whole token.
        #[arg(value_name = "ID|TOKEN")]
        id: String,
    },
    /// List tokens (never their secrets).
    List,
}

/// `POST /api/v1/tokens`'s answer.
#[derive(Deserialize)]
struct Created {
    token: String,
}

/// `GET /api/v1/tokens`'s answer.
#[derive(Deserialize)]
struct List {
    items: Vec<Token>,
}

/// A token as the API lists it (never its secret).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Token {
    id: String,
    workload: String,
    /// RFC 3339 in the API, read as Unix seconds.
    #[serde(deserialize_with = "weft_runtime::timestamp::de_unix")]
    expires_at: i64,
    revoked: bool,
}

impl Args {
    pub async fn run(self, data_dir: Option<PathBuf>) -> Result<(), Error> {
        let api = self
            .client
            .connect(data_dir)
            .map_err(|e| Error::usage("weft token", e))?;
        let failed = |e: String| Error::failed("weft", e);
        let (method, path, body) = match &self.command {
            Command::Create { workload, ttl } => (
                Method::POST,
                "/api/v1/tokens".to_string(),
                Some(serde_json::json!({ "workload": workload, "ttl": ttl })),
            ),
            Command::Revoke { id } => (Method::DELETE, format!("/api/v1/tokens/{id}"), None),
            Command::List => (Method::GET, "/api/v1/tokens".to_string(), None),
        };
        let (status, body) = api.request(method, &path, body).await.map_err(failed)?;
        if !(200..300).contains(&status) {
            return Err(failed(format!(
                "the control plane answered {status}: {}",
                body.trim()
            )));
        }
        match self.command {
            Command::Create { .. } => {
                // The token alone on stdout, so that `$(weft token create ns/sa)` works.
                let created: Created = client::answer(&body).map_err(failed)?;
                println!("{}", created.token);
            }
            Command::Revoke { id } => println!("token {id} revoked"),
            Command::List => {
                let list: List = client::answer(&body).map_err(failed)?;
                print!("{}", list_table(&list.items, now()));
            }
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
fn now() -> i64 {
    weft_runtime::timestamp::unix_seconds(std::time::SystemTime::now())
}

/// `weft token list`'s table: time left, as `weft get proxies` shows a certificate's, not epoch
/// seconds.
fn list_table(tokens: &[Token], now: i64) -> String {
    let mut out = format!(
        "{:<18} {:<32} {:<12} REVOKED\n",
        "ID", "WORKLOAD", "EXPIRES IN"
    );
    for t in tokens {
        out.push_str(&format!(
            "{:<18} {:<32} {:<12} {}\n",
            t.id,
            t.workload,
            remaining(t.expires_at - now),
            t.revoked
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_answer_reads_into_rows_and_a_missing_field_is_an_error() {
        let body = r#"{"items":[{"id":"a1b2","workload":"shop/orders","createdAt":"1970-01-01T00:00:01Z","expiresAt":"1970-01-01T00:11:40Z","revoked":false}]}"#;
        let list: List = client::answer(body).unwrap();
        let table = list_table(&list.items, 100);
        assert!(table.starts_with("ID "), "{table}");
        assert!(
            table.contains("a1b2") && table.contains("shop/orders") && table.contains("10m0s"),
            "{table}"
        );
        assert!(table.trim_end().ends_with("false"), "{table}");
        let e = client::answer::<List>(r#"{"items":[{"id":"a1b2"}]}"#)
            .err()
            .unwrap_or_default();
        assert!(e.contains("missing field `workload`"), "{e}");
    }
}
