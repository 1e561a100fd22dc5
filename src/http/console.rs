//! The console page, compiled into the binary: no CDN, works offline. Three files
//! (`console.html` markup, `console.css`, `console.js`) are joined once into one page whose one
//! inline script and one inline style run under a per-response nonce, so the page's CSP needs
//! no `'unsafe-inline'`.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

const MARKUP: &str = include_str!("console.html");
const STYLE: &str = include_str!("console.css");
const SCRIPT: &str = include_str!("console.js");

/// The page with its style and script in place (joined once).
static INDEX_HTML: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| MARKUP.replacen("/*CONSOLE_CSS*/", STYLE, 1).replacen("/*CONSOLE_JS*/", SCRIPT, 1));

/// The page's Content-Security-Policy for `nonce`.
pub fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; \
         img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `GET /`
pub async fn index() -> Response {
    let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let page = INDEX_HTML.replacen("<script>", &format!("<script nonce=\"{nonce}\">"), 1).replacen(
        "<style>",
        &format!("<style nonce=\"{nonce}\">"),
        1,
    );
    let mut response = page.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(&nonce)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_inline_script_and_style_carry_the_nonce_the_csp_names_and_nothing_is_unsafe_inline() {
        let response = index().await;
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_string();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let nonce = csp.split("'nonce-").nth(1).and_then(|r| r.split('\'').next()).unwrap().to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));
        assert!(html.contains(&format!("<style nonce=\"{nonce}\">")));
        assert!(!html.contains("<script>") && !html.contains("<style>"), "every inline block has the nonce");
        assert!(!html.contains(" style=\""), "no style attributes: the CSP would block them");
        assert!(!html.contains("/*CONSOLE_"), "the style and script are in place");
        assert!(html.contains("function renderBoard") && html.contains(".tile"), "both files were joined");
        assert_eq!(html.matches("<script").count(), 1, "one script");
        let again = index().await;
        assert_ne!(again.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap(), csp, "a nonce per response");
    }
}
