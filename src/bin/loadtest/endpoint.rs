//! Where the server is: `Endpoint`, one address in the three forms the tool needs.
//!
//! Owns checking a `--target` URL (plain `http://`, the server's root) and resolving it once.
//! It must not connect to anything: reachability is the harness's question.

use std::net::{SocketAddr, ToSocketAddrs};

/// A server address in the three forms the tool needs.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `http://host:port`, for ureq.
    pub(crate) base: String,
    /// For the raw camera connections.
    pub(crate) addr: SocketAddr,
    /// The `Host` header of the raw requests.
    pub(crate) host: String,
}

impl Endpoint {
    pub(crate) fn from_url(raw: &str) -> Result<Endpoint, String> {
        let url =
            url::Url::parse(raw).map_err(|e| format!("--target {raw:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "--target must be an http:// URL (the simulated cameras speak plain HTTP); got {raw:?}"
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!(
                "--target must be the server's root, like http://127.0.0.1:8080; got {raw:?}"
            ));
        }
        let host = url.host_str().ok_or_else(|| format!("--target {raw:?} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}:{port} resolves to no address"))?;
        Ok(Endpoint { base: format!("http://{host}:{port}"), addr, host: format!("{host}:{port}") })
    }

    pub(crate) fn from_addr(addr: SocketAddr) -> Endpoint {
        Endpoint { base: format!("http://{addr}"), addr, host: addr.to_string() }
    }
}
