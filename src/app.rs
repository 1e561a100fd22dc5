//! Wiring: builds every adapter from the configuration, starts the listeners, and shuts down
//! in one ordered function (readiness off, stop accepting, answer in-flight messages, stop the
//! background tasks, drain actors, flush the store). One [`CancellationToken`] says "stop"
//! (its child `intake` first: listeners, WebSocket sessions, the store probe); one
//! [`TaskTracker`] owns every task spawned here, so shutdown knows when all have ended.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigil_actors::{AlertStore, Clock, EventStore, MessageLog, Router, SystemClock};

use crate::alerts::AlertHub;
use crate::auth::Auth;
use crate::config::Backend;
use crate::config::Config;
use crate::crypto::{BlindIndex, KeyRing, load_or_create_key};
use crate::http::{self, AppState};
use crate::ingest::Ingress;
use crate::ingest::hl7::Hl7Feed;
use crate::ingest::map::Mapper;
use crate::rules::RhaiRules;
use crate::store::{EmbeddedStore, EmbeddedStoreConfig};
#[cfg(feature = "scylla")]
use crate::store::{ScyllaStore, ScyllaStoreConfig};
use crate::vocab::Vocabulary;

/// The key that signs console tokens, with the configured lifetime cap and audience.
pub fn load_auth(config: &Config) -> anyhow::Result<Auth> {
    if config.auth_algorithm == "HS256" {
        let key = load_or_create_key(&config.jwt_secret_file)?;
        return Ok(Auth::hs256(&key).with_policy(config.token_policy.clone()));
    }
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading key file {}", p.display()));
    let public = read(config.auth_public_key.as_deref().context("auth.public_key_file")?)?;
    let private = config.auth_private_key.as_deref().map(read).transpose()?;
    let auth = Auth::asymmetric(&config.auth_algorithm, &public, private.as_deref(), &config.auth_issuers)?;
    Ok(auth.with_policy(config.token_policy.clone()))
}

/// The window of the failed-authentication limit and of its aggregated audit record.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Peer addresses the failed-authentication limit tracks at once.
const MAX_PEERS_TRACKED: usize = 65_536;

/// A running server.
pub struct Running {
    /// Where MLLP listens.
    pub mllp_addr: std::net::SocketAddr,
    /// Where HTTP listens.
    pub http_addr: std::net::SocketAddr,
    /// Token issuer/verifier.
    pub auth: Auth,
    /// What the MLLP listener refused or cut short.
    pub mllp_metrics: Arc<crate::ingest::mllp::listener::ListenerMetrics>,
    /// What the HTTP accept loop refused.
    pub http_metrics: Arc<crate::http::server::ServerMetrics>,
    /// Cancelled second: the background tasks (escalation, silences, device watch, metrics
    /// upkeep, passivation, webhooks, rules watch). A parent of `intake`.
    shutdown: CancellationToken,
    /// Cancelled first: what takes work in (MLLP and HTTP listeners, WebSocket sessions) and
    /// the store probe (which would turn readiness back on).
    intake: CancellationToken,
    /// Every task spawned here (the listeners' tasks track their own connections).
    tasks: TaskTracker,
    ready: Arc<AtomicBool>,
    mllp: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    devices: Arc<vigil_actors::device::DeviceRegistry>,
    webhooks: Vec<JoinHandle<()>>,
    sessions_closed: tokio::sync::mpsc::Receiver<()>,
    router: Arc<Router>,
    store: Store,
    /// The shutdown stages done so far, and how long each took.
    stages: Vec<(&'static str, Duration)>,
    /// Writes the census to the console store; stopped after the patient actors.
    census_keeper: (watch::Sender<bool>, JoinHandle<()>),
}

/// How long each shutdown stage took, and what it left behind (logged at the end of
/// [`Running::shutdown`]; tests read it).
#[derive(Clone, Debug, Default)]
pub struct ShutdownReport {
    /// Each stage and its duration, in order.
    pub stages: Vec<(&'static str, Duration)>,
    /// Tracked tasks still running when the background stage's deadline passed.
    pub tasks_left: usize,
    /// Patient actors live when draining began.
    pub actors_drained: usize,
}

/// Deadlines of the shutdown stages.
const MLLP_DRAIN_DEADLINE: Duration = Duration::from_secs(10);
const HTTP_DRAIN_DEADLINE: Duration = Duration::from_secs(5);
const SESSIONS_DEADLINE: Duration = Duration::from_secs(5);
/// Webhook dispatchers abandon an in-flight POST after 1 s and are aborted at this; their
/// cursors make that safe.
const WEBHOOKS_DEADLINE: Duration = Duration::from_secs(3);
const TASKS_DEADLINE: Duration = Duration::from_secs(5);

/// The adapter in use; dropping it flushes.
enum Store {
    Embedded(EmbeddedStore),
    #[cfg(feature = "scylla")]
    Scylla(ScyllaStore, fjall::Database),
}

impl Store {
    fn ports(&self) -> (Arc<dyn EventStore>, Arc<dyn AlertStore>, Arc<dyn MessageLog>) {
        match self {
            Store::Embedded(s) => (Arc::new(s.clone()), Arc::new(s.clone()), Arc::new(s.clone())),
            #[cfg(feature = "scylla")]
            Store::Scylla(s, _) => (Arc::new(s.clone()), Arc::new(s.clone()), Arc::new(s.clone())),
        }
    }

    /// Where device placements, associations and quarantined readings are kept.
    fn devices(&self) -> Arc<dyn vigil_actors::device::DeviceStore> {
        match self {
            Store::Embedded(s) => Arc::new(s.clone()),
            #[cfg(feature = "scylla")]
            Store::Scylla(s, _) => Arc::new(s.clone()),
        }
    }

    /// Where the console's silences and assignments are kept (shared by every node).
    fn console(&self) -> Arc<dyn crate::console::ConsoleStore> {
        match self {
            Store::Embedded(s) => Arc::new(s.clone()),
            #[cfg(feature = "scylla")]
            Store::Scylla(s, _) => Arc::new(s.clone()),
        }
    }

    /// The node-local database for the audit log and webhook cursors: the embedded store's
    /// own, or a small one in the data directory beside a ScyllaDB deployment.
    fn local(&self) -> fjall::Database {
        match self {
            Store::Embedded(s) => s.database(),
            #[cfg(feature = "scylla")]
            Store::Scylla(_, db) => db.clone(),
        }
    }
}

/// Key material used to live in `<data_dir>/keys/`. Never generate a new index key beside an
/// old one: every patient id would change. Ask the operator to move it.
fn refuse_keys_in_data_dir(config: &Config) -> anyhow::Result<()> {
    let old = config.data_dir.join("keys");
    if old.exists() {
        anyhow::bail!(
            "{} holds key material inside the data directory; move its files to {} (store.keys_dir) and remove it",
            old.display(),
            config.store.keys_dir.display()
        );
    }
    Ok(())
}

/// Process-wide settings for `serve` and `demo`, before any file is created: files and
/// directories are private to the service user (umask 077), and the soft limit on open files
/// is raised to the hard limit (each MLLP, HTTP and WebSocket connection holds one).
pub fn harden_process() {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        let limit = getrlimit(Resource::Nofile);
        if limit.current != limit.maximum {
            let raised = Rlimit { current: limit.maximum, maximum: limit.maximum };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "could not raise the open-file limit");
            }
        }
    }
}

/// Create `dir` (and parents) private to the service user, and make it so if it exists with
/// wider permissions.
fn private_dir(dir: &Path, key: &str) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).with_context(|| format!("creating {key} {}", dir.display()))?;
        let mode =
            std::fs::metadata(dir).with_context(|| format!("reading {key} {}", dir.display()))?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {key} {} private (0700)", dir.display()))?;
            tracing::info!(dir = %dir.display(), was = format!("{:o}", mode & 0o777), "{key} made private (0700)");
        }
    }
    #[cfg(not(unix))]
    builder.create(dir).with_context(|| format!("creating {key} {}", dir.display()))?;
    Ok(())
}

/// MLLP connections may use the descriptors the process has left after `mllp.reserved_fds`,
/// so a flood of them cannot starve HTTP (health checks), the store or the log: the
/// configured `mllp.max_connections` is lowered to fit, with a warning.
fn fit_connections_to_fd_limit(
    mut settings: crate::config::MllpSettings,
) -> anyhow::Result<crate::config::MllpSettings> {
    #[cfg(unix)]
    {
        let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current else {
            return Ok(settings);
        };
        // Descriptors already open (store files, listeners); 64 when they cannot be counted.
        let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(64);
        let budget = limit.saturating_sub(open).saturating_sub(settings.reserved_fds as u64);
        if budget == 0 {
            anyhow::bail!(
                "the open-file limit ({limit}, {open} in use) leaves no descriptors for MLLP connections after mllp.reserved_fds = {}; raise the limit (LimitNOFILE) or lower mllp.reserved_fds",
                settings.reserved_fds
            );
        }
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        if budget < settings.max_connections {
            tracing::warn!(
                configured = settings.max_connections,
                allowed = budget,
                open_file_limit = limit,
                reserved_fds = settings.reserved_fds,
                "mllp.max_connections lowered to fit the open-file limit"
            );
            settings.max_connections = budget;
        }
    }
    Ok(settings)
}

/// Build everything and start listening.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    start_with_token_clock(config, Arc::new(SystemClock)).await
}

/// [`start`], with tokens' times (issue, expiry, not-before) read from `token_clock`: tests
/// expire a console's token without waiting.
pub async fn start_with_token_clock(config: &Config, token_clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    private_dir(&config.data_dir, "data dir")?;
    refuse_keys_in_data_dir(config)?;
    let auth = load_auth(config)?.with_clock(token_clock);
    let index_key = load_or_create_key(&config.store.index_key_file())?;
    let keys = Arc::new(KeyRing::load_or_create(&config.store.keys_file)?);
    let hub = AlertHub::new(config.hub_capacity);
    let metrics = crate::http::metrics::Metrics::default();
    // Messages taken in whose writes are not yet queued: what a commit waits for under load.
    let expected = crate::store::commit::Expected::new();
    let store = match config.store.backend {
        Backend::Embedded => Store::Embedded({
            crate::store::writeback::advise(crate::store::writeback::Threshold::of_host());
            EmbeddedStore::open(
                &config.data_dir,
                EmbeddedStoreConfig {
                    write_timer: metrics.store_write_timer(),
                    commit_interval: config.store.commit_interval,
                    expected: expected.clone(),
                    ..EmbeddedStoreConfig::default()
                },
                keys,
                Arc::new(hub.clone()),
            )
            .map_err(|e| crate::store::recover::explain_open_failure(&config.data_dir, e))?
        }),
        #[cfg(not(feature = "scylla"))]
        Backend::Scylla => anyhow::bail!(
            "store.backend is `scylla`, but this vigil was built without ScyllaDB support: \
             build it with `cargo build --profile dist --features scylla` (deploy/Dockerfile does)"
        ),
        #[cfg(feature = "scylla")]
        Backend::Scylla => {
            let local = fjall::Database::builder(config.data_dir.join("local"))
                .open()
                .context("opening the node-local database (audit, webhook cursors)")?;
            let scylla_config = ScyllaStoreConfig {
                write_timer: metrics.store_write_timer(),
                ..ScyllaStoreConfig::from_settings(&config.store)
            };
            let scylla = ScyllaStore::connect(scylla_config, keys, Arc::new(hub.clone()))
                .await
                .context("connecting to ScyllaDB")?;
            Store::Scylla(scylla, local)
        }
    };
    let (events, alerts, message_log) = store.ports();
    let rules = Arc::new(load_rules(&config.rules_dir)?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let stages = metrics.stages();
    let live = crate::alerts::live::LiveHub::new(1024);
    let router = Arc::new(
        Router::new(
            Arc::clone(&events),
            Arc::clone(&alerts),
            Arc::new(crate::http::metrics::TimedRules::new(
                Arc::clone(&rules) as Arc<dyn vigil_actors::RuleEngine>,
                &stages,
            )) as Arc<dyn vigil_actors::RuleEngine>,
            Arc::clone(&clock),
        )
        .await?
        .with_live_feed(Arc::new(live.clone()))
        .with_snapshot_every(config.snapshot_every)
        .with_start_timings(metrics.start_timings()),
    );
    let authorities = crate::ingest::map::Authorities::new(&config.fhir.identifier_systems)?;
    let audit_key = crate::audit::AuditKey::load_or_create(&config.store.audit_key_file)?;
    let audit = crate::audit::AuditLog::open(store.local(), audit_key).context("opening the audit log")?;
    let devices = Arc::new(
        vigil_actors::device::DeviceRegistry::new(
            Arc::clone(&router),
            Arc::clone(&clock),
            config.devices.silence,
            store.devices(),
        )
        .with_audit(Arc::new(audit.clone())),
    );
    devices.restore().await.context("reading device associations")?;
    let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&index_key))
        .with_authorities(authorities)
        .with_mrn_type(config.hl7.mrn_identifier_type.clone())
        .with_default_offset(config.hl7.default_utc_offset);
    // Readiness and ingest follow the store's health (src/store/health.rs).
    let (store_up, store_up_rx) = watch::channel(true);
    let probed_log = Arc::clone(&message_log);
    let ingress = Arc::new(
        Ingress::new(Arc::clone(&router), message_log, Arc::clone(&clock), config.ingest_permits)
            .with_stages(stages)
            .with_expected(&expected)
            .with_store_gate(crate::store::health::StoreGate::new(store_up_rx, config.store.unavailable_ack_delay)),
    );
    let fhir = Arc::new(
        crate::ingest::fhir::FhirFeed::new(
            Arc::clone(&ingress),
            mapper.clone(),
            config.fhir.clone(),
            Arc::clone(&events),
        )
        .with_devices(Arc::clone(&devices)),
    );
    let hl7 = Arc::new(
        Hl7Feed::new(Arc::clone(&ingress), mapper, config.mllp.application.clone(), config.mllp.facility.clone())
            .with_unsupported(config.hl7.unsupported)
            .with_devices(Arc::clone(&devices)),
    );

    let mllp_listener =
        TcpListener::bind(config.mllp_addr).await.with_context(|| format!("binding MLLP on {}", config.mllp_addr))?;
    let http_listener =
        TcpListener::bind(config.http_addr).await.with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let mllp_addr = mllp_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let intake = shutdown.child_token();
    let tasks = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(false));
    let state_alerts = Arc::clone(&alerts);
    let (sessions, sessions_closed) = tokio::sync::mpsc::channel(1);
    let http_tls = match &config.http.tls {
        Some(tls) => Some(crate::ingest::mllp::listener::tls_acceptor(&tls.cert_file, &tls.key_file)?),
        None => None,
    };
    let auth_failures = Arc::new(crate::http::extract::AuthFailures::new(
        config.http.auth_failures_per_minute,
        AUTH_FAILURE_WINDOW,
        MAX_PEERS_TRACKED,
    ));
    let mllp_metrics = Arc::new(crate::ingest::mllp::listener::ListenerMetrics::default());
    let http_metrics = Arc::new(crate::http::server::ServerMetrics::default());
    let console_store = store.console();
    let moved = crate::console::store::move_local_rows(&store.local(), console_store.as_ref())
        .await
        .context("moving silences and assignments out of the node-local database")?;
    if moved > 0 {
        tracing::info!(rows = moved, "silences and assignments moved from the node-local database to the store");
    }
    // The census kept at the last stop, before any message is taken (issue 16).
    let census_changes = router.census().subscribe();
    let census_written = crate::console::census::restore(router.census(), console_store.as_ref())
        .await
        .context("reading the census from the store")?;
    let census_stop = watch::channel(false);
    let census_keeper = tokio::spawn(crate::console::census::keep(
        Arc::clone(router.census()),
        Arc::clone(&console_store),
        census_changes,
        census_written,
        census_stop.1,
    ));
    let silences = crate::console::Silences::open(Arc::clone(&console_store), Arc::clone(&clock)).await?;
    let assignments = crate::console::Assignments::open(console_store, Arc::clone(&clock)).await?;
    let state = AppState {
        mllp: Arc::clone(&mllp_metrics),
        http_connections: Arc::clone(&http_metrics),
        console: crate::console::Console::new(Arc::clone(&alerts), Arc::clone(&router), audit.clone())
            .with_silences(silences)
            .with_assignments(assignments)
            .with_escalation(config.escalation.clone()),
        live,
        sessions,
        shutdown: intake.clone(),
        audit: audit.clone(),
        hub,
        alerts,
        auth: auth.clone(),
        auth_failures: Arc::clone(&auth_failures),
        ws_sessions: crate::http::ws::SessionRegistry::new(
            config.http.max_websocket_sessions_per_user,
            config.http.max_websocket_sessions,
        ),
        ingress: Arc::clone(&ingress),
        hl7: Arc::clone(&hl7),
        router: Arc::clone(&router),
        rules: Arc::clone(&rules),
        ready: Arc::clone(&ready),
        metrics_require_auth: config.http.metrics_require_auth,
        metrics: metrics.clone(),
        security: crate::http::security::SecurityHeaders { hsts: http_tls.is_some() },
    };
    let tls = match &config.mllp.tls {
        Some(tls) => Some(crate::ingest::mllp::listener::tls_acceptor(&tls.cert_file, &tls.key_file)?),
        None => None,
    };
    // Before MLLP starts: a new endpoint's cursor is the log's end, so nothing later is skipped.
    let webhook_ledger =
        crate::alerts::webhooks::Webhooks::open(store.local()).context("opening the webhook ledger")?;
    let webhooks = webhook_ledger.start(&config.webhooks, Arc::clone(&state_alerts), &state.hub, &shutdown, &tasks)?;
    crate::rules::watch::spawn(rules, shutdown.clone(), &tasks);
    // Before MLLP takes a message and before readiness: the first messages after a restart
    // find their patients' actors warm (actors/src/prewarm.rs).
    if let Some(prewarm) = &config.prewarm {
        let started = std::time::Instant::now();
        let report = vigil_actors::prewarm(&router, prewarm).await;
        tracing::info!(
            listed = report.listed,
            started = report.started,
            failed = report.failed,
            deadline_reached = report.deadline_reached,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "patient actors prewarmed"
        );
    }
    let mllp = tasks.spawn(crate::ingest::mllp::listener::serve_with_metrics(
        mllp_listener,
        hl7,
        fit_connections_to_fd_limit(config.mllp.clone())?,
        tls,
        intake.clone(),
        Arc::clone(&mllp_metrics),
    ));
    let limits = crate::http::server::ServerLimits {
        header_read_timeout: config.http.header_read_timeout,
        idle_timeout: config.http.idle_timeout,
        max_connections: config.http.max_connections,
        connects_per_peer_per_sec: config.http.connects_per_peer_per_sec,
        connect_burst_per_peer: config.http.connect_burst_per_peer,
    };
    let (state_console, state_hub) = (state.console.clone(), state.hub.clone());
    let app = http::routes(state)
        .layer(axum::Extension(webhook_ledger))
        .layer(axum::Extension(fhir))
        .layer(axum::Extension(Arc::clone(&devices)));
    // Failed-authentication windows that closed are audited every window, and at shutdown.
    let flush = move |last: bool| match last {
        false => auth_failures.flush(std::time::Instant::now(), &audit),
        true => auth_failures.flush_all(&audit),
    };
    let http = tasks.spawn(crate::http::server::serve(
        http_listener,
        app,
        limits,
        http_tls,
        intake.clone(),
        AUTH_FAILURE_WINDOW,
        flush,
        Arc::clone(&http_metrics),
    ));
    tasks.spawn(crate::alerts::escalation::run(
        config.escalation.clone(),
        Arc::clone(&state_alerts),
        Arc::clone(&router),
        Arc::clone(&clock),
        shutdown.clone(),
    ));
    tasks.spawn(crate::console::silences::run(
        state_console,
        state_hub.subscribe(),
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    tasks.spawn(watch_devices(Arc::clone(&devices), config.devices.check_every, shutdown.clone()));
    tasks.spawn(metrics.upkeep(shutdown.clone()));
    if let Some(idle) = config.passivate_after {
        tasks.spawn(passivate(Arc::clone(&router), idle, shutdown.clone()));
    }
    ready.store(true, Ordering::Release);
    let writable: Option<crate::store::health::Writable> = match &store {
        Store::Embedded(s) => {
            let s = s.clone();
            Some(Arc::new(move || s.write_failure()))
        }
        #[cfg(feature = "scylla")]
        Store::Scylla(..) => None,
    };
    tasks.spawn(crate::store::health::probe(probed_log, writable, store_up, Arc::clone(&ready), intake.clone()));
    tracing::info!(%mllp_addr, %http_addr, data_dir = %config.data_dir.display(), "vigil serving");
    Ok(Running {
        mllp_addr,
        http_addr,
        auth,
        mllp_metrics,
        http_metrics,
        shutdown,
        intake,
        tasks,
        ready,
        mllp: Some(mllp),
        http: Some(http),
        devices,
        webhooks,
        sessions_closed,
        router,
        store,
        stages: Vec::new(),
        census_keeper: (census_stop.0, census_keeper),
    })
}

/// Judge device silence every `[devices] check_every_secs` (by the clock port): a device silent past its threshold
/// raises `device.offline` for its patient.
async fn watch_devices(devices: Arc<vigil_actors::device::DeviceRegistry>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let offline = devices.check_silence().await;
                if offline > 0 {
                    tracing::info!(offline, tracked = devices.device_count(), "devices went silent");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Stop idle patient actors (no open alert, no clock running) every minute; their next event
/// rebuilds them from the store. Memory then follows the patients being monitored, not every
/// patient seen since start.
async fn passivate(router: Arc<Router>, idle_for: time::Duration, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                let stopped = router.passivate_idle(idle_for).await;
                if stopped > 0 {
                    tracing::debug!(stopped, live = router.patient_count(), "idle patient actors passivated");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

fn load_rules(dir: &Path) -> anyhow::Result<RhaiRules> {
    let rules = RhaiRules::from_dir(dir).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("rules in {} do not load:\n{}", dir.display(), lines.join("\n"))
    })?;
    for rule in rules.rules().iter() {
        tracing::info!(rule = %rule.id, version = %rule.version, "rule loaded");
    }
    Ok(rules)
}

impl Running {
    /// The first stage of shutdown: readiness off, intake cancelled, and wait (each listener
    /// within its deadline) until the MLLP listener has closed its socket and every MLLP
    /// connection has answered the messages it had begun, and the HTTP listener has closed
    /// with its connections. Afterwards a new connection to either port is refused. Called by
    /// [`Running::shutdown`] when it has not been. Returns the stages done so far.
    pub async fn stop_intake(&mut self) -> Vec<(&'static str, Duration)> {
        let stages = &mut self.stages;
        self.ready.store(false, Ordering::Release);
        self.intake.cancel();
        let started = std::time::Instant::now();
        if let Some(mllp) = self.mllp.take() {
            if tokio::time::timeout(MLLP_DRAIN_DEADLINE, mllp).await.is_err() {
                tracing::warn!(deadline = ?MLLP_DRAIN_DEADLINE, "mllp connections did not finish in time");
            }
            stages.push(("mllp: in-flight messages answered", started.elapsed()));
        }
        let started = std::time::Instant::now();
        if let Some(http) = self.http.take() {
            if tokio::time::timeout(HTTP_DRAIN_DEADLINE, http).await.is_err() {
                tracing::warn!(deadline = ?HTTP_DRAIN_DEADLINE, "http did not stop in time");
            }
            stages.push(("http: connections closed", started.elapsed()));
        }
        stages.clone()
    }

    /// Ordered shutdown, each stage with a deadline: stop intake ([`Running::stop_intake`]),
    /// then cancel the background tasks and wait for every tracked task, then stop the device
    /// actors and drain the patient actors (in parallel), then flush the store.
    pub async fn shutdown(mut self) -> ShutdownReport {
        let mut report = ShutdownReport { stages: self.stop_intake().await, ..ShutdownReport::default() };
        let mut stage = |name: &'static str, started: std::time::Instant| report.stages.push((name, started.elapsed()));
        let started = std::time::Instant::now();
        if tokio::time::timeout(SESSIONS_DEADLINE, self.sessions_closed.recv()).await.is_err() {
            tracing::warn!(deadline = ?SESSIONS_DEADLINE, "websocket sessions did not close in time");
        }
        stage("websocket sessions closed", started);
        let started = std::time::Instant::now();
        self.shutdown.cancel();
        self.tasks.close();
        let webhooks = std::mem::take(&mut self.webhooks);
        crate::alerts::webhooks::stop(webhooks, tokio::time::Instant::now() + WEBHOOKS_DEADLINE).await;
        if tokio::time::timeout(TASKS_DEADLINE, self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), deadline = ?TASKS_DEADLINE, "background tasks did not end in time");
        }
        let tasks_left = self.tasks.len();
        stage("background tasks ended", started);
        let started = std::time::Instant::now();
        self.devices.shutdown().await;
        stage("device actors stopped", started);
        let started = std::time::Instant::now();
        let actors_drained = self.router.patient_count();
        self.router.shutdown().await;
        let (census_stop, census_keeper) = self.census_keeper;
        let _ = census_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), census_keeper).await.is_err() {
            tracing::warn!("the census was not written within 5 s");
        }
        drop(self.router);
        stage("patient actors drained", started);
        let started = std::time::Instant::now();
        match self.store {
            // Dropping the last store handle joins the committer after its final fsync.
            Store::Embedded(store) => {
                tokio::task::spawn_blocking(move || drop(store)).await.ok();
            }
            // Everything queued is acknowledged by the cluster before this returns.
            #[cfg(feature = "scylla")]
            Store::Scylla(store, local) => {
                store.close().await;
                if let Err(e) = local.persist(fjall::PersistMode::SyncAll) {
                    tracing::error!(error = %e, "final persist of the local database failed");
                }
            }
        }
        stage("store flushed", started);
        report.tasks_left = tasks_left;
        report.actors_drained = actors_drained;
        let took: Vec<String> = report.stages.iter().map(|(name, d)| format!("{name}: {d:.2?}")).collect();
        tracing::info!(stages = %took.join(", "), actors_drained, tasks_left, "vigil stopped");
        report
    }
}
