//! TLS for calls to the external API: a rustls client configuration whose trusted roots are the
//! platform's (`rustls-native-certs`: `/etc/ssl/certs` on Debian, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set, which is how a private CA is trusted).
//!
//! The roots are read once, at start-up, and shared by every client through an `Arc`: reading
//! and parsing the store takes milliseconds and a few hundred kilobytes, which no call should pay.
//! A root that cannot be read or parsed is a warning, not a failure: the service may never call an
//! `https` URL (the built-in fake is plain HTTP), and when it does, a missing root shows up as a
//! certificate error in `sync.last_error` of the first order it syncs.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

/// The configuration every external call's TLS handshake uses.
///
/// It offers HTTP/1.1 only (ALPN): plain `http` URLs speak it too, so both kinds of URL behave
/// alike, and the call timeouts and bounded body reads in `super::client` are the ones tested.
///
/// Fails only if the crypto provider cannot do TLS 1.2 or 1.3, which ring always can.
pub fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(error = %error, "cannot load a trusted root certificate; skipped");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "some trusted root certificates cannot be parsed; skipped"
        );
    }
    if added == 0 {
        tracing::warn!(
            "no trusted root certificates found (install ca-certificates, or set SSL_CERT_FILE): \
             calls to an https EXTERNAL_API_URL will fail"
        );
    } else {
        tracing::debug!(roots = added, "loaded trusted root certificates");
    }
    // ring, explicitly: the process-wide default provider is only set when exactly one provider
    // feature is compiled in, which a dependency could change.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
