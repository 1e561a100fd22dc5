//! `POST /fhir/$stream`: NDJSON of Observations for high-rate gateways. Each line is mapped
//! and submitted in order as it arrives; each gets one answer line, in input order, sent once
//! its outcome is known (durable, refused, or retry). At most `stream_in_flight` lines wait
//! for their outcome: beyond that the request body is not read, and TCP slows the sender
//! (back-pressure, never loss). Lines longer than `stream_max_line_bytes` are answered 413 and
//! skipped to the next newline; after `stream_max_lines` the request ends with a 413 line.
//! Blank lines are skipped and get no answer. The client must read answers while it sends.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesOrdered};
use futures_util::{FutureExt, StreamExt};
use serde_json::json;

use super::http::{Feed, feed, json_body, writer};
use super::outcome::{FhirError, Issue, Severity, operation_outcome};
use super::{Answer, FhirFeed};
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::Authenticated;

/// Media type of the answer lines.
pub const NDJSON: &str = "application/fhir+ndjson";

/// `POST /fhir/$stream`.
pub async fn stream(
    State(state): State<AppState>,
    feed: Feed,
    auth: Result<Authenticated, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let prepared = (|| {
        let feed = self::feed(feed)?;
        let claims = writer(&state, auth, "fhir_stream")?;
        json_body(&headers, &[NDJSON, "application/x-ndjson", "application/ndjson"])?;
        Ok::<_, FhirError>((feed, claims))
    })();
    let (feed, claims) = match prepared {
        Ok(ok) => ok,
        Err(e) => return e.into_response(),
    };
    tracing::debug!(sender = %claims.sub, "fhir stream opened");
    let lines = Lines::new(feed, claims.sub, body.into_data_stream().boxed());
    let out = futures_util::stream::unfold(lines, |mut lines| async move {
        let line = lines.next_answer().await?;
        Some((Ok::<_, std::convert::Infallible>(line), lines))
    });
    let mut response = Response::new(Body::from_stream(out));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    response
}

type Input = BoxStream<'static, Result<Bytes, axum::Error>>;

struct Lines {
    feed: Arc<FhirFeed>,
    sender: String,
    input: Input,
    input_done: bool,
    /// Bytes of the line being read.
    buffer: Vec<u8>,
    /// Discarding an over-long line up to its newline.
    skipping: bool,
    /// Lines numbered (1-based) so far.
    numbered: usize,
    /// Split, not yet submitted: number and content (or why it has none).
    split: VecDeque<(usize, Result<Vec<u8>, FhirError>)>,
    /// Submitted, in input order.
    pending: FuturesOrdered<BoxFuture<'static, (usize, Answer)>>,
}

impl Lines {
    fn new(feed: Arc<FhirFeed>, sender: String, input: Input) -> Self {
        Lines {
            feed,
            sender,
            input,
            input_done: false,
            buffer: Vec::new(),
            skipping: false,
            numbered: 0,
            split: VecDeque::new(),
            pending: FuturesOrdered::new(),
        }
    }

    /// The next answer line, in input order; `None` at the end.
    async fn next_answer(&mut self) -> Option<Bytes> {
        let in_flight = self.feed.settings().stream_in_flight;
        loop {
            if self.pending.len() >= in_flight || (self.input_done && self.split.is_empty()) {
                let (line, answer) = self.pending.next().await?;
                return Some(render(line, &answer));
            }
            if let Some((line, content)) = self.split.pop_front() {
                let future = submit(Arc::clone(&self.feed), self.sender.clone(), line, content).await;
                self.pending.push_back(future);
                continue;
            }
            tokio::select! {
                biased;
                Some((line, answer)) = self.pending.next(), if !self.pending.is_empty() => {
                    return Some(render(line, &answer));
                }
                chunk = self.input.next() => match chunk {
                    Some(Ok(bytes)) => self.take(&bytes),
                    Some(Err(_)) => {
                        self.finish_input();
                        let n = self.number();
                        self.split.push_back((n, Err(FhirError::bad_request(Issue::error("structure", "", "request body unreadable")))));
                    }
                    None => {
                        let last = std::mem::take(&mut self.buffer);
                        if !self.skipping {
                            self.line(last);
                        }
                        self.finish_input();
                    }
                },
            }
        }
    }

    fn finish_input(&mut self) {
        self.input_done = true;
        self.buffer = Vec::new();
    }

    fn number(&mut self) -> usize {
        self.numbered += 1;
        self.numbered
    }

    /// Split a chunk into lines, keeping the bound on each.
    fn take(&mut self, bytes: &[u8]) {
        let limit = self.feed.settings().stream_max_line_bytes;
        let mut rest = bytes;
        while !self.input_done {
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                if !self.skipping {
                    self.buffer.extend_from_slice(rest);
                    if self.buffer.len() > limit {
                        self.buffer = Vec::new();
                        self.skipping = true;
                        let n = self.number();
                        self.split.push_back((n, Err(too_long(limit))));
                    }
                }
                return;
            };
            let (head, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.buffer.len() + head.len() > limit {
                self.buffer = Vec::new();
                let n = self.number();
                self.split.push_back((n, Err(too_long(limit))));
                continue;
            }
            let mut line = std::mem::take(&mut self.buffer);
            line.extend_from_slice(head);
            self.line(line);
        }
    }

    fn line(&mut self, line: Vec<u8>) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let max = self.feed.settings().stream_max_lines;
        if self.numbered >= max {
            let n = self.number();
            let issue = Issue::error(
                "too-costly",
                "",
                format!("more than {max} lines in one request; send the rest in another"),
            );
            self.split.push_back((n, Err(FhirError::new(StatusCode::PAYLOAD_TOO_LARGE, issue))));
            self.finish_input();
            return;
        }
        let n = self.number();
        self.split.push_back((n, Ok(line)));
    }
}

/// Map and submit one line (in order); the future answers it once its outcome is known.
async fn submit(
    feed: Arc<FhirFeed>,
    sender: String,
    line: usize,
    content: Result<Vec<u8>, FhirError>,
) -> BoxFuture<'static, (usize, Answer)> {
    let refused = |e: FhirError| {
        let answer = Answer { status: e.status, location: None, issues: e.issues };
        futures_util::future::ready((line, answer)).boxed()
    };
    let bytes = match content {
        Ok(bytes) => bytes,
        Err(e) => {
            feed.ingress().refused();
            return refused(e);
        }
    };
    let value = match feed.parse(&bytes) {
        Ok(v) => v,
        Err(e) => return refused(e),
    };
    let prepared = match feed.prepare(&sender, Some("Observation"), &value, None).await {
        Ok(p) => p,
        Err(e) => return refused(e),
    };
    let (submission, pending) = feed.submit(prepared).await;
    async move { (line, feed.answer(pending, submission.outcome().await)) }.boxed()
}

fn too_long(limit: usize) -> FhirError {
    FhirError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Issue::error("too-costly", "", format!("line longer than {limit} bytes; skipped")),
    )
}

/// `{"line": n, "status": 201, "location": "Observation/..", "outcome": {...}}` and a newline.
/// The outcome rides along when the line was refused or part of it was not used.
fn render(line: usize, answer: &Answer) -> Bytes {
    let mut out = json!({ "line": line, "status": answer.status.as_u16() });
    if let Some(location) = &answer.location {
        out["location"] = json!(location);
    }
    if answer.status.as_u16() >= 400 || answer.issues.iter().any(|i| i.severity != Severity::Information) {
        out["outcome"] = operation_outcome(&answer.issues);
    }
    let mut text = out.to_string();
    text.push('\n');
    Bytes::from(text)
}
