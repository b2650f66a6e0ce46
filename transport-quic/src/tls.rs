//! TLS for QUIC: the server's certificate (from files, or self-signed for
//! local development), SHA-256 fingerprints, and the client's trust (a CA
//! file, a pinned fingerprint, or none for demos). rustls runs on ring only.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

#[cfg(feature = "client")]
use crate::config::Trust;
#[cfg(feature = "client")]
use parking_lot::Mutex;
#[cfg(feature = "client")]
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
#[cfg(feature = "client")]
use rustls::pki_types::{ServerName, UnixTime};
#[cfg(feature = "client")]
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

#[cfg(feature = "server")]
use crate::config::ServerTls;
#[cfg(feature = "server")]
use rustls::pki_types::PrivateKeyDer;

/// The ALPN protocol id of Statecast protocol v1 over QUIC.
pub const ALPN: &[u8] = b"statecast/1";

/// The file names of the self-signed development certificate and its key.
pub const DEV_CERT_FILE: &str = "quic-cert.pem";
pub const DEV_KEY_FILE: &str = "quic-key.pem";

/// Why a certificate, a key or a fingerprint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("can't read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("can't write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} holds no PEM {what}", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("{} is not a PEM {what}: {detail}", path.display())]
    Pem { what: &'static str, path: PathBuf, detail: String },
    #[error("{} exists but {} does not: remove it to generate a new pair, or restore the other", present.display(), missing.display())]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error("can't generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key were refused by TLS: {0}")]
    Tls(String),
    #[error("`{0}` is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    Fingerprint(String),
}

/// The certificate a server presents, as shown to its operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The PEM certificate file (the self-signed one, or the configured one).
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The SHA-256 fingerprint of the leaf certificate, 64 lowercase hex digits.
    pub fingerprint: String,
    /// True when the self-signed certificate was made at this start.
    pub generated: bool,
    /// True for the self-signed development certificate.
    pub self_signed: bool,
}

#[cfg(feature = "server")]
/// A loaded certificate chain and key, ready for rustls.
#[derive(Debug)]
pub(crate) struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub info: CertInfo,
}

/// Installs rustls' ring provider as the process default (once; an already
/// installed provider is kept). The configs built here name ring explicitly
/// as well, so a different default elsewhere can't change them.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::ring::default_provider().install_default().is_err() {
            tracing::debug!("a rustls crypto provider was already installed; QUIC configs use ring explicitly");
        }
    });
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 fingerprint of a DER certificate: 64 lowercase hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a SHA-256 fingerprint: 64 hex digits, case-insensitive, with
/// optional `:` separators (as `openssl x509 -fingerprint` prints them).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], CertError> {
    let bad = || CertError::Fingerprint(text.to_owned());
    let digits: Vec<u8> = text.trim().bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(feature = "server")]
/// Loads the server certificate named by `tls` (generating the self-signed
/// one when it is missing).
pub(crate) fn load_server_cert(tls: &ServerTls) -> Result<ServerCert, CertError> {
    match tls {
        ServerTls::Files { cert, key } => {
            let chain = read_chain(cert)?;
            let key_der = read_key(key)?;
            let info = CertInfo {
                cert_path: cert.clone(),
                key_path: key.clone(),
                fingerprint: fingerprint(&chain[0]),
                generated: false,
                self_signed: false,
            };
            Ok(ServerCert { chain, key: key_der, info })
        }
        ServerTls::SelfSigned { dir } => {
            let info = ensure_self_signed(dir)?;
            let chain = read_chain(&info.cert_path)?;
            let key = read_key(&info.key_path)?;
            Ok(ServerCert { chain, key, info })
        }
    }
}

#[cfg(feature = "server")]
/// Makes sure `dir` holds the self-signed development certificate and key,
/// generating them if neither exists. Returns where they are and the
/// certificate's fingerprint.
pub fn ensure_self_signed(dir: &Path) -> Result<CertInfo, CertError> {
    let cert_path = dir.join(DEV_CERT_FILE);
    let key_path = dir.join(DEV_KEY_FILE);
    let generated = match (cert_path.exists(), key_path.exists()) {
        (true, true) => false,
        (true, false) => return Err(CertError::HalfPair { present: cert_path, missing: key_path }),
        (false, true) => return Err(CertError::HalfPair { present: key_path, missing: cert_path }),
        (false, false) => {
            generate_self_signed(dir, &cert_path, &key_path)?;
            true
        }
    };
    let chain = read_chain(&cert_path)?;
    Ok(CertInfo { fingerprint: fingerprint(&chain[0]), cert_path, key_path, generated, self_signed: true })
}

#[cfg(feature = "server")]
fn generate_self_signed(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
    let generate = |e: rcgen::Error| CertError::Generate(e.to_string());
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let mut params = rcgen::CertificateParams::new(names).map_err(generate)?;
    // A name of its own: certificates that share a subject would pass for
    // each other's issuer (and fail as bad signatures, not unknown issuers).
    let mut tag = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tag)
        .map_err(|_| CertError::Generate("no randomness".into()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("statecast development certificate {}", hex(&tag)));
    let signing_key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&signing_key).map_err(generate)?;
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write { path: dir.to_owned(), source })?;
    // The key first, private to its owner; the certificate last, so a
    // crash in between leaves a half pair that is reported, not used.
    write_private(key_path, signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem()).map_err(|source| CertError::Write { path: cert_path.to_owned(), source })?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed QUIC certificate for local development");
    Ok(())
}

#[cfg(feature = "server")]
fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut file = options.open(path)?;
        file.write_all(data)?;
        file.sync_all()
    };
    write().map_err(|source| CertError::Write { path: path.to_owned(), source })
}

/// Reads every certificate of a PEM file (leaf first).
pub(crate) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let what = "certificate";
    let pem = std::fs::read(path).map_err(|source| CertError::Read { what, path: path.to_owned(), source })?;
    let chain = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| CertError::Pem {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if chain.is_empty() {
        return Err(CertError::Empty { what, path: path.to_owned() });
    }
    Ok(chain)
}

#[cfg(feature = "server")]
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let what = "private key";
    let pem = std::fs::read(path).map_err(|source| CertError::Read { what, path: path.to_owned(), source })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::Empty { what, path: path.to_owned() },
        other => CertError::Pem { what, path: path.to_owned(), detail: other.to_string() },
    })
}

#[cfg(feature = "server")]
/// The rustls server config: TLS 1.3, ring, ALPN `statecast/1`, no client certificates.
pub(crate) fn server_crypto(cert: &ServerCert) -> Result<rustls::ServerConfig, CertError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| CertError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: early data can be replayed, and writes must not be.
    config.max_early_data_size = 0;
    Ok(config)
}

#[cfg(feature = "client")]
/// Why the client refused the server's certificate, kept by the verifier so
/// the connect error can say it plainly.
pub(crate) type TrustFailure = Arc<Mutex<Option<String>>>;

#[cfg(feature = "client")]
/// The rustls client config for `trust`, and the slot where its verifier
/// notes why it refused a certificate.
pub(crate) fn client_crypto(trust: &Trust) -> Result<(rustls::ClientConfig, TrustFailure), CertError> {
    let provider = provider();
    let failure = TrustFailure::default();
    let check = match trust {
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_chain(path)? {
                roots.add(cert).map_err(|e| CertError::Pem {
                    what: "CA certificate",
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| CertError::Tls(e.to_string()))?;
            Check::CaFile { path: path.clone(), webpki }
        }
        Trust::Fingerprint(text) => Check::Pinned(parse_fingerprint(text)?),
        Trust::InsecureDev => Check::Anything,
    };
    let verifier = Arc::new(Verifier { check, provider: provider.clone(), failure: failure.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| CertError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok((config, failure))
}

#[cfg(feature = "client")]
/// How a client checks the server's certificate.
#[derive(Debug)]
enum Check {
    CaFile { path: PathBuf, webpki: Arc<rustls::client::WebPkiServerVerifier> },
    Pinned([u8; 32]),
    Anything,
}

#[cfg(feature = "client")]
/// The client's certificate verifier for every kind of [`Trust`]. Whatever
/// the kind, the handshake signature is verified with the certificate's key,
/// so the server must hold the key of the certificate it shows.
#[derive(Debug)]
struct Verifier {
    check: Check,
    provider: Arc<CryptoProvider>,
    failure: TrustFailure,
}

#[cfg(feature = "client")]
impl Verifier {
    fn refuse(&self, why: String, error: rustls::Error) -> rustls::Error {
        let mut slot = self.failure.lock();
        if slot.is_none() {
            *slot = Some(why);
        }
        error
    }
}

#[cfg(feature = "client")]
impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.check {
            Check::Anything => Ok(ServerCertVerified::assertion()),
            Check::Pinned(pin) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, end_entity);
                if digest.as_ref() == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    let why = format!(
                        "certificate fingerprint mismatch: expected {}, the server presented {}",
                        hex(pin),
                        hex(digest.as_ref())
                    );
                    Err(self.refuse(
                        why,
                        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
                    ))
                }
            }
            Check::CaFile { path, webpki } => {
                webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now).map_err(|e| {
                    let why = describe_refusal(&e, path, server_name);
                    self.refuse(why, e)
                })
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(feature = "client")]
fn describe_refusal(error: &rustls::Error, ca_file: &Path, server_name: &ServerName<'_>) -> String {
    let ca = ca_file.display();
    match error {
        // A bad signature: a CA of that name is in the file, but it did not sign this certificate.
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!("unknown issuer: the server's certificate is not signed by a CA in {ca}")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            format!("the server's certificate is not valid for the name {}", server_name.to_str())
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the server's certificate has expired".to_owned()
        }
        other => format!("the server's certificate was refused (CA file {ca}): {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let der = b"not really a certificate";
        let fp = fingerprint(der);
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let expected = parse_fingerprint(&fp).expect("plain hex");
        let colons: Vec<String> = fp.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).to_uppercase()).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).expect("colons"), expected);
        for bad in ["", "abc", &fp[..62], &format!("{}zz", &fp[..62]), &format!("{fp}00")] {
            assert!(matches!(parse_fingerprint(bad), Err(CertError::Fingerprint(_))), "{bad}");
        }
    }

    #[test]
    fn the_self_signed_certificate_is_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure_self_signed(dir.path()).expect("generate");
        assert!(first.generated && first.self_signed);
        assert_eq!(first.cert_path, dir.path().join(DEV_CERT_FILE));
        let again = ensure_self_signed(dir.path()).expect("reuse");
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);
        let loaded = load_server_cert(&ServerTls::SelfSigned { dir: dir.path().to_owned() }).expect("load");
        assert_eq!(loaded.info.fingerprint, first.fingerprint);
        assert!(server_crypto(&loaded).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&first.key_path).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private to its owner");
        }
    }

    #[test]
    fn half_a_pair_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let info = ensure_self_signed(dir.path()).expect("generate");
        std::fs::remove_file(&info.key_path).expect("remove key");
        let err = ensure_self_signed(dir.path()).expect_err("half pair");
        assert!(matches!(err, CertError::HalfPair { .. }), "{err}");
        assert!(info.cert_path.exists(), "the certificate was not touched");
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").expect("write");
        let tls = ServerTls::Files { cert: junk.clone(), key: junk.clone() };
        let err = load_server_cert(&tls).expect_err("junk").to_string();
        assert!(err.contains("junk.pem") && err.contains("certificate"), "{err}");
        let missing = ServerTls::Files { cert: dir.path().join("nope.pem"), key: junk };
        let err = load_server_cert(&missing).expect_err("missing").to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let err = client_crypto(&Trust::Fingerprint("12:34".into())).expect_err("bad pin").to_string();
        assert!(err.contains("12:34"), "{err}");
    }
}
