//! Whom the gateway's HTTPS clients trust: Mozilla's root program, compiled into the binary
//! (`webpki-roots` for the reqwest clients, the same certificates from `webpki-root-certs` for
//! the AWS SDK; lettre's SMTP transport uses `webpki-roots` too), never the host's certificate
//! store.
//!
//! Why: loading the host's store means reading and parsing every certificate file it has (the
//! bundle and, on Debian, ~150 single files) once per client family at start-up: most of a
//! function's cold start when measured (docs/BENCHMARKS.md), and a different trust set on the
//! Lambda image, in CI and on a laptop. Compiled-in roots cost nothing to load and are the same
//! everywhere; they are updated with the crates. The trade-off: an endpoint whose certificate
//! chains to a private CA (a customer webhook or SMTP relay inside a corporate network) is not
//! trusted; such endpoints need a certificate from a public CA, as they would for most SaaS
//! callers.

use std::sync::{Arc, LazyLock, OnceLock};

use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use base64::Engine as _;

/// The user agent of every HTTP client the gateway builds.
pub const USER_AGENT: &str = concat!("mail-gateway/", env!("CARGO_PKG_VERSION"));

/// One rustls configuration for every reqwest client of the process (aws-lc-rs, TLS 1.2 and
/// 1.3, Mozilla's roots); `None` only if the crypto provider refused the default protocol
/// versions, which it does not.
static RUSTLS: LazyLock<Option<rustls::ClientConfig>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()
    .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
});

/// A reqwest client builder trusting [Mozilla's roots](self) and sending [`USER_AGENT`]; the
/// caller sets its timeouts and redirect policy.
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().user_agent(USER_AGENT);
    match RUSTLS.as_ref() {
        Some(config) => builder.tls_backend_preconfigured(config.clone()),
        // Unreachable in practice; reqwest's own verifier (the host's store) is the safe
        // fallback.
        None => builder,
    }
}

/// The compiled-in roots as one PEM document, the form the AWS SDK's trust store takes.
fn roots_pem() -> Vec<u8> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut pem = String::new();
    for cert in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = engine.encode(cert.as_ref());
        for line in encoded.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

/// The HTTP client every AWS SDK client of the process shares (one connection pool per
/// timeout setting), trusting [Mozilla's roots](self) instead of the host's store.
pub fn aws_http_client() -> SharedHttpClient {
    static CLIENT: LazyLock<SharedHttpClient> =
        LazyLock::new(|| SharedHttpClient::new(ConnectorsOnUse::default()));
    CLIENT.clone()
}

/// The SDK's HTTP client, built on first use and without its construction-time check. The
/// default client builds a throwaway TLS connector whenever an SDK client is constructed ("so
/// that native certificates load at client initialization"), parsing every root certificate
/// again per SDK client, only to drop it; with compiled-in roots there is nothing to load early,
/// so that work is pure start-up cost. Here the client (and the PEM form of the roots) is made
/// when the first request needs a connector, and each connector once per timeout setting.
#[derive(Debug, Default)]
struct ConnectorsOnUse(OnceLock<SharedHttpClient>);

impl ConnectorsOnUse {
    fn client(&self) -> &SharedHttpClient {
        self.0.get_or_init(|| {
            let trust = TrustStore::empty()
                .with_native_roots(false)
                .with_pem_certificate(roots_pem());
            let builder = aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
            // `build` never fails today (it only stores the trust store); should it start to,
            // the SDK's default trust (the host's store) is the safe fallback.
            match TlsContext::builder().with_trust_store(trust).build() {
                Ok(context) => builder.tls_context(context).build_https(),
                Err(_) => builder.build_https(),
            }
        })
    }
}

impl HttpClient for ConnectorsOnUse {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.client().http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.client().connector_metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compiled_in_root_is_in_the_pem_document() {
        let pem = String::from_utf8(roots_pem()).unwrap_or_default();
        let count = pem.matches("-----BEGIN CERTIFICATE-----").count();
        assert_eq!(count, webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(
            count > 100,
            "Mozilla's program has well over 100 roots, found {count}"
        );
        assert!(RUSTLS.is_some());
    }
}
