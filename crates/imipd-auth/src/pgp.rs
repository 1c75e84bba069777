//! PGP/MIME signatures (RFC 3156) through Sequoia: a detached signature over the first part,
//! by a valid, unexpired, unrevoked certificate of the keyring with a user ID naming From.

use std::path::Path;

use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::parse::stream::{
    DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::types::RevocationStatus;
use openpgp::{Fingerprint, KeyHandle};

use super::mime::PgpSigned;
use super::results::signature_resinfo;
use super::AuthError;

/// The OpenPGP certificates whose signatures imipd accepts.
pub(crate) struct Keyring {
    certs: Vec<Cert>,
}

impl Keyring {
    /// Loads a file of certificates, binary or armored, several concatenated.
    pub(crate) fn load(path: &Path) -> Result<Self, AuthError> {
        let bytes = std::fs::read(path).map_err(|error| AuthError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let invalid = |reason: String| AuthError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let parser = CertParser::from_bytes(&bytes)
            .map_err(|e| invalid(format!("not an OpenPGP keyring: {e}")))?;
        let mut certs = Vec::new();
        for (index, cert) in parser.enumerate() {
            let cert = cert.map_err(|e| invalid(format!("certificate #{}: {e}", index + 1)))?;
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(invalid("no OpenPGP certificate found".to_string()));
        }
        Ok(Keyring { certs })
    }
}

/// The result of checking one PGP/MIME signature.
pub(crate) struct PgpOutcome {
    result: &'static str,
    reason: Option<String>,
    signer: Option<String>,
    /// A good signature by a certificate bound to the From address.
    pub(crate) proven: bool,
}

impl PgpOutcome {
    pub(crate) fn resinfo(&self) -> String {
        signature_resinfo(
            "pgp",
            self.result,
            self.reason.as_deref(),
            self.signer.as_deref(),
        )
    }

    fn fail(reason: impl Into<String>) -> Self {
        PgpOutcome {
            result: "fail",
            reason: Some(reason.into()),
            signer: None,
            proven: false,
        }
    }
}

/// Verifies a PGP/MIME signature against `keyring`, for the From address `from`.
pub(crate) fn verify(
    keyring: Option<&Keyring>,
    signed: &PgpSigned,
    from: Option<&str>,
) -> PgpOutcome {
    let Some(keyring) = keyring else {
        return PgpOutcome {
            result: "neutral",
            reason: Some("no OpenPGP keyring configured".to_string()),
            signer: None,
            proven: false,
        };
    };
    let policy = StandardPolicy::new();
    let helper = Helper {
        certs: &keyring.certs,
        good: Vec::new(),
        errors: Vec::new(),
    };
    let verified = DetachedVerifierBuilder::from_bytes(&signed.signature)
        .and_then(|builder| builder.with_policy(&policy, None, helper))
        .and_then(|mut verifier| {
            verifier.verify_bytes(&signed.content)?;
            Ok(verifier.into_helper())
        });
    let helper = match verified {
        Ok(helper) => helper,
        Err(e) => return PgpOutcome::fail(format!("malformed signature: {e}")),
    };
    if helper.good.is_empty() {
        let reason = helper
            .errors
            .first()
            .cloned()
            .unwrap_or_else(|| "no signature".to_string());
        return PgpOutcome::fail(reason);
    }
    let Some(from) = from else {
        return PgpOutcome::fail("no single From address to compare with");
    };

    let mut last_reason = String::new();
    for fingerprint in &helper.good {
        let Some(cert) = keyring
            .certs
            .iter()
            .find(|c| &c.fingerprint() == fingerprint)
        else {
            continue;
        };
        match cert_names(cert, &policy, from) {
            Ok(()) => {
                return PgpOutcome {
                    result: "pass",
                    reason: None,
                    signer: Some(from.to_string()),
                    proven: true,
                }
            }
            Err(reason) => last_reason = reason,
        }
    }
    let mut outcome = PgpOutcome::fail(last_reason);
    outcome.signer = helper.good.first().map(|f| f.to_hex());
    outcome
}

/// Checks that `cert` is valid now (alive, not revoked) and has a valid user ID naming `from`.
fn cert_names(cert: &Cert, policy: &StandardPolicy, from: &str) -> Result<(), String> {
    let valid = cert
        .with_policy(policy, None)
        .map_err(|e| format!("certificate not valid: {e}"))?;
    valid
        .alive()
        .map_err(|e| format!("certificate expired: {e}"))?;
    if let RevocationStatus::Revoked(_) = valid.revocation_status() {
        return Err("certificate revoked".to_string());
    }
    let named = valid.userids().any(|uid| {
        matches!(uid.revocation_status(), RevocationStatus::NotAsFarAsWeKnow)
            && uid
                .userid()
                .email_normalized()
                .ok()
                .flatten()
                .is_some_and(|email| email.eq_ignore_ascii_case(from))
    });
    if named {
        Ok(())
    } else {
        Err("no user ID of the signing certificate names the From address".to_string())
    }
}

struct Helper<'k> {
    certs: &'k [Cert],
    good: Vec<Fingerprint>,
    errors: Vec<String>,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self
            .certs
            .iter()
            .filter(|cert| {
                cert.keys()
                    .any(|key| ids.iter().any(|id| id.aliases(key.key().key_handle())))
            })
            .cloned()
            .collect())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.iter() {
            if let MessageLayer::SignatureGroup { results } = layer {
                for result in results {
                    match result {
                        Ok(good) => self.good.push(good.ka.cert().fingerprint()),
                        Err(e) => self.errors.push(e.to_string()),
                    }
                }
            }
        }
        // The decision is taken after verification, from what was collected here.
        Ok(())
    }
}
