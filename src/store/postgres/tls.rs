//! TLS to the server the way libpq does it, over rustls: `sslmode`
//! `disable` / `allow` / `prefer` / `require` / `verify-ca` / `verify-full`,
//! the CA roots from `sslrootcert` (a file, or `system`), else
//! `~/.postgresql/root.crt`, else the system's store, and a client
//! certificate from `sslcert` / `sslkey` (else `~/.postgresql/postgresql.crt`
//! and `.key` when both exist).
//!
//! tokio-postgres knows only disable / prefer / require; the verify modes
//! are `require` plus a certificate verifier. As in libpq, `prefer` and
//! `require` encrypt without checking whom they talk to, except that
//! `require` with a root certificate file behaves as `verify-ca`.

use crate::exit::{fail, Code};
use anyhow::Result;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// What tokio-postgres is told: whether to ask for TLS and insist on it.
    pub fn for_client(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Client;
        match self {
            // libpq's allow tries without TLS first: without TLS, just that.
            SslMode::Disable | SslMode::Allow => Client::Disable,
            SslMode::Prefer => Client::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Client::Require,
        }
    }
}

/// The TLS settings of one target.
#[derive(Debug, Clone)]
pub struct Tls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or `system`.
    pub root_cert: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Where libpq looks when the URL and the environment name no file.
fn home_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join(name))
}

impl Tls {
    /// The connector for `config`'s TLS, or an error naming the file that
    /// could not be used.
    pub fn connector(&self) -> Result<MakeRustlsConnect> {
        // The key share for P-256 first: PostgreSQL before 18 accepts that
        // curve only (`ssl_ecdh_curve`), and answers a first share for
        // X25519 with a HelloRetryRequest, one round trip more. The same
        // groups are offered either way.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .kx_groups
            .sort_by_key(|group| group.name() != rustls::NamedGroup::secp256r1);
        let provider = Arc::new(provider);
        let root_file = self
            .root_cert
            .clone()
            .or_else(|| {
                home_file("root.crt")
                    .filter(|p| p.is_file())
                    .map(|p| p.to_string_lossy().into_owned())
            })
            .filter(|r| r != "system");
        let mode = match self.mode {
            SslMode::Require if root_file.is_some() => SslMode::VerifyCa,
            mode => mode,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = roots(root_file.as_deref())?;
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()?;
                Arc::new(Verify {
                    webpki,
                    check_name: mode == SslMode::VerifyFull,
                })
            }
            _ => Arc::new(Encrypt(provider.clone())),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match self.client_identity()? {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .or_else(|e| fail(Code::Internal, format!("sslcert / sslkey: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(cert), key) => (
                cert.clone(),
                key.clone().unwrap_or_else(|| cert.with_extension("key")),
            ),
            (None, Some(_)) => {
                return fail(Code::Usage, "sslkey needs sslcert (the client certificate)")
            }
            (None, None) => match (home_file("postgresql.crt"), home_file("postgresql.key")) {
                (Some(cert), Some(key)) if cert.is_file() && key.is_file() => (cert, key),
                _ => return Ok(None),
            },
        };
        let chain = CertificateDer::pem_file_iter(&cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .or_else(|e| unreadable("sslcert", &cert, &e))?;
        if chain.is_empty() {
            return unreadable("sslcert", &cert, &"no PEM certificate in it");
        }
        let key = PrivateKeyDer::from_pem_file(&key).or_else(|e| unreadable("sslkey", &key, &e))?;
        Ok(Some((chain, key)))
    }
}

fn unreadable<T>(what: &str, path: &Path, e: &dyn std::fmt::Display) -> Result<T> {
    fail(
        Code::Internal,
        format!("cannot use {what} {}: {e}", path.display()),
    )
}

/// The trusted roots: the PEM file given, else the system's store.
fn roots(file: Option<&str>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match file {
        Some(file) => {
            let path = Path::new(file);
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .or_else(|e| unreadable("sslrootcert", path, &e))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return unreadable("sslrootcert", path, &"no usable PEM certificate in it");
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return fail(
                    Code::Internal,
                    "no CA certificates in the system's store to verify the server with \
                     (install ca-certificates, or give sslrootcert=FILE)",
                );
            }
        }
    }
    Ok(roots)
}

/// verify-ca and verify-full: the chain must lead to a trusted root; the
/// name is checked for verify-full only.
#[derive(Debug)]
struct Verify {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match verified {
            // webpki checks the chain before the name: a wrong name means a
            // trusted chain.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// prefer and require: encrypted, whoever answers (the handshake's own
/// signatures are still checked).
#[derive(Debug)]
struct Encrypt(Arc<CryptoProvider>);

impl ServerCertVerifier for Encrypt {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
