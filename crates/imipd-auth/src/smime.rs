//! S/MIME signatures (RFC 8551) through OpenSSL: chain to the configured trust anchors,
//! validity period and extendedKeyUsage (OpenSSL's `smime_sign` purpose), and a signer
//! certificate naming the From address.

use std::path::Path;

use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{X509Ref, X509};

use super::mime::SmimeSigned;
use super::results::signature_resinfo;
use super::AuthError;

/// The CA certificates S/MIME signers must chain to.
pub(crate) struct TrustAnchors {
    store: X509Store,
}

impl TrustAnchors {
    /// Loads a PEM bundle of CA certificates.
    pub(crate) fn load(path: &Path) -> Result<Self, AuthError> {
        let pem = std::fs::read(path).map_err(|error| AuthError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let invalid = |reason: String| AuthError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let certs = X509::stack_from_pem(&pem).map_err(|e| {
            invalid(format!(
                "not a PEM bundle of certificates: {}",
                describe(&e)
            ))
        })?;
        if certs.is_empty() {
            return Err(invalid(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_string(),
            ));
        }
        let mut builder = X509StoreBuilder::new().map_err(|e| {
            invalid(format!(
                "cannot create a certificate store: {}",
                describe(&e)
            ))
        })?;
        for cert in certs {
            builder
                .add_cert(cert)
                .map_err(|e| invalid(format!("cannot add a certificate: {}", describe(&e))))?;
        }
        Ok(TrustAnchors {
            store: builder.build(),
        })
    }
}

/// The result of checking one S/MIME signature.
pub(crate) struct SmimeOutcome {
    result: &'static str,
    reason: Option<String>,
    signer: Option<String>,
    /// The signature verified and its certificate names the From address.
    pub(crate) proven: bool,
    /// The signed entity (whether or not it verified): proof comes only from `proven`.
    pub(crate) inner: Option<Vec<u8>>,
}

impl SmimeOutcome {
    pub(crate) fn resinfo(&self) -> String {
        signature_resinfo(
            "smime",
            self.result,
            self.reason.as_deref(),
            self.signer.as_deref(),
        )
    }

    fn fail(reason: impl Into<String>, inner: Option<Vec<u8>>) -> Self {
        SmimeOutcome {
            result: "fail",
            reason: Some(reason.into()),
            signer: None,
            proven: false,
            inner,
        }
    }
}

/// Verifies a top-level S/MIME signature against `anchors`, for the From address `from`.
pub(crate) fn verify(
    anchors: Option<&TrustAnchors>,
    signed: &SmimeSigned,
    from: Option<&str>,
) -> SmimeOutcome {
    let (der, detached) = match signed {
        SmimeSigned::Detached {
            content, signature, ..
        } => (signature, Some(content.as_slice())),
        SmimeSigned::Opaque { der } => (der, None),
    };
    let pkcs7 = match Pkcs7::from_der(der) {
        Ok(p) => p,
        Err(_) => {
            return SmimeOutcome::fail("malformed PKCS #7 signature", detached.map(<[u8]>::to_vec))
        }
    };
    if pkcs7.type_().map(|t| t.nid()) != Some(Nid::PKCS7_SIGNED) {
        // An encrypted (enveloped-data) message carries no signature to check here.
        return SmimeOutcome {
            result: "none",
            reason: Some("not signed-data".to_string()),
            signer: None,
            proven: false,
            inner: None,
        };
    }
    let no_certs = match Stack::<X509>::new() {
        Ok(s) => s,
        Err(e) => return SmimeOutcome::fail(describe(&e), None),
    };
    let inner = detached
        .map(<[u8]>::to_vec)
        .or_else(|| unverified_content(&pkcs7, &no_certs));
    let Some(anchors) = anchors else {
        return SmimeOutcome {
            result: "neutral",
            reason: Some("no S/MIME trust anchors configured".to_string()),
            signer: None,
            proven: false,
            inner,
        };
    };

    let mut content = Vec::new();
    let flags = Pkcs7Flags::BINARY;
    if let Err(e) = pkcs7.verify(
        &no_certs,
        &anchors.store,
        detached,
        Some(&mut content),
        flags,
    ) {
        return SmimeOutcome::fail(describe(&e), inner);
    }
    let inner = match detached {
        Some(d) => Some(d.to_vec()),
        None => Some(content),
    };

    let signers = match pkcs7.signers(&no_certs, flags) {
        Ok(s) => s,
        Err(e) => return SmimeOutcome::fail(describe(&e), inner),
    };
    let Some(from) = from else {
        return SmimeOutcome::fail("no single From address to compare with", inner);
    };
    let named = signers.iter().find(|cert| {
        cert_emails(cert)
            .iter()
            .any(|e| e.eq_ignore_ascii_case(from))
    });
    match named {
        Some(_) => SmimeOutcome {
            result: "pass",
            reason: None,
            signer: Some(from.to_string()),
            proven: true,
            inner,
        },
        None => {
            let names: Vec<String> = signers.iter().flat_map(cert_emails).collect();
            let mut outcome =
                SmimeOutcome::fail("signer certificate does not name the From address", inner);
            outcome.signer = names.into_iter().next();
            outcome
        }
    }
}

/// The signed content without any check, so the caller can still read an opaque message.
fn unverified_content(pkcs7: &Pkcs7, no_certs: &Stack<X509>) -> Option<Vec<u8>> {
    let store = X509StoreBuilder::new().ok()?.build();
    let mut content = Vec::new();
    let flags = Pkcs7Flags::BINARY | Pkcs7Flags::NOVERIFY | Pkcs7Flags::NOSIGS;
    pkcs7
        .verify(no_certs, &store, None, Some(&mut content), flags)
        .ok()?;
    Some(content)
}

/// The addresses a certificate names: its subjectAltName rfc822Names, or, without any, the
/// emailAddress attributes of its subject (RFC 8550 §3).
fn cert_emails(cert: &X509Ref) -> Vec<String> {
    let from_san: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.email().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if !from_san.is_empty() {
        return from_san;
    }
    cert.subject_name()
        .entries_by_nid(Nid::PKCS9_EMAILADDRESS)
        .filter_map(|e| e.data().to_string().ok().map(|s| s.to_lowercase()))
        .collect()
}

/// OpenSSL's error stack as one line a human can act on.
fn describe(errors: &ErrorStack) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in errors.errors() {
        let text = match (e.reason(), e.data()) {
            (Some(r), Some(d)) => format!("{r} ({d})"),
            (Some(r), None) => r.to_string(),
            (None, Some(d)) => d.to_string(),
            (None, None) => continue,
        };
        if !parts.contains(&text) {
            parts.push(text);
        }
    }
    if parts.is_empty() {
        "signature verification failed".to_string()
    } else {
        parts.join("; ")
    }
}
