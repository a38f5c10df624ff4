//! What the CLI authenticates to the API with, and the flags that say it ([`ClientArgs`]):
//! `--token-file`, an admin certificate, or, for a control plane on this host's loopback only,
//! the admin token in the data dir `weft serve` keeps. Sending a request is the parent's.

use clap::parser::ValueSource;
use clap::ArgMatches;
use std::path::{Path, PathBuf};

use super::{ApiClient, TlsFiles, DEFAULT_SERVER};

/// How a command reaches the API: declared once, flattened into every command that calls it.
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The control plane's API.
    #[arg(long, env = "WEFT_SERVER", default_value = DEFAULT_SERVER, global = true)]
    pub server: String,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// What the CLI may authenticate with. Accepted before a command's name (`weft --token-file
/// FILE get services`, the root's own flags) and after it (each API command's, global there so
/// that `weft token create --token-file FILE` works too).
#[derive(clap::Args, Clone, Debug)]
pub struct CredentialArgs {
    /// A file holding an API bearer token (`TOKEN[,USER]`, as in `weft serve
    /// --api-token-file`), sent instead of the admin token.
    #[arg(
        long,
        env = "WEFT_TOKEN_FILE",
        global = true,
        display_order = CREDENTIALS_ORDER
    )]
    pub token_file: Option<PathBuf>,
    /// For an https:// --server: the mesh's trust anchors, to verify the control plane.
    #[arg(
        long,
        env = "WEFT_CERTIFICATE_AUTHORITY",
        global = true,
        display_order = CREDENTIALS_ORDER + 1
    )]
    pub certificate_authority: Option<PathBuf>,
    /// For an https:// --server: the mesh's trust domain; the server must present
    /// spiffe://THIS/ns/weft-system/sa/weft-control-plane.
    #[arg(
        long,
        env = "WEFT_SERVER_TRUST_DOMAIN",
        global = true,
        default_value = "weft.local",
        display_order = CREDENTIALS_ORDER + 2
    )]
    pub server_trust_domain: String,
    /// An admin client certificate (from `weft admin-cert`) for an https:// --server.
    #[arg(
        long,
        env = "WEFT_CLIENT_CERTIFICATE",
        global = true,
        requires = "client_key",
        display_order = CREDENTIALS_ORDER + 3
    )]
    pub client_certificate: Option<PathBuf>,
    /// The key of --client-certificate.
    #[arg(
        long,
        env = "WEFT_CLIENT_KEY",
        global = true,
        requires = "client_certificate",
        display_order = CREDENTIALS_ORDER + 4
    )]
    pub client_key: Option<PathBuf>,
}

/// Where help lists the credentials: after `--data-dir`, as when they were the root's global
/// flags (a command's own flags come first, then the root's).
const CREDENTIALS_ORDER: usize = 100;

impl CredentialArgs {
    /// The clap ids of these flags.
    pub const IDS: [&'static str; 5] = [
        "token_file",
        "certificate_authority",
        "server_trust_domain",
        "client_certificate",
        "client_key",
    ];

    /// Takes each flag given on the command line before the command's name (in `top`) unless it
    /// was given after it too (in `command`): the nearer wins, and either over the environment
    /// and the defaults, which both copies read alike.
    pub fn prefer_given(&mut self, before: &Self, top: &ArgMatches, command: &ArgMatches) {
        let given = |m: &ArgMatches, id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
        let take = |id: &str| given(top, id) && !given(command, id);
        if take("token_file") {
            self.token_file.clone_from(&before.token_file);
        }
        if take("certificate_authority") {
            self.certificate_authority
                .clone_from(&before.certificate_authority);
        }
        if take("server_trust_domain") {
            self.server_trust_domain
                .clone_from(&before.server_trust_domain);
        }
        if take("client_certificate") {
            self.client_certificate
                .clone_from(&before.client_certificate);
        }
        if take("client_key") {
            self.client_key.clone_from(&before.client_key);
        }
    }
}

impl ClientArgs {
    /// The API client for `--server` with these credentials (`data_dir`: where to look for
    /// the admin token); an error names the flag that is wrong.
    pub fn connect(&self, data_dir: Option<PathBuf>) -> Result<ApiClient, String> {
        let c = &self.credentials;
        let creds = Credentials {
            token_file: c.token_file.clone(),
            tls: TlsFiles {
                certificate_authority: c.certificate_authority.clone(),
                trust_domain: c.server_trust_domain.clone(),
                client_certificate: c.client_certificate.clone(),
                client_key: c.client_key.clone(),
            },
            data_dir,
        };
        connect(&self.server, &creds)
    }
}

/// What the CLI may authenticate with: `--token-file`, `--certificate-authority` and the client
/// certificate, `--data-dir` (where `weft serve` keeps the admin token).
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub token_file: Option<PathBuf>,
    pub tls: TlsFiles,
    /// `--data-dir` / `WEFT_DATA_DIR`; `./weft-data` (`weft serve`'s default) when not given.
    pub data_dir: Option<PathBuf>,
}

/// `weft serve`'s default `--data-dir`.
pub const DEFAULT_DATA_DIR: &str = "./weft-data";

/// The client for `server` with the credential the user gave, else, for a control plane on
/// this host's loopback, the admin token from the data dir. The admin token is never sent to
/// any other server.
pub fn connect(server: &str, creds: &Credentials) -> Result<ApiClient, String> {
    let api = ApiClient::new(server)
        .with_token_file(creds.token_file.as_deref())?
        .with_tls(&creds.tls)?;
    if creds.token_file.is_some() || creds.tls.client_certificate.is_some() {
        return Ok(api);
    }
    if !is_loopback(server) {
        return Ok(ApiClient {
            no_credential: Some("a control plane off this host takes --token-file FILE (a token of its --api-token-file) or an admin certificate (--certificate-authority, --client-certificate, --client-key; made with `weft admin-cert` on its host)".into()),
            ..api
        });
    }
    let dir = creds
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    match read_admin_token(&dir) {
        Ok(token) => Ok(api.with_token(token)),
        Err(why) => Ok(ApiClient {
            no_credential: Some(format!("{why}; run weft where `weft serve` keeps its data dir (as the user that runs it), or pass --data-dir DIR or WEFT_DATA_DIR, or --token-file FILE")),
            ..api
        }),
    }
}

/// The admin token in `data_dir`, or why it cannot be read.
pub fn read_admin_token(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join(crate::api::ADMIN_TOKEN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("no admin token at {}", path.display()),
        _ => format!("cannot read the admin token {}: {e}", path.display()),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token.to_string())
}

/// Whether `url`'s host is this host's loopback: `localhost`, `127.0.0.0/8`, `[::1]`.
pub fn is_loopback(url: &str) -> bool {
    let Some(host) = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_servers() {
        for url in [
            "http://127.0.0.1:15080",
            "http://127.1.2.3:1",
            "http://localhost:15080",
            "https://[::1]:15080",
            "http://LOCALHOST",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:15080",
            "http://cp.example:15080",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }

    #[test]
    fn the_admin_token_goes_to_a_loopback_server_only() {
        let dir = std::env::temp_dir().join(format!("weft-client-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::api::ADMIN_TOKEN_FILE), "weft-admin.x\n").unwrap();
        let creds = Credentials {
            data_dir: Some(dir.clone()),
            ..Credentials::default()
        };
        let local = connect("http://127.0.0.1:15080", &creds).unwrap();
        assert_eq!(local.token.as_deref(), Some("weft-admin.x"));
        for remote in ["http://10.0.0.1:15080", "http://cp.example:15080"] {
            let api = connect(remote, &creds).unwrap();
            assert!(api.token.is_none(), "{remote}");
            assert!(api.no_credential.unwrap().contains("--token-file"));
        }
        // A credential given is sent instead.
        std::fs::write(dir.join("t"), "user-token\n").unwrap();
        let given = Credentials {
            token_file: Some(dir.join("t")),
            ..creds
        };
        let api = connect("http://127.0.0.1:15080", &given).unwrap();
        assert_eq!(api.token.as_deref(), Some("user-token"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
