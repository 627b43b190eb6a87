//! HTTPS to the external API with the platform's trust store. The service binary runs as a child
//! whose `SSL_CERT_FILE` names a test CA; the external API is the wiremock one behind a TLS front
//! of the test's own, whose certificate (for `localhost` and 127.0.0.1) that CA, or another,
//! signed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{order_body, wait_for};
use crate::process::{log_path, service_env, OwnDatabase, ServiceProcess};

/// A certificate authority of the test's own.
pub fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// Writes `ca`'s certificate as PEM into a directory of the test's own; returns its path.
pub fn write_ca_file(ca: &CertifiedIssuer<'static, KeyPair>) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory for the CA file");
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).expect("the CA file");
    path
}

/// HTTPS on a free local port in front of a plain-HTTP `backend`, with a certificate for
/// `localhost` and 127.0.0.1 signed by a CA; it counts the handshakes that completed, so a test
/// can tell that a client refused the certificate before sending anything.
pub struct TlsFront {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(signer: &CertifiedIssuer<'static, KeyPair>, backend: SocketAddr) -> Self {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let certificate = params.signed_by(&key, signer).expect("server certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![certificate.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server TLS configuration");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                    }
                });
            }
        });
        Self {
            port,
            handshakes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn backend_of(api: &ExternalApi) -> SocketAddr {
    *api.server.address()
}

/// Starts the service against `external_api_url`, trusting the roots in `ssl_cert_file` only.
async fn start_service(
    db: &OwnDatabase,
    external_api_url: &str,
    ssl_cert_file: &std::path::Path,
    log: &str,
) -> ServiceProcess {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let ssl_cert_file = ssl_cert_file.display().to_string();
    let env = service_env(
        db,
        &prefix,
        &[
            ("EXTERNAL_API_URL", external_api_url),
            ("EXTERNAL_API_TOKEN", TOKEN),
            ("SSL_CERT_FILE", &ssl_cert_file),
            ("RETRY_MAX_ATTEMPTS", "1"),
        ],
    );
    let mut service = ServiceProcess::start(&env, &log_path(&format!("{log}-{prefix}")));
    service.wait_ready().await;
    service
}

async fn create_order(http: &reqwest::Client, service: &ServiceProcess) -> i64 {
    let response = http
        .post(service.url("/orders"))
        .json(&order_body())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.expect("order JSON")["id"]
        .as_i64()
        .expect("id")
}

async fn get_order(http: &reqwest::Client, service: &ServiceProcess, id: i64) -> Option<Value> {
    http.get(service.url(&format!("/orders/{id}")))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

#[actix_web::test]
async fn an_order_syncs_over_https_to_an_api_whose_certificate_the_ca_in_ssl_cert_file_signed() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let ca = new_ca("order-sync test CA");
    let front = TlsFront::start(&ca, backend_of(&api)).await;
    let ca_file = write_ca_file(&ca);
    let db = OwnDatabase::new();
    let service = start_service(&db, &front.url(), &ca_file, "tls-trusted").await;

    let http = reqwest::Client::new();
    let id = create_order(&http, &service).await;
    let order = wait_for(
        "the order to sync over HTTPS",
        Duration::from_secs(20),
        || {
            let http = &http;
            let service = &service;
            async move {
                let order = get_order(http, service, id).await?;
                (order["sync"]["state"] == "synced").then_some(order)
            }
        },
    )
    .await;
    assert_eq!(order["sync"]["synced_version"], 1, "{order}");

    let calls = api.recorder.calls_for(id);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, "/v1/orders");
    assert_eq!(calls[0].authorization, format!("Bearer {TOKEN}"));
    assert!(front.handshakes() >= 1);
}

#[actix_web::test]
async fn a_certificate_no_trusted_root_signed_fails_the_call_with_a_certificate_error_and_sends_nothing(
) {
    let api = ExternalApi::start(Duration::ZERO).await;
    let serving_ca = new_ca("the server's CA");
    let front = TlsFront::start(&serving_ca, backend_of(&api)).await;
    // The service trusts another CA only.
    let ca_file = write_ca_file(&new_ca("an unrelated CA"));
    let db = OwnDatabase::new();
    let service = start_service(&db, &front.url(), &ca_file, "tls-untrusted").await;

    let http = reqwest::Client::new();
    let id = create_order(&http, &service).await;
    let order = wait_for("the call to fail", Duration::from_secs(20), || {
        let http = &http;
        let service = &service;
        async move {
            let order = get_order(http, service, id).await?;
            order["sync"]["last_error"].is_string().then_some(order)
        }
    })
    .await;
    let error = order["sync"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.to_lowercase().contains("certificate"),
        "not a certificate error: {order}"
    );
    assert_ne!(order["sync"]["state"], "synced", "{order}");
    assert_eq!(front.handshakes(), 0, "a handshake completed");
    assert!(api.recorder.calls().is_empty(), "a call reached the API");
}
