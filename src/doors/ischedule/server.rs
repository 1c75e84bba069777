//! The iSchedule receiver's HTTP side: axum routes served over rustls by hyper, one task per
//! connection, each bounded in time. Routes (draft-desruisseaux-ischedule-05 §5, §6, §7.3):
//! GET/HEAD `/.well-known/ischedule?action=capabilities`, POST `/.well-known/ischedule`, OPTIONS,
//! the alias `/ischedule`, and our public key at `/.well-known/domainkey/<d>/<s>`. Every answer
//! carries iSchedule-Version and iSchedule-Capabilities.

use super::receive::{self, Answer};
use crate::ischedule::{xml, Bridge};
use crate::pipeline::Pipeline;
use axum::extract::{Path, RawQuery, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// What the handlers need; a function so that a configuration reload is seen at once.
pub type StateFn = Arc<dyn Fn() -> Option<(Arc<Pipeline>, Arc<Bridge>)> + Send + Sync>;

/// Most connections served at once: high, because a descriptor and a parked task cost little
/// and slow clients are cut by the deadlines below, not by refusing everyone else.
pub const MAX_CONNECTIONS: usize = 4096;
/// Budget of the TLS handshake plus the first request's header: a client that has not sent a
/// whole request header this long after connecting is dropped.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// Budget of a request body once the header is in.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Budget of one connection (kept-alive requests included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Copy)]
struct Peer(SocketAddr);

fn with_common_headers(mut resp: Response, serial: u64) -> Response {
    let h = resp.headers_mut();
    h.insert("ischedule-version", HeaderValue::from_static("1.0"));
    if let Ok(v) = HeaderValue::from_str(&serial.to_string()) {
        h.insert("ischedule-capabilities", v);
    }
    resp
}

fn xml_response(status: StatusCode, body: String, serial: u64) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    with_common_headers(r, serial)
}

/// The XML document of an answer.
pub fn answer_document(a: &Answer) -> (StatusCode, String) {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    match a {
        Answer::Error {
            status,
            element,
            description,
        } => {
            out.push_str(&format!(
                "<error xmlns=\"{}\">\n  <{element}/>\n  <response-description>{}</response-description>\n</error>\n",
                xml::NS,
                xml::escape(description)
            ));
            (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN),
                out,
            )
        }
        Answer::Responses(rs) => {
            out.push_str(&format!("<schedule-response xmlns=\"{}\">\n", xml::NS));
            for r in rs {
                out.push_str(&format!(
                    "  <response>\n    <recipient>{}</recipient>\n    <request-status>{}</request-status>\n",
                    xml::escape(&r.recipient),
                    xml::escape(r.status)
                ));
                if let Some(cd) = &r.calendar_data {
                    out.push_str(&format!(
                        "    <calendar-data content-type=\"text/calendar\" version=\"2.0\">{}</calendar-data>\n",
                        xml::cdata(cd)
                    ));
                }
                if let Some(d) = &r.description {
                    out.push_str(&format!(
                        "    <response-description>{}</response-description>\n",
                        xml::escape(d)
                    ));
                }
                out.push_str("  </response>\n");
            }
            out.push_str("</schedule-response>\n");
            (StatusCode::OK, out)
        }
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "iSchedule is not configured\n",
    )
        .into_response()
}

async fn capabilities(Extension(state): Extension<StateFn>, RawQuery(query): RawQuery) -> Response {
    let Some((_, bridge)) = state() else {
        return unavailable();
    };
    if query.as_deref() != Some("action=capabilities") {
        let r = (
            StatusCode::BAD_REQUEST,
            "the only action is ?action=capabilities\n",
        )
            .into_response();
        return with_common_headers(r, bridge.serial);
    }
    let mut r = (StatusCode::OK, bridge.capabilities.clone()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"caps-{}\"", bridge.serial)) {
        h.insert(header::ETAG, v);
    }
    with_common_headers(r, bridge.serial)
}

async fn options(Extension(state): Extension<StateFn>) -> Response {
    let serial = state().map(|(_, b)| b.serial).unwrap_or(0);
    let mut r = StatusCode::OK.into_response();
    r.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, OPTIONS"),
    );
    with_common_headers(r, serial)
}

async fn post(
    Extension(state): Extension<StateFn>,
    Extension(peer): Extension<Peer>,
    req: Request,
) -> Response {
    let Some((pipeline, bridge)) = state() else {
        return unavailable();
    };
    let limit = bridge.cfg.ischedule.max_content_length;
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let answer = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Answer::Error {
            status: 408,
            element: "invalid-scheduling-message",
            description: "request body not received in time".into(),
        },
        Ok(Err(_)) => Answer::Error {
            status: 403,
            element: "max-content-length",
            description: format!("body larger than {limit} octets"),
        },
        Ok(Ok(bytes)) => {
            receive::receive(
                bridge.clone(),
                pipeline,
                receive::Request {
                    headers,
                    body: bytes.to_vec(),
                    peer: Some(peer.0.ip()),
                },
            )
            .await
        }
    };
    log_answer(&peer, &answer);
    let (status, doc) = answer_document(&answer);
    xml_response(status, doc, bridge.serial)
}

fn log_answer(peer: &Peer, a: &Answer) {
    match a {
        Answer::Error {
            status,
            element,
            description,
        } => crate::app::log(format!(
            "ischedule: peer={} refused {status} {element}: {description}",
            peer.0.ip()
        )),
        Answer::Responses(rs) => {
            for r in rs {
                crate::app::log(format!(
                    "ischedule: peer={} rcpt={} status={} ({})",
                    peer.0.ip(),
                    r.recipient,
                    r.status,
                    r.description.as_deref().unwrap_or("")
                ));
            }
        }
    }
}

async fn domainkey(
    Extension(state): Extension<StateFn>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    let Some((_, bridge)) = state() else {
        return unavailable();
    };
    match bridge.own_key_record(&domain, &selector) {
        Some(rec) => {
            let mut r = (StatusCode::OK, format!("{rec}\n")).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            with_common_headers(r, bridge.serial)
        }
        None => with_common_headers(
            (StatusCode::NOT_FOUND, "no such key\n").into_response(),
            bridge.serial,
        ),
    }
}

/// The routes.
pub fn router(state: StateFn) -> Router {
    let ischedule = get(capabilities).post(post).options(options);
    Router::new()
        .route("/.well-known/ischedule", ischedule.clone())
        .route("/ischedule", ischedule)
        .route("/.well-known/domainkey/{domain}/{selector}", get(domainkey))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(Extension(state))
}

/// The TLS acceptor from a PEM certificate chain and key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: StateFn,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let app = router(state);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    crate::app::log(format!("ischedule: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let tls = tls.clone();
        let app = app.clone().layer(Extension(Peer(peer)));
        tokio::spawn(async move {
            let _permit = permit;
            let start = tokio::time::Instant::now();
            let stream = match tokio::time::timeout(HEADER_DEADLINE, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    crate::app::log(format!("ischedule: TLS handshake with {peer}: {e}"));
                    return;
                }
                Err(_) => return,
            };
            let left = HEADER_DEADLINE
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(1));
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(left)
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}
