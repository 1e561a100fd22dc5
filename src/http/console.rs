//! The console page, compiled into the binary: no CDN, works offline.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("console.html");

/// `GET /`
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::HeaderName::from_static("content-security-policy"),
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        INDEX_HTML,
    )
}
