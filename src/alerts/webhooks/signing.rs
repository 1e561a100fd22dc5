//! Webhook delivery, pure parts: the signature a receiver verifies and the retry schedule.
//! No I/O here, so both are tested exactly.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `X-Vigil-Signature` value: `sha256=<hex HMAC-SHA-256 of "<timestamp>.<body>">`. The
/// timestamp is inside the MAC so a captured request cannot be replayed later with a fresh
/// `X-Vigil-Timestamp`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delay before the next attempt after `failures` failed attempts (1 = the first one failed):
/// exponential (`base * 2^(failures-1)`, at most `max`) with "equal jitter" — half the step
/// fixed, half random (`jitter` in `[0, 1)`), so endpoints that failed together do not retry
/// in lockstep, and a delay never drops below half its step.
pub fn backoff(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let step = base.saturating_mul(1u32 << exponent).min(max);
    let half = step / 2;
    let jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
    half + half.mul_f64(jitter)
}

/// Whether a response status is worth another attempt: server errors and 429 (the receiver
/// is overloaded or broken for now); other 4xx mean the request itself is refused.
pub fn retryable(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_implementation() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec-test-0123456789",
        //   b"1700000000." + b"{\"type\":\"alert\",\"seq\":7}", hashlib.sha256).hexdigest())'
        let body = br#"{"type":"alert","seq":7}"#;
        assert_eq!(
            signature(b"whsec-test-0123456789", 1_700_000_000, body),
            "sha256=84789fe7be7187db91849b2f0679c95d4d752d3af63dc6e27cc8271f9cc87be6"
        );
        assert_ne!(
            signature(b"whsec-test-0123456789", 1_700_000_001, body),
            signature(b"whsec-test-0123456789", 1_700_000_000, body)
        );
        assert_ne!(
            signature(b"another-secret-012345", 1_700_000_000, body),
            signature(b"whsec-test-0123456789", 1_700_000_000, body)
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_is_capped() {
        let base = Duration::from_millis(1000);
        let max = Duration::from_secs(30);
        for failures in 1..=5u32 {
            let step = base * 2u32.pow(failures - 1);
            assert_eq!(backoff(failures, base, max, 0.0), step / 2, "failures {failures}");
            assert_eq!(backoff(failures, base, max, 1.0), step, "failures {failures}");
            let mid = backoff(failures, base, max, 0.5);
            assert!(mid > step / 2 && mid < step, "failures {failures}: {mid:?}");
        }
        // The default policy (6 attempts, 1 s base) waits 15.5 to 31 s in all, about a minute
        // with request timeouts.
        let total: Duration = (1..6).map(|f| backoff(f, base, max, 1.0)).sum();
        assert_eq!(total, Duration::from_secs(31));
        assert_eq!(backoff(6, base, max, 1.0), max);
        assert_eq!(backoff(u32::MAX, base, max, 1.0), max, "no overflow");
        assert_eq!(backoff(0, base, max, 1.0), base, "0 failures is treated as the first");
        assert_eq!(backoff(3, base, max, 7.0), backoff(3, base, max, 1.0), "jitter is clamped");
    }

    #[test]
    fn only_server_errors_and_429_are_retried() {
        for status in [429, 500, 502, 503, 504] {
            assert!(retryable(status), "{status}");
        }
        for status in [200, 204, 301, 400, 401, 403, 404, 410, 413, 422] {
            assert!(!retryable(status), "{status}");
        }
    }
}
