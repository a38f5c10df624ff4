//! Join tokens: how a proxy outside Kubernetes proves which identity it may have.
//!
//! `weft token create NS/SA` mints a token `weft.<id>.<secret>`. Only the SHA-256 of the secret
//! is kept, in `DATA_DIR/tokens.json` (written atomically, mode 0600), with the identity, the
//! expiry and whether it was revoked. A token may be used until it expires or is revoked, so a
//! proxy that restarts can prove itself again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const PREFIX: &str = "weft";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a weft join token (expected weft.<id>.<secret>)")]
    Malformed,
    #[error("unknown join token {0}")]
    Unknown(String),
    #[error("join token {id} expired at {at} (Unix time); create a new one with `weft token create {identity}`")]
    Expired {
        id: String,
        at: u64,
        identity: String,
    },
    #[error("join token {0} was revoked")]
    Revoked(String),
    #[error("tokens file {0}")]
    Store(String),
}

/// `namespace/serviceaccount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ns, sa) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected NAMESPACE/SERVICEACCOUNT"))?;
        for (what, v) in [("namespace", ns), ("service account", sa)] {
            if !crate::resources::is_dns_label(v) {
                return Err(format!("{s:?}: {what} {v:?} is not a valid name"));
            }
        }
        Ok(Self {
            namespace: ns.into(),
            service_account: sa.into(),
        })
    }
}

/// The user a bearer token for the API belongs to, if `file` (the text of `--api-token-file`)
/// lists it. One token per line, `TOKEN[,USER]` (Kubernetes' static token file, user optional);
/// blank lines and `#` comments are skipped. Compared by SHA-256 digest, so the time a
/// comparison takes says nothing about the token.
pub fn check_api_token(file: &str, presented: &str) -> Option<String> {
    let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
    let want = digest(presented);
    file.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let (token, user) = line.split_once(',').unwrap_or((line, ""));
            let token = token.trim();
            (!token.is_empty() && same_digest(digest(token), want)).then(|| {
                let user = user.split(',').next().unwrap_or("").trim();
                if user.is_empty() { "api-token" } else { user }.to_string()
            })
        })
}

/// What is stored of a token: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub id: String,
    pub workload: Workload,
    pub secret_sha256: String,
    pub created_at: u64,
    pub expires_at: u64,
    pub revoked: bool,
}

pub struct Tokens {
    path: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two digests without an early exit. (They are hashes of secrets, so a timing leak
/// would say nothing useful anyway; this keeps it that way if that ever changes.)
pub(crate) fn same_digest(a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> bool {
    let (a, b) = (a.as_ref(), b.as_ref());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Tokens {
    /// Opens (or starts) the token store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, TokenError> {
        let path = data_dir.join("tokens.json");
        let records = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| TokenError::Store(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(TokenError::Store(format!("{}: {e}", path.display()))),
        };
        Ok(Self {
            path,
            records: Mutex::new(records),
        })
    }

    /// Mints a token for `workload`, valid for `ttl`. Returns the record and the token itself,
    /// which is shown once and never stored.
    pub fn create(
        &self,
        workload: Workload,
        ttl: Duration,
    ) -> Result<(Record, String), TokenError> {
        let (id, secret) = (random_hex(8), random_hex(24));
        let created_at = now();
        let record = Record {
            id: id.clone(),
            workload,
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_at,
            expires_at: created_at.saturating_add(ttl.as_secs().max(1)),
            revoked: false,
        };
        let mut records = self
            .records
            .lock()
            .map_err(|_| TokenError::Store("lock poisoned".into()))?;
        records.insert(id.clone(), record.clone());
        self.persist(&records)?;
        Ok((record, format!("{PREFIX}.{id}.{secret}")))
    }

    /// The workload a token proves, if it is known, unexpired and not revoked.
    pub fn verify(&self, token: &str) -> Result<Workload, TokenError> {
        let mut parts = token.trim().split('.');
        let (Some(PREFIX), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let records = self
            .records
            .lock()
            .map_err(|_| TokenError::Store("lock poisoned".into()))?;
        let r = records
            .get(id)
            .ok_or_else(|| TokenError::Unknown(id.to_string()))?;
        if !same_digest(sha256_hex(secret.as_bytes()), &r.secret_sha256) {
            return Err(TokenError::Unknown(id.to_string()));
        }
        if r.revoked {
            return Err(TokenError::Revoked(id.to_string()));
        }
        if now() >= r.expires_at {
            return Err(TokenError::Expired {
                id: id.to_string(),
                at: r.expires_at,
                identity: r.workload.to_string(),
            });
        }
        Ok(r.workload.clone())
    }

    /// Revokes a token by id (or by the whole token). Returns whether it existed.
    pub fn revoke(&self, id_or_token: &str) -> Result<bool, TokenError> {
        let id = id_or_token.split('.').nth(1).unwrap_or(id_or_token);
        let mut records = self
            .records
            .lock()
            .map_err(|_| TokenError::Store("lock poisoned".into()))?;
        let Some(r) = records.get_mut(id) else {
            return Ok(false);
        };
        r.revoked = true;
        self.persist(&records)?;
        Ok(true)
    }

    pub fn list(&self) -> Vec<Record> {
        self.records
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default()
    }

    fn persist(&self, records: &BTreeMap<String, Record>) -> Result<(), TokenError> {
        let fail = |e: std::io::Error| TokenError::Store(format!("{}: {e}", self.path.display()));
        let json =
            serde_json::to_vec_pretty(records).map_err(|e| TokenError::Store(e.to_string()))?;
        crate::atomic::write(&self.path, &json, 0o600).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Tokens, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "weft-tokens-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        (Tokens::open(&dir).unwrap(), dir)
    }

    #[test]
    fn a_token_proves_its_workload_until_revoked() {
        let (tokens, dir) = store();
        let w: Workload = "shop/orders".parse().unwrap();
        let (record, token) = tokens.create(w.clone(), Duration::from_secs(3600)).unwrap();
        assert_eq!(tokens.verify(&token).unwrap(), w);
        // Only the hash is stored, and the store survives a reopen.
        let on_disk = std::fs::read_to_string(dir.join("tokens.json")).unwrap();
        assert!(!on_disk.contains(token.rsplit('.').next().unwrap()));
        assert_eq!(Tokens::open(&dir).unwrap().verify(&token).unwrap(), w);
        assert!(tokens.revoke(&record.id).unwrap());
        assert_eq!(
            tokens.verify(&token),
            Err(TokenError::Revoked(record.id.clone()))
        );
        assert_eq!(
            Tokens::open(&dir).unwrap().verify(&token),
            Err(TokenError::Revoked(record.id))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_leftover_world_readable_temp_file_does_not_make_the_store_readable() {
        use std::os::unix::fs::PermissionsExt;
        let (tokens, dir) = store();
        let leftover = dir.join("tokens.json.tmp");
        std::fs::write(&leftover, "").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o666)).unwrap();
        tokens
            .create("shop/orders".parse().unwrap(), Duration::from_secs(3600))
            .unwrap();
        let mode = std::fs::metadata(dir.join("tokens.json"))
            .unwrap()
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrong_malformed_and_expired_tokens_are_refused() {
        let (tokens, dir) = store();
        let (record, token) = tokens
            .create("shop/orders".parse().unwrap(), Duration::from_secs(3600))
            .unwrap();
        let forged = format!("weft.{}.{}", record.id, "0".repeat(48));
        assert_eq!(
            tokens.verify(&forged),
            Err(TokenError::Unknown(record.id.clone()))
        );
        assert_eq!(
            tokens.verify("weft.nope.nope"),
            Err(TokenError::Unknown("nope".into()))
        );
        for bad in ["", "weft", "weft.a", "other.a.b", "weft.a.b.c", &token[5..]] {
            assert_eq!(tokens.verify(bad), Err(TokenError::Malformed), "{bad:?}");
        }
        if let Ok(mut r) = tokens.records.lock() {
            r.get_mut(&record.id).unwrap().expires_at = now() - 1;
        }
        assert!(matches!(
            tokens.verify(&token),
            Err(TokenError::Expired { .. })
        ));
        assert!("shop".parse::<Workload>().is_err());
        assert!("Shop/x".parse::<Workload>().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
