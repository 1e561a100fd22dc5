//! Hardening of the HTTP and WebSocket surface (issue 15): token checks (nbf, lifetime cap,
//! audience), a WebSocket token that expires mid-session, session caps, the failed-
//! authentication limit and its aggregated audit, security headers, `/metrics` behind a token,
//! and a slow-header client cut off while a normal request succeeds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use vigil::auth::{Auth, Role, TokenPolicy};
use vigil_actors::fakes::ManualClock;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    vigil::alerts::webhooks::install_tls_provider();
    reqwest::Client::new()
}

/// The frame that ends a session: its close code and reason.
async fn close_frame(ws: &mut Ws) -> (u16, String) {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return (u16::from(frame.code), frame.reason.to_string()),
                Some(Ok(_)) => continue,
                other => panic!("session ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_failing_nbf_lifetime_or_audience_are_refused_with_a_reason() {
    let dir = tempdir("tokens");
    let mut config = config(&dir);
    config.token_policy = TokenPolicy { max_lifetime_secs: 3600, audience: vec!["vigil-console".into()] };
    let server = vigil::app::start(&config).await.unwrap();
    let http = client();
    let key = vigil::crypto::load_or_create_key(&config.jwt_secret_file).unwrap();
    let same_key = |policy: TokenPolicy| Auth::hs256(&key).with_policy(policy);
    let get = |token: String| {
        let request = http.get(format!("http://{}/api/alerts", server.http_addr)).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, serde_json::from_str::<serde_json::Value>(&response.text().await.unwrap()).unwrap())
        }
    };

    let good = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::minutes(30));
    assert_eq!(get(good).await.0, 200);

    let too_long = same_key(config.token_policy.clone()).issue("rrt-1", Role::Rrt, vec![], time::Duration::hours(2));
    let (status, body) = get(too_long).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "token lifetime exceeds the maximum of 3600 seconds");

    let later = Arc::new(ManualClock(Mutex::new(time::OffsetDateTime::now_utc() + time::Duration::minutes(10))));
    let not_yet = same_key(config.token_policy.clone()).with_clock(later).issue(
        "rrt-1",
        Role::Rrt,
        vec![],
        time::Duration::minutes(30),
    );
    let (status, body) = get(not_yet).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "token not yet valid");

    let no_audience = same_key(TokenPolicy { max_lifetime_secs: 3600, audience: vec![] }).issue(
        "rrt-1",
        Role::Rrt,
        vec![],
        time::Duration::minutes(30),
    );
    let (status, body) = get(no_audience).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["reason"], "token audience not accepted");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_token_expires_refuses_commands_and_is_closed() {
    let dir = tempdir("ws-expiry");
    let clock = Arc::new(ManualClock(Mutex::new(time::OffsetDateTime::now_utc())));
    let server = vigil::app::start_with_token_clock(&config(&dir), clock.clone()).await.unwrap();
    let advance = |secs: i64| *clock.0.lock().unwrap() += time::Duration::seconds(secs);

    // A command after expiry: refused with the reason, then the session is closed.
    let token = server.auth.issue("rrt-1", Role::Rrt, vec!["ICU".into()], time::Duration::minutes(5));
    let mut ws = ws_connect(server.http_addr, &token).await;
    ws_send(&mut ws, json!({"type": "subscribe"})).await;
    ws_next(&mut ws, &["subscribed"], WAIT).await;
    advance(10 * 60);
    ws_send(&mut ws, json!({"type": "ack", "ref": "late", "alert_id": "any"})).await;
    let reply = ws_next(&mut ws, &["reply"], WAIT).await;
    assert_eq!((reply["ref"].as_str(), reply["ok"].as_bool()), (Some("late"), Some(false)), "{reply}");
    assert_eq!(reply["error"], "token expired");
    assert_eq!(close_frame(&mut ws).await, (4001, "token expired".to_string()));

    // A quiet session is closed by its timer when the token runs out, without any command.
    let token = server.auth.issue("rrt-2", Role::Rrt, vec!["ICU".into()], time::Duration::minutes(5));
    // One second of validity left, leeway included.
    advance(5 * 60 + vigil::auth::LEEWAY_SECS - 1);
    let mut ws = ws_connect(server.http_addr, &token).await;
    let opened = Instant::now();
    assert_eq!(close_frame(&mut ws).await, (4001, "token expired".to_string()));
    assert!(opened.elapsed() < Duration::from_secs(5), "closed at expiry, not later: {:?}", opened.elapsed());
    server.shutdown().await;
}

/// Connect, or the HTTP status of the refusal.
async fn try_ws(http: std::net::SocketAddr, token: &str) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(format!("ws://{http}/ws?token={token}")).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_are_capped_per_user_and_in_total() {
    let dir = tempdir("ws-caps");
    let mut config = config(&dir);
    config.http.max_websocket_sessions_per_user = 2;
    config.http.max_websocket_sessions = 3;
    let server = vigil::app::start(&config).await.unwrap();
    let token = |sub: &str| server.auth.issue(sub, Role::Nurse, vec!["ICU".into()], time::Duration::hours(1));
    let (a, b, c) = (token("nurse-a"), token("nurse-b"), token("nurse-c"));
    let a1 = try_ws(server.http_addr, &a).await.unwrap();
    let _a2 = try_ws(server.http_addr, &a).await.unwrap();
    assert_eq!(try_ws(server.http_addr, &a).await.err(), Some(429), "a third session of one user");
    let _b1 = try_ws(server.http_addr, &b).await.unwrap();
    assert_eq!(try_ws(server.http_addr, &c).await.err(), Some(503), "beyond the total");
    drop(a1);
    // The closed session's place is freed once the server sees the close.
    let deadline = Instant::now() + WAIT;
    loop {
        match try_ws(server.http_addr, &a).await {
            Ok(_) => break,
            Err(status) => assert!(Instant::now() < deadline, "the place was never freed: {status}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// `GET /healthz` on a new connection from `source` (a loopback address): the status line's
/// code, or `None` when the server closed the connection without answering.
async fn healthz_from(source: std::net::IpAddr, to: std::net::SocketAddr) -> Option<u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(to).await.ok()?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply)).await.ok()?.ok()?;
    std::str::from_utf8(reply.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_past_a_peers_rate_are_closed_at_once_and_other_peers_are_served() {
    let dir = tempdir("http-connect-rate");
    let mut config = config(&dir);
    config.http.connects_per_peer_per_sec = 2;
    config.http.connect_burst_per_peer = 10;
    let server = vigil::app::start(&config).await.unwrap();
    let churner: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    // 40 connections one after the other from one address: its burst of 10 is served, and one
    // more for each half second the loop takes (2 a second refill, measured: a loaded machine
    // is slower); the rest are closed before hyper reads a byte.
    let mut served = 0;
    let started = Instant::now();
    for _ in 0..40 {
        if healthz_from(churner, server.http_addr).await == Some(200) {
            served += 1;
        }
    }
    let allowed = 10 + (2.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!((10..=allowed.min(39)).contains(&served), "{served} of 40 connections served, {allowed} allowed");
    let limited = server.http_metrics.rate_limited.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(limited as usize, 40 - served, "every connection not served was counted as rate-limited");
    // Another address is not affected, and the refusals are on /metrics.
    let other: std::net::IpAddr = "127.0.0.10".parse().unwrap();
    assert_eq!(healthz_from(other, server.http_addr).await, Some(200));
    let metrics = client().get(format!("http://{}/metrics", server.http_addr)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.lines().any(|l| l == format!("vigil_http_connections_rate_limited_total {limited}")),
        "rate-limited connections not exported:\n{text}"
    );
    // The host's writeback threshold, which decides whether table flushes stall durable ACKs.
    if vigil::store::writeback::Threshold::of_host().is_some() {
        let bytes: Option<f64> =
            text.lines().find_map(|l| l.strip_prefix("vigil_host_writeback_background_bytes ")?.parse().ok());
        assert!(bytes.is_some_and(|b| b > 0.0), "writeback threshold not exported:\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_peer_and_audited_in_aggregate() {
    let dir = tempdir("auth-failures");
    let mut config = config(&dir);
    config.http.auth_failures_per_minute = 3;
    let server = vigil::app::start(&config).await.unwrap();
    let http = client();
    let url = format!("http://{}/api/alerts", server.http_addr);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = http.get(&url).bearer_auth("forged.token.here").send().await.unwrap();
        let status = response.status().as_u16();
        if status == 429 {
            let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=61).contains(&retry), "{retry}");
            let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["error"], "too_many_requests");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    server.shutdown().await;

    let store = open_store(&dir);
    let audit_key =
        vigil::audit::AuditKey::load_or_create(&vigil::config::default_keys_dir(&dir).join("audit.key")).unwrap();
    let audit = vigil::audit::AuditLog::open(store.database(), audit_key).unwrap();
    let records: Vec<_> = audit
        .since(time::OffsetDateTime::UNIX_EPOCH, 1000)
        .into_iter()
        .filter(|r| r.action == "authenticate")
        .collect();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["denied: invalid token (count 1)", "denied: too many failed attempts (count 4)"],
        "one record when the window opens, one with the count of the rest"
    );
    assert!(records.iter().all(|r| r.target == "peer 127.0.0.1"), "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_security_headers_and_metrics_can_require_a_token() {
    let dir = tempdir("headers");
    let mut config = config(&dir);
    config.http.metrics_require_auth = true;
    let server = vigil::app::start(&config).await.unwrap();
    let http = client();
    let admin = server.auth.issue("admin-1", Role::Admin, vec!["*".into()], time::Duration::hours(1));
    for path in ["/", "/healthz", "/api/alerts", "/metrics", "/no-such-page"] {
        let response = http.get(format!("http://{}{path}", server.http_addr)).send().await.unwrap();
        let headers = response.headers();
        let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(header("content-security-policy").contains("frame-ancestors 'none'"), "{path}");
        assert!(!header("content-security-policy").contains("unsafe-inline"), "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        assert_eq!(header("strict-transport-security"), "", "no HSTS over plain HTTP");
        if path == "/" {
            assert!(header("content-security-policy").contains("script-src 'nonce-"), "{path}");
        }
    }
    let metrics = format!("http://{}/metrics", server.http_addr);
    assert_eq!(http.get(&metrics).send().await.unwrap().status().as_u16(), 401);
    let response = http.get(&metrics).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().await.unwrap().contains("vigil_alert_last_seq"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_headers_a_byte_at_a_time_is_cut_off_while_a_normal_request_succeeds() {
    let dir = tempdir("slowloris");
    let mut config = config(&dir);
    config.http.header_read_timeout = Duration::from_secs(1);
    let server = vigil::app::start(&config).await.unwrap();
    let addr = server.http_addr;

    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Padding: {}\r\n\r\n", "p".repeat(40));
        let (mut read, mut write) = stream.split();
        let drip = async {
            for byte in head.as_bytes() {
                if write.write_all(&[*byte]).await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            true
        };
        let mut response = Vec::new();
        let closed = read.read_to_end(&mut response);
        tokio::select! {
            finished = drip => panic!("the whole head was sent ({finished}) without the server cutting it off"),
            _ = closed => {}
        }
        (started.elapsed(), String::from_utf8_lossy(&response).to_string())
    });
    // Meanwhile, a normal request is served.
    let response = client().get(format!("http://{addr}/healthz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");

    let (elapsed, response) = tokio::time::timeout(WAIT, slow).await.unwrap().unwrap();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4), "cut off after {elapsed:?}");
    assert!(!response.contains(" 200 "), "the slow request was not served: {response}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_with_hsts_and_a_plaintext_request_gets_no_answer() {
    let dir = tempdir("https");
    let (ca, cert, key) = test_certificates(&dir);
    let mut config = config(&dir);
    config.http.tls = Some(vigil::config::TlsFileConfig { cert_file: cert, key_file: key });
    let server = vigil::app::start(&config).await.unwrap();

    let mut tls = tls_connect(&ca, server.http_addr).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tls.read_to_end(&mut response)).await.unwrap().unwrap();
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(response.contains("strict-transport-security: max-age=31536000; includesubdomains"), "{response}");

    let mut plain = tokio::net::TcpStream::connect(server.http_addr).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await.unwrap();
    assert!(!String::from_utf8_lossy(&answer).contains("200"), "plaintext is not served on the TLS port");
    server.shutdown().await;
}
