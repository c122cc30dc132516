//! A fault proxy in front of a real API server: the faults kube-sim injects itself (error
//! answers, cut watches), for a client whose kubeconfig points here instead of at the server.
//! It terminates TLS with a throw-away CA, passes each request on to the server with the
//! client's own bearer token (so the server authenticates and authorises as usual), and keeps
//! a log of what it answered, injected errors included (the server's audit log never sees
//! those). A client certificate cannot pass through: clients of the proxy use tokens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use base64::Engine;
use futures::StreamExt;
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::rbac::Attributes;
use crate::{ErrorFault, RequestRecord};

struct Shared {
    upstream: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    faults: Mutex<Vec<ErrorFault>>,
    drop_watches: tokio::sync::watch::Sender<u64>,
    log: Mutex<Vec<RequestRecord>>,
}

/// A running proxy; dropping it stops it and ends every stream through it.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) in front of `upstream` (`https://127.0.0.1:PORT`),
    /// whose serving certificate `upstream_ca_pem` signed.
    pub async fn start(upstream: &str, upstream_ca_pem: &str) -> std::io::Result<FaultProxy> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .parse()
            .map_err(err)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(upstream_ca_pem.as_bytes()) {
            roots.add(cert.map_err(err)?).map_err(err)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (drop_watches, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            upstream,
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            faults: Mutex::new(Vec::new()),
            drop_watches,
            log: Mutex::new(Vec::new()),
        });
        let tls = crate::tls::generate()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let acceptor = acceptor.clone();
                        let shared = serving.clone();
                        connections.spawn(async move {
                            let Ok(tls) = acceptor.accept(stream).await else { return };
                            let service = hyper::service::service_fn(move |request| {
                                let shared = shared.clone();
                                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                            });
                            let io = hyper_util::rt::TokioIo::new(tls);
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(FaultProxy {
            shared,
            addr,
            ca_pem: tls.ca_pem,
            task,
        })
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// PEM of the CA that signed the proxy's serving certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Answers matching requests with an error instead of passing them on (for `times`
    /// requests, or until cleared), as `Faults::inject` does on kube-sim.
    pub fn inject(&self, fault: ErrorFault) {
        self.shared.faults.lock().unwrap().push(fault);
    }

    /// Ends every open watch stream through the proxy.
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|n| *n += 1);
    }

    /// Removes pending errors.
    pub fn clear(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    /// Every request the proxy answered, with the code it answered.
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_watches();
    }
}

async fn handle(shared: &Shared, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let attrs = attributes(request.method().as_str(), request.uri());
    let user = token_user(request.headers()).unwrap_or_default();
    let user_agent = request
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let injected = {
        let mut faults = shared.faults.lock().unwrap();
        let found = faults.iter().position(|f| f.matches(&attrs, &user));
        found.map(|i| {
            let fault = faults[i].clone();
            if let Some(times) = faults[i].times.as_mut() {
                *times = times.saturating_sub(1);
                if *times == 0 {
                    faults.remove(i);
                }
            }
            fault
        })
    };
    let watch = attrs.verb == "watch";
    let (method, path) = (
        request.method().to_string(),
        request.uri().path().to_owned(),
    );
    let record = |code: u16| RequestRecord {
        method: method.clone(),
        path: path.clone(),
        verb: attrs.verb.clone(),
        api_group: attrs.group.clone(),
        resource: attrs.resource.clone(),
        subresource: attrs.subresource.clone(),
        namespace: attrs.namespace.clone(),
        name: attrs.name.clone(),
        user: user.clone(),
        code,
        time: jiff::Timestamp::now().to_string(),
        user_agent: user_agent.clone(),
    };
    let response = match injected {
        Some(fault) => {
            let e = fault.to_error(&attrs);
            let mut response = Response::new(Body::from(e.status().to_string()));
            *response.status_mut() = hyper::StatusCode::from_u16(e.code).unwrap_or_default();
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        None => match forward(shared, request, watch).await {
            Ok(response) => response,
            Err(e) => {
                let mut response = Response::new(Body::from(format!("fault proxy: {e}")));
                *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
                response
            }
        },
    };
    shared
        .log
        .lock()
        .unwrap()
        .push(record(response.status().as_u16()));
    response
}

/// Passes the request on over a connection of its own; a watch's body ends when
/// `drop_watches` is called.
async fn forward(
    shared: &Shared,
    request: Request<hyper::body::Incoming>,
    watch: bool,
) -> std::io::Result<Response<Body>> {
    let tcp = tokio::net::TcpStream::connect(shared.upstream).await?;
    let name = ServerName::IpAddress(shared.upstream.ip().into());
    let tls = shared.connector.connect(name, tcp).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(err)?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(err)?;
    let (parts, body) = response.into_parts();
    let body = if watch {
        let mut dropped = shared.drop_watches.subscribe();
        let cut = async move {
            let _ = dropped.changed().await;
        };
        Body::from_stream(Body::new(body).into_data_stream().take_until(cut))
    } else {
        Body::new(body)
    };
    Ok(Response::from_parts(parts, body))
}

/// The user a service-account token names (its `sub` claim); the server checks the token.
fn token_user(headers: &hyper::HeaderMap) -> Option<String> {
    let token = headers
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
}

/// The request's verb, group, resource, subresource, namespace and name, as the API server's
/// RequestInfo reads them from the path.
fn attributes(method: &str, uri: &hyper::Uri) -> Attributes {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => (String::new(), &[][..]),
    };
    let (group, mut rest) = rest;
    let mut namespace = String::new();
    if let ["namespaces", ns, tail @ ..] = rest
        && !tail.is_empty()
    {
        namespace = (*ns).to_owned();
        rest = tail;
    }
    let part = |i: usize| rest.get(i).map(|s| (*s).to_owned()).unwrap_or_default();
    let (resource, name, subresource) = (part(0), part(1), part(2));
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let verb = match (method, name.is_empty()) {
        ("GET", _) if watch => "watch",
        ("GET", false) => "get",
        ("GET", true) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "delete",
        ("DELETE", true) => "deletecollection",
        (other, _) => return attributes_of(other.to_lowercase(), group, resource),
    };
    Attributes {
        verb: verb.to_owned(),
        group,
        resource,
        subresource,
        namespace,
        name,
    }
}

fn attributes_of(verb: String, group: String, resource: String) -> Attributes {
    Attributes {
        verb,
        group,
        resource,
        subresource: String::new(),
        namespace: String::new(),
        name: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_as_the_api_server_reads_them() {
        let a = |m: &str, p: &str| {
            let a = attributes(m, &p.parse().unwrap());
            [
                a.verb,
                a.group,
                a.resource,
                a.subresource,
                a.namespace,
                a.name,
            ]
            .join(" ")
        };
        assert_eq!(
            a(
                "PATCH",
                "/apis/kekeeper.io/v1alpha1/namespaces/ns/recordingkeyconfigs/r/status"
            ),
            "patch kekeeper.io recordingkeyconfigs status ns r"
        );
        assert_eq!(
            a("GET", "/api/v1/namespaces/ns/secrets?watch=true&x=1"),
            "watch  secrets  ns "
        );
        assert_eq!(a("GET", "/api/v1/namespaces/ns"), "get  namespaces   ns");
        assert_eq!(a("GET", "/api/v1/secrets"), "list  secrets   ");
        assert_eq!(
            a("DELETE", "/api/v1/namespaces/ns/secrets/s"),
            "delete  secrets  ns s"
        );
    }
}
