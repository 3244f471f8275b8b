//! `[server.tls]`: TLS for clients. Reads the PEM certificate chain and private key the
//! section names (relative to the config file) and builds the rustls server configuration
//! from them, so every problem — a missing file, no certificate, no or an unusable key, a key
//! that does not belong to the certificate — is a load error naming file, line and key.
//!
//! Must not: do IO beyond reading the two files; print any part of the key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::spans::Section;
use super::ConfigError;

/// `[server.tls]`, loaded: the paths as resolved, and the server configuration built from the
/// files' contents when the config was read (a reload reads them again).
#[derive(Clone)]
pub struct ClientTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificates in the chain (leaf first).
    pub chain_len: usize,
    pub server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ClientTls {
    /// Paths only: the server configuration holds the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("chain_len", &self.chain_len)
            .finish()
    }
}

const TLS_KEYS: &[&str] = &["cert", "key"];

pub(super) fn read_tls(sec: &Section, base_dir: &Path) -> Result<ClientTls, ConfigError> {
    sec.check_known(TLS_KEYS)?;
    let cert_field = sec.required("cert")?;
    let key_field = sec.required("key")?;
    let cert = base_dir.join(cert_field.nonempty_str()?);
    let key = base_dir.join(key_field.nonempty_str()?);

    let shown = cert.display();
    let pem =
        std::fs::read(&cert).map_err(|e| cert_field.err(&format!("cannot read {shown}: {e}")))?;
    let mut chain = Vec::new();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| cert_field.err(&format!("{shown}: invalid PEM: {e}")))?;
        chain.push(c);
    }
    if chain.is_empty() {
        return Err(cert_field.err(&format!(
            "{shown} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        )));
    }

    let shown_key = key.display();
    let pem =
        std::fs::read(&key).map_err(|e| key_field.err(&format!("cannot read {shown_key}: {e}")))?;
    // The error names the file and what is wrong, never the key's bytes.
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        key_field.err(&format!(
            "{shown_key} holds no usable PEM private key (expected -----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY): {}",
            pem_error(&e)
        ))
    })?;

    let chain_len = chain.len();
    let server = crate::tls_server::server_config(chain, private).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => key_field.err(&format!(
            "{shown_key} is not the private key of the first certificate in {shown}"
        )),
        e => key_field.err(&format!(
            "{shown_key} cannot serve the certificate in {shown}: {e}"
        )),
    })?;
    Ok(ClientTls {
        cert,
        key,
        chain_len,
        server,
    })
}

/// A PEM error in words, without any of the file's content.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::NoItemsFound => "no key found".into(),
        Error::MissingSectionEnd { .. } => "a section has no END line".into(),
        Error::IllegalSectionStart { .. } => "a malformed BEGIN line".into(),
        Error::Base64Decode(_) => "invalid base64".into(),
        Error::Io(e) => e.to_string(),
        _ => "invalid PEM".into(),
    }
}
