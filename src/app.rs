//! Wiring: builds every adapter from the configuration, starts the listeners, and shuts down
//! in one ordered function (readiness off, stop accepting, answer in-flight messages, drain
//! actors, flush the store).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vigil_actors::{AlertStore, Clock, EventStore, Router, SystemClock};

use crate::alerts::AlertHub;
use crate::auth::Auth;
use crate::config::Config;
use crate::config::Backend;
use crate::crypto::{BlindIndex, KeyRing, load_or_create_key};
use crate::http::{self, AppState};
use crate::ingest::Ingress;
use crate::ingest::map::Mapper;
use crate::rules::RhaiRules;
use crate::store::{EmbeddedStore, EmbeddedStoreConfig, ScyllaStore, ScyllaStoreConfig};
use crate::vocab::Vocabulary;

/// The key that signs console tokens.
pub fn load_auth(config: &Config) -> anyhow::Result<Auth> {
    let key = load_or_create_key(&config.jwt_secret_file)?;
    Ok(Auth::hs256(&key))
}

/// A running server.
pub struct Running {
    /// Where MLLP listens.
    pub mllp_addr: std::net::SocketAddr,
    /// Where HTTP listens.
    pub http_addr: std::net::SocketAddr,
    /// Token issuer/verifier.
    pub auth: Auth,
    shutdown: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    mllp: JoinHandle<()>,
    http: JoinHandle<()>,
    router: Arc<Router>,
    store: Store,
}

/// The adapter in use; dropping it flushes.
enum Store {
    Embedded(EmbeddedStore),
    Scylla(ScyllaStore),
}

impl Store {
    fn ports(&self) -> (Arc<dyn EventStore>, Arc<dyn AlertStore>) {
        match self {
            Store::Embedded(s) => (Arc::new(s.clone()), Arc::new(s.clone())),
            Store::Scylla(s) => (Arc::new(s.clone()), Arc::new(s.clone())),
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

/// Build everything and start listening.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    refuse_keys_in_data_dir(config)?;
    let auth = load_auth(config)?;
    let index_key = load_or_create_key(&config.store.index_key_file())?;
    let keys = Arc::new(KeyRing::load_or_create(&config.store.keys_file)?);
    let hub = AlertHub::new(config.hub_capacity);
    let store = match config.store.backend {
        Backend::Embedded => Store::Embedded(
            EmbeddedStore::open(&config.data_dir, EmbeddedStoreConfig::default(), keys, Arc::new(hub.clone()))
                .context("opening the embedded store")?,
        ),
        Backend::Scylla => Store::Scylla(
            ScyllaStore::connect(ScyllaStoreConfig::from_settings(&config.store), keys, Arc::new(hub.clone()))
                .await
                .context("connecting to ScyllaDB")?,
        ),
    };
    let (events, alerts) = store.ports();
    let rules = load_rules(&config.rules_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let router = Arc::new(Router::new(Arc::clone(&events), Arc::clone(&alerts), Arc::new(rules), Arc::clone(&clock)).await?);
    let mapper = Mapper::new(Vocabulary::shipped(), BlindIndex::new(&index_key));
    let ingress = Arc::new(Ingress::new(
        Arc::clone(&router),
        events,
        mapper,
        clock,
        config.ingest_permits,
        config.mllp.application.clone(),
        config.mllp.facility.clone(),
    ));

    let mllp_listener = TcpListener::bind(config.mllp_addr)
        .await
        .with_context(|| format!("binding MLLP on {}", config.mllp_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let mllp_addr = mllp_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        hub,
        alerts,
        auth: auth.clone(),
        ingress: Arc::clone(&ingress),
        router: Arc::clone(&router),
        ready: Arc::clone(&ready),
    };
    let mllp = tokio::spawn(crate::ingest::mllp::listener::serve(
        mllp_listener,
        ingress,
        config.mllp.clone(),
        shutdown_rx.clone(),
    ));
    let mut http_shutdown = shutdown_rx;
    let http = tokio::spawn(async move {
        let app = http::routes(state);
        let served = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });
    ready.store(true, Ordering::Release);
    tracing::info!(%mllp_addr, %http_addr, data_dir = %config.data_dir.display(), "vigil serving");
    Ok(Running { mllp_addr, http_addr, auth, shutdown, ready, mllp, http, router, store })
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
    /// Ordered shutdown, each stage with a deadline.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        // Connections stop reading and answer what they have begun.
        if tokio::time::timeout(Duration::from_secs(10), self.mllp).await.is_err() {
            tracing::warn!("mllp connections did not finish within 10 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.http).await.is_err() {
            tracing::warn!("http did not stop within 5 s");
        }
        self.router.shutdown().await;
        drop(self.router);
        match self.store {
            // Dropping the last store handle joins the committer after its final fsync.
            Store::Embedded(store) => {
                tokio::task::spawn_blocking(move || drop(store)).await.ok();
            }
            // Everything queued is acknowledged by the cluster before this returns.
            Store::Scylla(store) => store.close().await,
        }
        tracing::info!("vigil stopped");
    }
}
