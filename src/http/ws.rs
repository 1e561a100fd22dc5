//! `/ws`: the console's alert stream (schemas/ws/). The token is checked before the upgrade.
//! After `subscribe`, a session gets either the alert changes it missed (`since`) or a
//! snapshot of open alerts, then live changes. Every alert frame carries the change's sequence
//! number; a session that lags the hub is sent `resync` and backfilled from the store, so a
//! client never misses a change silently.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use vigil_actors::{Alert, SequencedAlert};

use super::AppState;
use super::api::{act_on_alert, patient_summary, role_name, sees};
use crate::auth::{AuthError, Claims};
use vigil_actors::AlertAction;

/// Largest client frame accepted.
const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Changes read from the store per backfill page.
const BACKFILL_PAGE: usize = 500;
/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// `?token=`
#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Frames a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Subscribe {
        #[serde(default)]
        units: Vec<String>,
        #[serde(default)]
        patients: Vec<String>,
        #[serde(default)]
        since: Option<u64>,
    },
    Ping,
    Ack {
        #[serde(rename = "ref")]
        reference: String,
        alert_id: String,
    },
    Resolve {
        #[serde(rename = "ref")]
        reference: String,
        alert_id: String,
        reason: String,
    },
    Comment {
        #[serde(rename = "ref")]
        reference: String,
        alert_id: String,
        text: String,
    },
    Watch {
        patient: String,
    },
    Unwatch,
}

/// Frames the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Alert {
        seq: u64,
        notify: bool,
        alert: &'a Alert,
    },
    Snapshot {
        seq: u64,
        alerts: Vec<&'a Alert>,
    },
    Subscribed {
        units: &'a [String],
        patients: &'a [String],
        seq: u64,
    },
    Resync {
        since: u64,
        seq: u64,
    },
    Heartbeat {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    Reply {
        #[serde(rename = "ref")]
        reference: &'a str,
        seq: u64,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        alert: Option<&'a Alert>,
    },
    Error {
        code: &'a str,
        message: String,
        seq: u64,
    },
    Patient {
        seq: u64,
        summary: &'a vigil_actors::PatientSummary,
    },
    Vitals {
        seq: u64,
        patient: &'a str,
        observations: &'a [vigil_actors::Observation],
    },
}

fn token(query: &TokenQuery, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = &query.token {
        return Some(t.clone());
    }
    crate::auth::bearer(headers).map(str::to_string)
}

/// `GET /ws`: verify the token, then upgrade.
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let claims = match token(&query, &headers).ok_or(AuthError::Missing).and_then(|t| state.auth.verify(&t)) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::info!(reason = %e, "websocket refused");
            return (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({ "error": e.to_string() })))
                .into_response();
        }
    };
    ws.max_message_size(MAX_CLIENT_FRAME).on_upgrade(move |socket| async move {
        let sub = claims.sub.clone();
        if let Err(e) = Session::new(socket, state, claims).run().await {
            tracing::debug!(user = %sub, error = %e, "websocket session ended");
        }
    })
}

struct Session {
    socket: WebSocket,
    state: AppState,
    claims: Claims,
    units: HashSet<String>,
    patients: HashSet<String>,
    /// The patient open in this console, with its live feed.
    watching: Option<(String, tokio::sync::broadcast::Receiver<std::sync::Arc<crate::alerts::live::LiveObservations>>)>,
    /// Subscribed with `*` on a token that allows every unit.
    all_units: bool,
    last: u64,
    subscribed: bool,
}

type SessionResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

impl Session {
    fn new(socket: WebSocket, state: AppState, claims: Claims) -> Self {
        Session {
            socket,
            state,
            claims,
            units: HashSet::new(),
            patients: HashSet::new(),
            watching: None,
            all_units: false,
            last: 0,
            subscribed: false,
        }
    }

    async fn send(&mut self, frame: &ServerFrame<'_>) -> SessionResult {
        let text = serde_json::to_string(frame)?;
        self.socket.send(Message::Text(text.into())).await?;
        Ok(())
    }

    async fn run(mut self) -> SessionResult {
        let _open = self.state.sessions.clone();
        // Subscribe to the hub first: anything committed after this point arrives live, and
        // anything before it is in the store; duplicates are dropped by sequence number.
        let mut live = self.state.hub.subscribe();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        let mut shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Going away (1001): the console reconnects with `since` and misses nothing.
                    let close = axum::extract::ws::CloseFrame { code: 1001, reason: "server shutting down".into() };
                    let _ = self.socket.send(Message::Close(Some(close))).await;
                    return Ok(());
                }
                incoming = self.socket.recv() => {
                    let Some(Ok(msg)) = incoming else { return Ok(()) };
                    match msg {
                        Message::Text(text) => self.on_client_frame(&text).await?,
                        Message::Close(_) => return Ok(()),
                        _ => {}
                    }
                }
                change = live.recv(), if self.subscribed => match change {
                    Ok(change) => self.forward(&change).await?,
                    Err(RecvError::Lagged(_)) => {
                        let since = self.last;
                        self.send(&ServerFrame::Resync { since, seq: since }).await?;
                        self.backfill(since).await?;
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
                update = next_live(&mut self.watching) => {
                    if let Some(update) = update {
                        let seq = self.last;
                        self.send(&ServerFrame::Vitals { seq, patient: &update.patient.0, observations: &update.observations }).await?;
                    }
                }
                _ = heartbeat.tick() => {
                    let seq = self.last;
                    self.send(&ServerFrame::Heartbeat { seq }).await?;
                }
            }
        }
    }

    async fn on_client_frame(&mut self, text: &str) -> SessionResult {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let seq = self.last;
                return self.send(&ServerFrame::Error { code: "bad_request", message: e.to_string(), seq }).await;
            }
        };
        let by = self.claims.sub.clone();
        let (reference, alert_id, action) = match frame {
            ClientFrame::Ping => {
                let seq = self.last;
                return self.send(&ServerFrame::Pong { seq }).await;
            }
            ClientFrame::Subscribe { units, patients, since } => return self.subscribe(units, patients, since).await,
            ClientFrame::Watch { patient } => return self.watch(patient).await,
            ClientFrame::Unwatch => {
                self.watching = None;
                return Ok(());
            }
            ClientFrame::Ack { reference, alert_id } => (reference, alert_id, AlertAction::Acknowledge { by }),
            ClientFrame::Resolve { reference, alert_id, reason } => {
                (reference, alert_id, AlertAction::Resolve { by, reason })
            }
            ClientFrame::Comment { reference, alert_id, text } => {
                (reference, alert_id, AlertAction::Comment { by, text })
            }
        };
        let result = act_on_alert(&self.state, &self.claims, &alert_id, action).await;
        let seq = self.last;
        match &result {
            Ok(change) => {
                let frame = ServerFrame::Reply {
                    reference: &reference,
                    seq,
                    ok: true,
                    error: None,
                    alert: Some(&change.alert),
                };
                self.send(&frame).await
            }
            Err(e) => {
                let frame = ServerFrame::Reply {
                    reference: &reference,
                    seq,
                    ok: false,
                    error: Some(e.to_string()),
                    alert: None,
                };
                self.send(&frame).await
            }
        }
    }

    async fn watch(&mut self, patient: String) -> SessionResult {
        // Subscribe before reading the summary so no value falls between the two.
        let live = self.state.live.subscribe();
        match patient_summary(&self.state, &self.claims, &patient).await {
            Ok(summary) => {
                self.watching = Some((patient, live));
                let seq = self.last;
                self.send(&ServerFrame::Patient { seq, summary: &summary }).await
            }
            Err(e) => {
                let seq = self.last;
                self.send(&ServerFrame::Error { code: "not_found", message: e.to_string(), seq }).await
            }
        }
    }

    async fn subscribe(&mut self, units: Vec<String>, patients: Vec<String>, since: Option<u64>) -> SessionResult {
        let units: Vec<String> = if units.is_empty() { self.claims.units.clone() } else { units };
        if let Some(denied) = units.iter().find(|u| !self.claims.may_see(u)) {
            tracing::info!(user = %self.claims.sub, unit = %denied, "subscription to a unit outside the token refused");
            let message = format!("unit {denied} is not in your token");
            self.state.audit.record(
                &self.claims.sub,
                role_name(self.claims.role),
                "subscribe",
                denied,
                "denied: unit not in token",
            );
            let seq = self.last;
            return self.send(&ServerFrame::Error { code: "forbidden", message, seq }).await;
        }
        self.state.audit.record(&self.claims.sub, role_name(self.claims.role), "subscribe", &units.join(","), "ok");
        self.units = units.iter().cloned().collect();
        self.patients = patients.iter().cloned().collect();
        self.all_units = units.iter().any(|u| u == "*");
        self.subscribed = true;
        match since {
            Some(since) => {
                self.last = since;
                self.backfill(since).await?;
            }
            None => {
                let seq = self.state.alerts.last_seq();
                let open = self.state.alerts.open_alerts().await?;
                let alerts: Vec<&Alert> = open.iter().map(|c| &c.alert).filter(|a| self.sees(a)).collect();
                let frame = ServerFrame::Snapshot { seq, alerts };
                let text = serde_json::to_string(&frame)?;
                self.socket.send(Message::Text(text.into())).await?;
                self.last = seq;
            }
        }
        let seq = self.last;
        self.send(&ServerFrame::Subscribed { units: &units, patients: &patients, seq }).await
    }

    /// Subscribed to the alert's unit (or a unit it escalated to, or its patient), and the
    /// token allows it.
    fn sees(&self, alert: &Alert) -> bool {
        if !sees(&self.claims, alert) {
            return false;
        }
        let role = role_name(self.claims.role);
        self.all_units
            || self.patients.contains(&alert.patient.id.0)
            || alert.visible_to(|u| self.units.contains(u), role)
    }

    async fn backfill(&mut self, since: u64) -> SessionResult {
        let mut after = since;
        loop {
            let page = self.state.alerts.alerts_after(after, BACKFILL_PAGE).await?;
            let Some(last) = page.last().map(|c| c.seq) else { return Ok(()) };
            for change in &page {
                self.forward(change).await?;
            }
            after = last;
            if page.len() < BACKFILL_PAGE {
                return Ok(());
            }
        }
    }

    async fn forward(&mut self, change: &SequencedAlert) -> SessionResult {
        if change.seq <= self.last {
            return Ok(());
        }
        self.last = change.seq;
        if !self.sees(&change.alert) {
            return Ok(());
        }
        self.send(&ServerFrame::Alert { seq: change.seq, notify: change.notify, alert: &change.alert }).await
    }
}

/// The next live update for the watched patient; pending forever when none is watched.
/// Lagging drops updates (the store has them), never the session.
async fn next_live(
    watching: &mut Option<(
        String,
        tokio::sync::broadcast::Receiver<std::sync::Arc<crate::alerts::live::LiveObservations>>,
    )>,
) -> Option<std::sync::Arc<crate::alerts::live::LiveObservations>> {
    let Some((patient, rx)) = watching.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(update) if update.patient.0 == *patient => return Some(update),
            Ok(_) | Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}
