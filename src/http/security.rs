//! Security headers on every HTTP response: a Content-Security-Policy (the console page sets
//! its own, with a nonce; every other response gets a deny-all one), no MIME sniffing, no
//! referrer, and HSTS when HTTP is served over TLS.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The policy of every response that does not set its own: nothing loads, nothing frames it.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
/// One year, subdomains included.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// Whether to add HSTS (HTTP is served over TLS).
#[derive(Clone, Copy, Debug)]
pub struct SecurityHeaders {
    /// Add `Strict-Transport-Security`.
    pub hsts: bool,
}

/// The middleware: adds the headers after the handler ran.
pub async fn add_headers(State(settings): State<SecurityHeaders>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(DEFAULT_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if settings.hsts {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    response
}
