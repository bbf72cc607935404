//! What a web browser on the operator's machine must not be able to do to the API: reach a
//! loopback server through a DNS name an attacker controls (DNS rebinding, refused by the Host
//! allow-list), or make a state-changing request or open an event WebSocket from another site's
//! page (refused by the Origin check). Clients that are not browsers send no `Origin` and pass;
//! JSON endpoints already refuse `text/plain` and form bodies (`JsonBody`, `/enqueue`).

use std::net::IpAddr;

use axum::{
    extract::{Request, State},
    http::{HeaderMap, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::problem::ApiError;

/// Which requests the server answers, by their `Host` and `Origin`.
#[derive(Debug, Clone, Default)]
pub struct Browser {
    /// Host names answered; empty: loopback names on a loopback server, any otherwise.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://ops.example.com`) besides the server's own that may change state.
    pub allowed_origins: Vec<String>,
    /// The server listens on a loopback address only.
    pub loopback: bool,
}

impl Browser {
    /// Whether `host` (a `Host` header: name or address, maybe with a port) is answered.
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if !self.allowed_hosts.is_empty() {
            return self
                .allowed_hosts
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name));
        }
        !self.loopback || is_loopback_name(name)
    }

    /// Whether a request from `origin` to `host` may change state: the server's own origin,
    /// or one configured.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let own = origin
            .split_once("://")
            .map(|(_, authority)| authority)
            .is_some_and(|authority| host.is_some_and(|h| authority.eq_ignore_ascii_case(h)));
        own || self
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The name part of a `Host` header: `[::1]:8080` → `::1`, `localhost:8080` → `localhost`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn changes_state(method: &Method, headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    upgrade || !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Refuses requests with a foreign `Host`, and state-changing requests (and WebSocket
/// upgrades) from a foreign `Origin`, with 403.
pub async fn guard(State(browser): State<Browser>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host {
        if !browser.host_allowed(host) {
            return ApiError::Forbidden(format!(
                "this server does not answer for the host `{host}` (server.allowed_hosts)"
            ))
            .into_response();
        }
    }
    if changes_state(request.method(), headers) {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !browser.origin_allowed(origin, host) {
                return ApiError::Forbidden(format!(
                    "requests from the origin `{origin}` may not change anything here (server.allowed_origins)"
                ))
                .into_response();
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> Browser {
        Browser {
            loopback: true,
            ..Browser::default()
        }
    }

    #[test]
    fn a_loopback_server_answers_loopback_names_only() {
        let b = loopback();
        for host in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "app.localhost",
            "localhost",
        ] {
            assert!(b.host_allowed(host), "{host}");
        }
        for host in [
            "evil.example:8080",
            "10.0.0.5:8080",
            "localhost.evil.example",
        ] {
            assert!(!b.host_allowed(host), "{host}");
        }
        // Bound elsewhere, any name; configured, only those.
        assert!(Browser::default().host_allowed("orchion.internal:8080"));
        let named = Browser {
            allowed_hosts: vec!["orchion.example.com".into()],
            ..Browser::default()
        };
        assert!(named.host_allowed("orchion.example.com:443"));
        assert!(!named.host_allowed("other.example.com"));
    }

    #[test]
    fn only_the_servers_own_origin_or_a_configured_one_changes_state() {
        let b = Browser {
            allowed_origins: vec!["https://ops.example.com".into()],
            ..loopback()
        };
        assert!(b.origin_allowed("http://localhost:8080", Some("localhost:8080")));
        assert!(b.origin_allowed("https://ops.example.com", Some("localhost:8080")));
        assert!(!b.origin_allowed("https://evil.example", Some("localhost:8080")));
        assert!(!b.origin_allowed("null", Some("localhost:8080")));
        assert!(!b.origin_allowed("http://localhost:9999", Some("localhost:8080")));
        assert!(changes_state(&Method::POST, &HeaderMap::new()));
        assert!(!changes_state(&Method::GET, &HeaderMap::new()));
        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(changes_state(&Method::GET, &upgrade));
    }
}
