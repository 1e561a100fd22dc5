//! The patient actor's behaviour: queue the append (the sender's ACK waits on it), fold the
//! event into state, run the triggered rules, and queue alert changes, which the alert store
//! publishes once durable. Every `Ports::snapshot_every` events it writes its state snapshot,
//! once those events are durable and beside the ACK, never before it.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use super::messages::PatientMsg;
use super::state::PatientState;
use crate::census::{CensusBed, News2Now};
use crate::model::{Alert, ClinicalEvent, Details, EventKind, PatientId};
use crate::ports::{Durable, Ports, RuleVerdict};

/// The patient actor. Stateless itself; everything lives in [`PatientState`].
#[derive(Debug, Default)]
pub struct PatientActor;

/// What a patient actor starts with.
pub struct PatientArgs {
    /// Opaque patient id.
    pub id: PatientId,
    /// The ports.
    pub ports: Ports,
    /// The state restored from the patient's snapshot, when one was usable.
    pub restored: Option<PatientState>,
    /// Events to rebuild the window from, applied on top of `restored` (oldest first): the
    /// last 24 h, or those received since the snapshot's newest.
    pub history: Vec<ClinicalEvent>,
    /// Alerts of this patient still open at start.
    pub open_alerts: Vec<Alert>,
}

/// Runtime state: the domain state plus the ports.
pub struct Running {
    state: PatientState,
    ports: Ports,
    /// When the actor last had an event or an action (for passivation).
    last_active: time::OffsetDateTime,
    /// The NEWS2 of the latest vital signs (`None`: no score known).
    news2: Option<News2Now>,
    /// Events applied since the last snapshot was taken (or that no standing snapshot holds).
    since_snapshot: u64,
    /// An append of this actor failed to queue: its state holds values the log may not, so it
    /// writes no snapshot while running (its successor replays the log).
    unlogged: bool,
    /// The snapshot being written (after its events are durable); the next waits for it, and
    /// a clean stop too, so snapshots land in the order they were taken.
    snapshot_write: Option<JoinHandle<()>>,
}

impl Running {
    /// Fold one event into the state and run the rules it triggers: the alert changes to
    /// commit with it.
    async fn on_event(&mut self, event: &ClinicalEvent) -> Vec<(Alert, bool)> {
        self.state.apply(event);
        if let (Some(live), EventKind::Observations { observations }) = (&self.ports.live, &event.kind) {
            live.observations(&self.state.id, &self.state.view.location, observations);
        }
        let now = self.ports.clock.now();
        if let EventKind::Merge { prior_id, .. } = &event.kind {
            // Fold the retired record's recent history into this one.
            let since = now - super::state::WINDOW_MAX_AGE;
            match self.ports.events.events_since(prior_id, since).await {
                Ok(history) => history.iter().for_each(|e| self.state.apply_history(e)),
                Err(error) => tracing::error!(patient = %self.state.id, %error, "merge: prior history unreadable"),
            }
        }
        let triggers = event.trigger_names();
        let view = self.state.view_at(now, event);
        let mut outcomes = self.ports.rules.evaluate(&view, &triggers);
        drop(view);
        if let Some(news2) = outcomes.iter().find(|o| o.rule_id == NEWS2_RULE) {
            self.news2 = news2_now(&news2.verdict);
        }
        match &event.kind {
            EventKind::DeviceAlarm { alarm } => outcomes.push(crate::device::alarm_outcome(alarm)),
            EventKind::DeviceSilence { device, offline, silent_s, interval_s } => {
                outcomes.push(crate::device::silence_outcome(device, *offline, *silent_s, *interval_s));
            }
            _ => {}
        }
        self.state.decide(outcomes, now)
    }

    /// After `events` more applied and `queued` for durable append: when a snapshot is due,
    /// take it now and write it once the ticket says they are durable; the sender gets the
    /// same outcome first (a task in between, so the ACK never waits on the snapshot).
    fn snapshot_after(&mut self, events: usize, queued: Durable) -> Durable {
        self.since_snapshot = self.since_snapshot.saturating_add(events as u64);
        let every = u64::from(self.ports.snapshot_every);
        if every == 0 || self.since_snapshot < every || self.unlogged {
            return queued;
        }
        let bytes = match self.state.snapshot_while_running() {
            Some(Ok(bytes)) => bytes,
            None => return queued,
            Some(Err(error)) => {
                tracing::warn!(patient = %self.state.id, %error, "state snapshot not encoded");
                return queued;
            }
        };
        self.since_snapshot = 0;
        let (done, ticket) = queued.relayed();
        let (events, id, previous) = (self.ports.events.clone(), self.state.id.clone(), self.snapshot_write.take());
        self.snapshot_write = Some(tokio::spawn(async move {
            let durable = done.relay(queued).await;
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            // Not durable: the sender resends, and the next snapshot will hold it.
            if durable && let Err(error) = events.save_snapshot(&id, &bytes).await {
                tracing::warn!(patient = %id, %error, "state snapshot not saved; a rebuild tops up an older one");
            }
        }));
        ticket
    }

    /// Put the patient's bed and score in the census, or take them out of it when discharged
    /// or nowhere.
    fn publish_census(&self) {
        let state = &self.state;
        let location = &state.view.location;
        let bed = (!state.view.discharged && !location.unit.is_empty()).then(|| CensusBed {
            patient: state.id.clone(),
            name: state.demographics.name.clone(),
            unit: location.unit.clone(),
            room: location.room.clone(),
            bed: location.bed.clone(),
            news2: self.news2.clone(),
        });
        self.ports.census.set(&state.id, bed);
    }

    /// One message: the body of [`PatientActor`]'s `handle`, boxed there.
    async fn handle(&mut self, myself: ActorRef<PatientMsg>, msg: PatientMsg) {
        if matches!(msg, PatientMsg::Ingest { .. } | PatientMsg::Act { .. }) {
            self.last_active = self.ports.clock.now();
        }
        match msg {
            PatientMsg::Ingest { mut message, events, reply } => {
                // Rules run first (microseconds), so the events and the alert changes they
                // cause are committed together: the ACK, which waits on this ticket, then means
                // both are durable. If queuing fails the sender is told to resend; the state
                // already holds the values, and re-applying the same samples replaces them.
                let mut changes = Vec::new();
                for event in &events {
                    changes.extend(self.on_event(event).await);
                }
                let queued = self.ports.events.append_all(message.as_ref(), &events, &changes).await;
                // Queued (or refused): the commit under way no longer waits for it.
                drop(message.as_mut().and_then(|m| m.in_transit.take()));
                let queued = match queued {
                    Ok(ticket) => Ok(self.snapshot_after(events.len(), ticket)),
                    Err(error) => {
                        tracing::error!(patient = %self.state.id, %error, "message and its alert changes not queued");
                        self.unlogged = true;
                        Err(error)
                    }
                };
                self.publish_census();
                // The sender may have hung up; its message is durable anyway.
                let _ = reply.send(queued);
            }
            PatientMsg::Act { alert_id, action, reply } => {
                let now = self.ports.clock.now();
                let result = match self.state.act(&alert_id, action, now) {
                    Ok((alert, notify)) => match self.ports.alerts.upsert_alert(&alert, notify).await {
                        Ok(ticket) => Ok((alert, ticket)),
                        Err(e) => Err(e.into()),
                    },
                    Err(refused) => Err(refused.into()),
                };
                let _ = reply.send(result);
            }
            PatientMsg::Passivate { idle_for, reply } => {
                let now = self.ports.clock.now();
                let idle = now - self.last_active >= idle_for && self.state.can_passivate(now);
                let _ = reply.send(idle);
                if idle {
                    // Everything it holds is in the store: its next event rebuilds it. Draining
                    // finishes what is queued already; later sends are refused with the message,
                    // which the router hands to a successor.
                    let _ = myself.drain();
                }
            }
            PatientMsg::Summary { reply } => {
                let now = self.ports.clock.now();
                let mut summary = self.state.summary(now);
                let view = self.state.view_now(now);
                for outcome in self.ports.rules.evaluate_all(&view) {
                    let details = match outcome.verdict {
                        RuleVerdict::Fire { details, .. } | RuleVerdict::Resolve { details, .. } => details,
                        RuleVerdict::NotApplicable { reason } => {
                            Details::from_value(&serde_json::json!({ "applies": false, "reason": reason }))
                        }
                        RuleVerdict::Quiet => continue,
                    };
                    if !details.is_null() {
                        summary.scores.insert(outcome.rule_id, details);
                    }
                }
                let _ = reply.send(summary);
            }
        }
    }
}

/// The rule whose score the unit board shows.
const NEWS2_RULE: &str = "news2";

/// The score a NEWS2 verdict gives: a fired or resolving verdict's details carry it; a rule
/// that does not apply, or details without a score, give none (shown as "no score").
fn news2_now(verdict: &RuleVerdict) -> Option<News2Now> {
    let details = match verdict {
        RuleVerdict::Fire { details, .. } | RuleVerdict::Resolve { details, .. } => details,
        RuleVerdict::NotApplicable { .. } | RuleVerdict::Quiet => return None,
    };
    // The three fields the board shows, read without writing the details (most are never
    // written: nobody else reads a NEWS2 verdict with no alert open).
    let [score, band, partial] = details.fields(["score", "band", "partial"]);
    Some(News2Now {
        score: score?.as_i64()?,
        band: band?.as_str()?.to_string(),
        partial: partial.and_then(|p| p.as_bool()).unwrap_or(false),
    })
}

impl Actor for PatientActor {
    type Msg = PatientMsg;
    type State = Running;
    type Arguments = PatientArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: PatientArgs) -> Result<Running, ActorProcessingErr> {
        let mut state = args.restored.unwrap_or_else(|| PatientState::new(args.id));
        for event in &args.history {
            state.apply(event);
        }
        for alert in args.open_alerts {
            state.restore_open(alert);
        }
        let last_active = args.ports.clock.now();
        // A passivated patient's score outlives its actor in the census.
        let news2 = args.ports.census.get(&state.id).and_then(|bed| bed.news2);
        // The start took the standing snapshot (if any), so until this actor writes its own a
        // crash replays its patient's log (correct, only slower). The next one is due once the
        // events replayed or topped up and those to come reach the cadence: writing one at the
        // first event after every start made a restart rewrite every prewarmed patient's whole
        // state in its first seconds, beside the first messages' commits (issue 12 (a)).
        let since_snapshot = args.history.len() as u64;
        let run = Running {
            state,
            ports: args.ports,
            last_active,
            news2,
            since_snapshot,
            unlogged: false,
            snapshot_write: None,
        };
        run.publish_census();
        Ok(run)
    }

    /// A clean stop (passivation, shutdown, a merge retiring the record): keep the state as a
    /// snapshot so the next start reads one record. Its events were queued before it (the
    /// store writes them first or in the same journal); a failed actor writes none (this is
    /// not called after an error) and its successor replays the log.
    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, run: &mut Running) -> Result<(), ActorProcessingErr> {
        // A running snapshot still being written lands first, so this one is what stands.
        if let Some(previous) = run.snapshot_write.take() {
            let _ = previous.await;
        }
        match run.state.snapshot() {
            None => {}
            Some(Err(error)) => tracing::warn!(patient = %run.state.id, %error, "state snapshot not encoded"),
            Some(Ok(bytes)) => {
                if let Err(error) = run.ports.events.save_snapshot(&run.state.id, &bytes).await {
                    tracing::warn!(patient = %run.state.id, %error, "state snapshot not saved; the next start replays the log");
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: PatientMsg,
        run: &mut Running,
    ) -> Result<(), ActorProcessingErr> {
        // ractor boxes each actor's message loop once and keeps it for the actor's life, sized
        // for the largest message future it may hold: inline, this one (about 1.5 KB, counted
        // twice by the loop) made every idle patient carry about 3.5 KB of future. Boxed per
        // message, an idle patient carries a pointer (docs/BENCHMARKS.md, memory).
        Box::pin(run.handle(myself, msg)).await;
        Ok(())
    }
}
