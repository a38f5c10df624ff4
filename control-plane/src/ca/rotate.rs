//! The trust-anchor rotation of a managed CA (`weft ca rotate`, docs/identity.md): where the
//! CA is in it ([`Phase`], read from which files exist) and its three steps ([`Step`]), each a
//! move of files followed by a reload. A CA from files is rotated by replacing its files.

use std::fs;

use serde::Serialize;

use super::files::{copy, rename};
use super::generate::create;
use super::{Ca, CaError, Source};

/// Where a managed CA is in a trust-anchor rotation.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// One root, one issuer.
    Steady,
    /// A new root is trusted beside the old one; the old issuer still signs.
    Prepared,
    /// The new issuer signs; the old root is still trusted while proxies renew.
    Activated,
}

/// A step of `weft ca rotate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Prepare,
    Activate,
    Retire,
}

impl Ca {
    /// Where a managed CA is in a rotation; `None` for a CA from files.
    pub fn phase(&self) -> Option<Phase> {
        let Source::Managed { dir } = &self.source else {
            return None;
        };
        Some(if dir.join("next/root.pem").exists() {
            Phase::Prepared
        } else if dir.join("previous-root.pem").exists() {
            Phase::Activated
        } else {
            Phase::Steady
        })
    }

    /// Runs one step of a trust-anchor rotation of the managed CA:
    /// - `prepare`: a new root and issuer are made; the new root is trusted beside the old one;
    /// - `activate`: the new issuer signs; the old root stays trusted;
    /// - `retire`: the old root is no longer trusted.
    pub fn rotate(&self, step: Step) -> Result<(), CaError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let Source::Managed { dir } = &self.source else {
            return Err(CaError::Rotation(
                "this CA comes from --ca-cert/--ca-key files: rotate it by replacing those files \
                 (roots first, then the issuer, then drop the old root); see docs/identity.md"
                    .into(),
            ));
        };
        let phase = self.phase().unwrap_or(Phase::Steady);
        let next = dir.join("next");
        let previous = dir.join("previous-root.pem");
        match (step, phase) {
            (Step::Prepare, Phase::Steady) => {
                let _ = fs::remove_dir_all(&next);
                create(&next, &self.trust_domain)?;
            }
            (Step::Activate, Phase::Prepared) => {
                copy(&dir.join("root.pem"), &previous)?;
                for f in ["issuer.key", "issuer.pem", "root.key", "root.pem"] {
                    rename(&next.join(f), &dir.join(f))?;
                }
                fs::remove_dir_all(&next).map_err(|source| CaError::Io {
                    path: next.clone(),
                    source,
                })?;
            }
            (Step::Retire, Phase::Activated) => {
                fs::remove_file(&previous).map_err(|source| CaError::Io {
                    path: previous.clone(),
                    source,
                })?;
            }
            (step, phase) => {
                let hint = match phase {
                    Phase::Steady => "start with `weft ca rotate prepare`",
                    Phase::Prepared => {
                        "a new root is prepared: `weft ca rotate activate` once every proxy trusts it"
                    }
                    Phase::Activated => {
                        "the new issuer is active: `weft ca rotate retire` once every proxy has renewed"
                    }
                };
                let step = match step {
                    Step::Prepare => "prepare",
                    Step::Activate => "activate",
                    Step::Retire => "retire",
                };
                return Err(CaError::Rotation(format!("cannot {step} now: {hint}")));
            }
        }
        tracing::info!(?step, "trust-anchor rotation step done");
        self.reload_locked().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::temp_dir;
    use super::*;

    #[test]
    fn rotation_steps_go_in_order_and_change_roots_then_issuer() {
        let dir = temp_dir();
        let ca = Ca::load_or_create(&dir, "weft.local").unwrap();
        let first = ca.signer();
        assert_eq!(ca.phase(), Some(Phase::Steady));
        for step in [Step::Activate, Step::Retire] {
            assert!(matches!(ca.rotate(step), Err(CaError::Rotation(_))));
        }
        ca.rotate(Step::Prepare).unwrap();
        assert_eq!(ca.phase(), Some(Phase::Prepared));
        assert_eq!(ca.signer().anchors.len(), 2);
        assert_eq!(
            ca.signer().issuer_id,
            first.issuer_id,
            "the old issuer still signs"
        );
        let err = ca.rotate(Step::Prepare).unwrap_err().to_string();
        assert!(err.contains("cannot prepare now"), "{err}");
        ca.rotate(Step::Activate).unwrap();
        assert_eq!(ca.phase(), Some(Phase::Activated));
        assert_ne!(ca.signer().issuer_id, first.issuer_id);
        assert_eq!(ca.signer().anchors.len(), 2);
        ca.rotate(Step::Retire).unwrap();
        assert_eq!(ca.phase(), Some(Phase::Steady));
        let anchors = &ca.signer().anchors;
        assert_eq!(anchors.len(), 1);
        assert_ne!(anchors[0], first.anchors[0]);
        assert_eq!(
            fs::read_to_string(dir.join("trust-anchors.pem")).unwrap(),
            ca.trust_anchors_pem()
        );
        // A new CA from the same files after a restart.
        let again = Ca::load_or_create(&dir, "weft.local").unwrap();
        assert_eq!(again.signer().issuer_id, ca.signer().issuer_id);
        fs::remove_dir_all(dir).unwrap();
    }
}
