//! `/ws`: the console's alert stream (schemas/ws/). The WebSocket adapter of the console
//! service (`crate::console`): the token is checked before the upgrade by the one claims
//! extractor, and again before every command; the session closes (4001) when the token
//! expires. After `subscribe`, a session gets either the alert changes it missed (`since`) or
//! a snapshot of open alerts, then live changes. Every alert frame carries the change's
//! sequence number; a session that lags the hub is sent `resync` and backfilled from the
//! store, so a client never misses a change silently. Sessions are capped per user and in
//! total, and each one's outbound side is bounded (write buffer, send deadline).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::{State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use vigil_actors::{Alert, SequencedAlert};

use super::AppState;
use super::error::ApiError;
use super::extract::Authenticated;
use crate::auth::Claims;
use crate::console::{
    Assignment, AssignmentRequest, BoardScope, ConsoleAction, ReceiptKind, Route, Silence, SilenceRequest, role_name,
    sees,
};

/// Largest client frame accepted.
const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Changes read from the store per backfill page.
const BACKFILL_PAGE: usize = 500;
/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Bytes a session may have queued for a client that does not read; beyond, sends fail and
/// the session ends (the console reconnects with `since`).
const MAX_OUTBOUND_BUFFER: usize = 1 << 20;
/// Longest a single frame may take to reach the socket before the session is dropped as a
/// slow consumer.
const SEND_DEADLINE: Duration = Duration::from_secs(10);
/// Close code when the token has expired (application range 4000-4999).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// Open WebSocket sessions, counted per user and in total, each under its cap.
pub struct SessionRegistry {
    per_user: usize,
    total: usize,
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open session's place in the registry; dropping it frees the place.
pub struct SessionSlot {
    registry: Arc<SessionRegistry>,
    user: String,
}

impl SessionRegistry {
    /// At most `per_user` sessions per token subject and `total` in all.
    pub fn new(per_user: usize, total: usize) -> Arc<Self> {
        Arc::new(SessionRegistry { per_user, total, open: std::sync::Mutex::default() })
    }

    /// A place for a session of `user`, or the refusal.
    pub fn open(self: &Arc<Self>, user: &str) -> Result<SessionSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.values().sum::<usize>() >= self.total {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                format!("the server holds its maximum of {} console sessions", self.total),
            ));
        }
        let mine = open.entry(user.to_string()).or_default();
        if *mine >= self.per_user {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!("at most {} console sessions per user; close one first", self.per_user),
            ));
        }
        *mine += 1;
        Ok(SessionSlot { registry: Arc::clone(self), user: user.to_string() })
    }

    /// Sessions open now.
    pub fn count(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).values().sum()
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
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
    Silence {
        #[serde(rename = "ref")]
        reference: String,
        patient: String,
        #[serde(default)]
        alert_id: Option<String>,
        minutes: i64,
        reason: String,
    },
    EndSilence {
        #[serde(rename = "ref")]
        reference: String,
        silence_id: String,
    },
    Receipt {
        alert_id: String,
        kind: ReceiptKind,
    },
    Assign {
        #[serde(rename = "ref")]
        reference: String,
        nurse: String,
        unit: String,
        beds: Vec<String>,
        hours: i64,
    },
}

/// Frames the server sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerFrame<'a> {
    Alert {
        seq: u64,
        notify: bool,
        alert: &'a Alert,
        route: Route,
    },
    Snapshot {
        seq: u64,
        alerts: Vec<&'a Alert>,
        routes: std::collections::BTreeMap<&'a str, Route>,
    },
    Subscribed {
        units: &'a [String],
        patients: &'a [String],
        seq: u64,
        user: &'a str,
        role: &'a str,
        assignments: &'a [Assignment],
        rule_titles: std::collections::BTreeMap<String, String>,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        silence: Option<&'a Silence>,
        #[serde(skip_serializing_if = "Option::is_none")]
        assignment: Option<&'a Assignment>,
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
    /// Every open silence the session sees (after `subscribe`, and again after a lag).
    Silences {
        seq: u64,
        silences: &'a [Silence],
    },
    /// A silence started or ended.
    Silence {
        seq: u64,
        silence: &'a Silence,
    },
    /// Every occupied bed the session shows, alert or not (after `subscribe`, and again after
    /// a lag); `truncated` when some were left out.
    Census {
        seq: u64,
        beds: &'a [vigil_actors::CensusBed],
        truncated: bool,
    },
    /// A patient is in a bed the session shows (admitted, moved in, or their score changed).
    Bed {
        seq: u64,
        bed: &'a vigil_actors::CensusBed,
    },
    /// A patient left a bed the session showed (discharged, moved to a unit it does not show).
    BedLeft {
        seq: u64,
        patient: &'a str,
        unit: &'a str,
    },
    /// An alert's delivery and read receipts changed.
    Receipts {
        seq: u64,
        alert_id: &'a str,
        receipts: &'a [crate::console::assignments::Receipt],
    },
}

/// `GET /ws`: the extractor verifies the token; a place under the session caps; upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    ws: WebSocketUpgrade,
) -> Response {
    let slot = match state.ws_sessions.open(&claims.sub) {
        Ok(slot) => slot,
        Err(refused) => {
            tracing::info!(user = %claims.sub, reason = %refused, "websocket refused");
            return refused.into_response();
        }
    };
    ws.max_message_size(MAX_CLIENT_FRAME).max_write_buffer_size(MAX_OUTBOUND_BUFFER).on_upgrade(
        move |socket| async move {
            let _slot = slot;
            let sub = claims.sub.clone();
            if let Err(e) = Session::new(socket, state, claims).run().await {
                tracing::debug!(user = %sub, error = %e, "websocket session ended");
            }
        },
    )
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
        self.send_message(Message::Text(text.into())).await
    }

    /// Send within [`SEND_DEADLINE`]: a client that stops reading ends its session rather
    /// than holding it (and its memory) forever.
    async fn send_message(&mut self, message: Message) -> SessionResult {
        match tokio::time::timeout(SEND_DEADLINE, self.socket.send(message)).await {
            Ok(sent) => Ok(sent?),
            Err(_) => {
                tracing::info!(user = %self.claims.sub, "websocket client too slow; session closed");
                Err("send deadline exceeded".into())
            }
        }
    }

    /// Close with [`CLOSE_TOKEN_EXPIRED`]: the console asks its user for a new token.
    async fn close_expired(&mut self) -> SessionResult {
        tracing::info!(user = %self.claims.sub, "websocket session closed: token expired");
        let close = CloseFrame { code: CLOSE_TOKEN_EXPIRED, reason: "token expired".into() };
        let _ = self.send_message(Message::Close(Some(close))).await;
        Ok(())
    }

    async fn run(mut self) -> SessionResult {
        let _open = self.state.sessions.clone();
        // Subscribe to the hub first: anything committed after this point arrives live, and
        // anything before it is in the store; duplicates are dropped by sequence number.
        let mut live = self.state.hub.subscribe();
        let mut silences = self.state.console.silence_book().subscribe();
        let mut receipts = self.state.console.assignment_book().subscribe();
        let mut census = self.state.console.census_changes();
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        let shutdown = self.state.shutdown.clone();
        let expiry = tokio::time::sleep(Duration::from_secs(self.state.auth.secs_left(&self.claims)));
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                () = &mut expiry => return self.close_expired().await,
                () = shutdown.cancelled() => {
                    // Going away (1001): the console reconnects with `since` and misses nothing.
                    let close = axum::extract::ws::CloseFrame { code: 1001, reason: "server shutting down".into() };
                    let _ = self.send_message(Message::Close(Some(close))).await;
                    return Ok(());
                }
                incoming = self.socket.recv() => {
                    let Some(Ok(msg)) = incoming else { return Ok(()) };
                    let flow = match msg {
                        Message::Text(text) => self.on_client_frame(&text).await?,
                        Message::Close(_) => return Ok(()),
                        _ => Flow::Continue,
                    };
                    if flow == Flow::Close {
                        return self.close_expired().await;
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
                change = silences.recv(), if self.subscribed => match change {
                    Ok(silence) => {
                        if self.sees_silence(&silence) {
                            let seq = self.last;
                            self.send(&ServerFrame::Silence { seq, silence: &silence }).await?;
                        }
                    }
                    Err(RecvError::Lagged(_)) => self.send_silences().await?,
                    Err(RecvError::Closed) => return Ok(()),
                },
                change = receipts.recv(), if self.subscribed => match change {
                    Ok(change) => {
                        if self.claims.may_see(&change.unit) && (self.all_units || self.units.contains(&change.unit)) {
                            let seq = self.last;
                            let frame = ServerFrame::Receipts { seq, alert_id: &change.alert_id, receipts: &change.receipts };
                            self.send(&frame).await?;
                        }
                    }
                    // Receipts are informational: a lagging session shows the next ones.
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Ok(()),
                },
                change = census.recv(), if self.subscribed => match change {
                    Ok(change) => self.forward_census(&change).await?,
                    Err(RecvError::Lagged(_)) => self.send_census().await?,
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

    async fn on_client_frame(&mut self, text: &str) -> Result<Flow, Box<dyn std::error::Error + Send + Sync>> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let seq = self.last;
                self.send(&ServerFrame::Error { code: "bad_request", message: e.to_string(), seq }).await?;
                return Ok(Flow::Continue);
            }
        };
        // The token may have expired since the upgrade: nothing acts on it any more.
        if let Err(expired) = self.state.auth.check_time(&self.claims) {
            let seq = self.last;
            let message = expired.to_string();
            match frame.reference() {
                Some(reference) => {
                    let frame = ServerFrame::Reply {
                        reference,
                        seq,
                        ok: false,
                        error: Some(message),
                        alert: None,
                        silence: None,
                        assignment: None,
                    };
                    self.send(&frame).await?;
                }
                None => self.send(&ServerFrame::Error { code: "unauthorized", message, seq }).await?,
            }
            return Ok(Flow::Close);
        }
        let (reference, alert_id, action) = match frame {
            ClientFrame::Ping => {
                let seq = self.last;
                self.send(&ServerFrame::Pong { seq }).await?;
                return Ok(Flow::Continue);
            }
            ClientFrame::Subscribe { units, patients, since } => {
                self.subscribe(units, patients, since).await?;
                return Ok(Flow::Continue);
            }
            ClientFrame::Watch { patient } => {
                self.watch(patient).await?;
                return Ok(Flow::Continue);
            }
            ClientFrame::Unwatch => {
                self.watching = None;
                return Ok(Flow::Continue);
            }
            ClientFrame::Silence { reference, patient, alert_id, minutes, reason } => {
                let request = SilenceRequest { patient, alert_id, minutes, reason };
                let result = self.state.console.silence(&self.claims, request).await;
                self.reply_silence(&reference, result).await?;
                return Ok(Flow::Continue);
            }
            ClientFrame::Receipt { alert_id, kind } => {
                if let Err(e) = self.state.console.receipt(&self.claims, &alert_id, kind).await {
                    let seq = self.last;
                    self.send(&ServerFrame::Error { code: "not_found", message: e.to_string(), seq }).await?;
                }
                return Ok(Flow::Continue);
            }
            ClientFrame::Assign { reference, nurse, unit, beds, hours } => {
                let result =
                    self.state.console.assign(&self.claims, AssignmentRequest { nurse, unit, beds, hours }).await;
                let seq = self.last;
                let frame = match &result {
                    Ok(assignment) => ServerFrame::Reply {
                        reference: &reference,
                        seq,
                        ok: true,
                        error: None,
                        alert: None,
                        silence: None,
                        assignment: Some(assignment),
                    },
                    Err(e) => ServerFrame::Reply {
                        reference: &reference,
                        seq,
                        ok: false,
                        error: Some(e.to_string()),
                        alert: None,
                        silence: None,
                        assignment: None,
                    },
                };
                self.send(&frame).await?;
                return Ok(Flow::Continue);
            }
            ClientFrame::EndSilence { reference, silence_id } => {
                let result = self.state.console.end_silence(&self.claims, &silence_id).await;
                self.reply_silence(&reference, result).await?;
                return Ok(Flow::Continue);
            }
            ClientFrame::Ack { reference, alert_id } => (reference, alert_id, ConsoleAction::Acknowledge),
            ClientFrame::Resolve { reference, alert_id, reason } => {
                (reference, alert_id, ConsoleAction::Resolve { reason })
            }
            ClientFrame::Comment { reference, alert_id, text } => {
                (reference, alert_id, ConsoleAction::Comment { text })
            }
        };
        let result = self.state.console.act(&self.claims, &alert_id, action).await;
        let seq = self.last;
        let frame = match &result {
            Ok(change) => ServerFrame::Reply {
                reference: &reference,
                seq,
                ok: true,
                error: None,
                alert: Some(&change.alert),
                silence: None,
                assignment: None,
            },
            Err(e) => ServerFrame::Reply {
                reference: &reference,
                seq,
                ok: false,
                error: Some(e.to_string()),
                alert: None,
                silence: None,
                assignment: None,
            },
        };
        self.send(&frame).await?;
        Ok(Flow::Continue)
    }

    async fn reply_silence(
        &mut self,
        reference: &str,
        result: Result<Silence, crate::console::ConsoleError>,
    ) -> SessionResult {
        let seq = self.last;
        let frame = match &result {
            Ok(silence) => ServerFrame::Reply {
                reference,
                seq,
                ok: true,
                error: None,
                alert: None,
                silence: Some(silence),
                assignment: None,
            },
            Err(e) => ServerFrame::Reply {
                reference,
                seq,
                ok: false,
                error: Some(e.to_string()),
                alert: None,
                silence: None,
                assignment: None,
            },
        };
        self.send(&frame).await
    }

    /// Whether the session shows `silence`: the token allows its unit and the subscription
    /// covers it.
    fn sees_silence(&self, silence: &Silence) -> bool {
        let role = role_name(self.claims.role);
        silence.visible_to(&self.claims)
            && (self.all_units
                || self.units.contains(&silence.unit)
                || self.patients.contains(&silence.patient)
                || silence.escalated_units.iter().any(|u| self.units.contains(u))
                || silence.escalated_roles.iter().any(|r| r == role))
    }

    async fn send_silences(&mut self) -> SessionResult {
        let open: Vec<Silence> =
            self.state.console.silences_for(&self.claims).into_iter().filter(|s| self.sees_silence(s)).collect();
        let seq = self.last;
        self.send(&ServerFrame::Silences { seq, silences: &open }).await
    }

    fn board_scope(&self) -> BoardScope<'_> {
        BoardScope { all: self.all_units, units: &self.units, patients: &self.patients }
    }

    async fn send_census(&mut self) -> SessionResult {
        let (beds, truncated) = self.state.console.census(&self.claims, &self.board_scope());
        let seq = self.last;
        self.send(&ServerFrame::Census { seq, beds: &beds, truncated }).await
    }

    /// A bed the session shows, or its leaving one it showed (a move to a unit it does not
    /// show is a leaving).
    async fn forward_census(&mut self, change: &vigil_actors::CensusChange) -> SessionResult {
        use vigil_actors::CensusChange;
        let seq = self.last;
        let scope = self.board_scope();
        let frame = match change {
            CensusChange::Bed { bed, .. } if scope.shows(&self.claims, &bed.unit, &bed.patient.0) => {
                ServerFrame::Bed { seq, bed }
            }
            CensusChange::Bed { bed, left_unit: Some(left) } if scope.shows(&self.claims, left, &bed.patient.0) => {
                ServerFrame::BedLeft { seq, patient: &bed.patient.0, unit: left }
            }
            CensusChange::Left { patient, unit } if scope.shows(&self.claims, unit, &patient.0) => {
                ServerFrame::BedLeft { seq, patient: &patient.0, unit }
            }
            _ => return Ok(()),
        };
        self.send(&frame).await
    }

    async fn watch(&mut self, patient: String) -> SessionResult {
        // Subscribe before reading the summary so no value falls between the two.
        let live = self.state.live.subscribe();
        match self.state.console.patient_summary(&self.claims, &patient).await {
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
        let units = match self.state.console.subscription_units(&self.claims, units) {
            Ok(units) => units,
            Err(refused) => {
                let seq = self.last;
                return self.send(&ServerFrame::Error { code: "forbidden", message: refused.to_string(), seq }).await;
            }
        };
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
                let log = self.state.console.alert_log();
                let seq = log.last_seq();
                let open = log.open_alerts().await?;
                let alerts: Vec<&Alert> = open.iter().map(|c| &c.alert).filter(|a| self.sees(a)).collect();
                let console = &self.state.console;
                let routes = alerts.iter().map(|a| (a.id.0.as_str(), console.route(a))).collect();
                let frame = ServerFrame::Snapshot { seq, alerts, routes };
                let text = serde_json::to_string(&frame)?;
                self.send_message(Message::Text(text.into())).await?;
                self.last = seq;
            }
        }
        self.send_silences().await?;
        self.send_census().await?;
        let seq = self.last;
        let assignments = self.state.console.assignments_for(&self.claims);
        let (user, role) = (self.claims.sub.clone(), role_name(self.claims.role));
        let rule_titles = self.state.rules.rules().iter().map(|r| (r.id.clone(), r.title.clone())).collect();
        let frame = ServerFrame::Subscribed {
            units: &units,
            patients: &patients,
            seq,
            user: &user,
            role,
            assignments: &assignments,
            rule_titles,
        };
        self.send(&frame).await
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
            let page = self.state.console.alert_log().alerts_after(after, BACKFILL_PAGE).await?;
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
        let route = self.state.console.route(&change.alert);
        self.send(&ServerFrame::Alert { seq: change.seq, notify: change.notify, alert: &change.alert, route }).await
    }
}

/// What the session does after a client frame.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The token expired: close with 4001.
    Close,
}

impl ClientFrame {
    /// The `ref` a reply must echo, for commands that get replies.
    fn reference(&self) -> Option<&str> {
        match self {
            ClientFrame::Ack { reference, .. }
            | ClientFrame::Resolve { reference, .. }
            | ClientFrame::Comment { reference, .. }
            | ClientFrame::Silence { reference, .. }
            | ClientFrame::EndSilence { reference, .. }
            | ClientFrame::Assign { reference, .. } => Some(reference),
            _ => None,
        }
    }
}

/// Parse one client frame as a session does, and give the reference it would answer under:
/// for the fuzz targets (`fuzz/`, `vigil::fuzz`), which must reach the same parser.
pub fn parse_client_frame(text: &str) -> Result<Option<String>, serde_json::Error> {
    serde_json::from_str::<ClientFrame>(text).map(|frame| frame.reference().map(str::to_owned))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_caps_sessions_per_user_and_in_all_and_frees_a_place_on_drop() {
        let registry = SessionRegistry::new(2, 3);
        let a1 = registry.open("a").unwrap();
        let _a2 = registry.open("a").unwrap();
        let refused = registry.open("a").err().unwrap();
        assert_eq!((refused.status(), refused.code()), (StatusCode::TOO_MANY_REQUESTS, "too_many_sessions"));
        let _b1 = registry.open("b").unwrap();
        let full = registry.open("c").err().unwrap();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(registry.count(), 3);
        drop(a1);
        assert_eq!(registry.count(), 2);
        assert!(registry.open("c").is_ok(), "a dropped session frees its place");
    }

    #[test]
    fn only_commands_that_act_carry_a_reference_to_reply_to() {
        let ack: ClientFrame = serde_json::from_str(r#"{"type":"ack","ref":"r1","alert_id":"x"}"#).unwrap();
        assert_eq!(ack.reference(), Some("r1"));
        let ping: ClientFrame = serde_json::from_str(r#"{"type":"ping"}"#).unwrap();
        assert_eq!(ping.reference(), None);
    }
}
