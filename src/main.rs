//! The `vigil` command: `serve`, `demo` (serve plus a simulated ward), `rules`, `keys`, `audit`
//! and `token`.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vigil::app;
use vigil::auth::Role;
use vigil::config::{Config, ServeArgs};

mod log_limit;

// Many small allocations per event (rule values, details); see docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "vigil", version, about = "Real-time clinical event platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: MLLP, HTTP + WebSocket, embedded store.
    Serve(ServeArgs),
    /// Run the server plus a simulated ward of bedside monitors, and print a console link.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Beds in the simulated ward.
        #[arg(long, default_value_t = 12)]
        beds: usize,
        /// Seconds between a monitor's reports.
        #[arg(long, default_value_t = 3)]
        interval_secs: u64,
        /// Seconds a deteriorating patient takes to reach septic shock.
        #[arg(long, default_value_t = 180)]
        deterioration_secs: u64,
        /// Patients drifting towards sepsis.
        #[arg(long, default_value_t = 2)]
        deteriorating: usize,
        /// Seconds a deteriorating patient stays in septic shock before recovering (back to
        /// baseline over the deterioration time); without it they never recover.
        #[arg(long)]
        recover_after_secs: Option<u64>,
        /// Unit of the simulated beds; repeat to split them over several units
        /// (`--beds 40 --unit ICU --unit 5W` for 40 beds on two units).
        #[arg(long = "unit", default_values_t = ["ICU".to_owned()])]
        units: Vec<String>,
        /// One more monitor (bed 99A of the first unit) drops out for this many seconds after
        /// every `--dropout-after-secs` of reports, so the console shows `device.offline`
        /// raised and resolved (0: no such monitor).
        #[arg(long, default_value_t = 120)]
        dropout_secs: u64,
        /// Seconds the dropout monitor reports before each dropout.
        #[arg(long, default_value_t = 60)]
        dropout_after_secs: u64,
        /// Every n-th bed sends its vitals as FHIR through a simulated gateway (0: none).
        #[arg(long, default_value_t = 4)]
        fhir_every: usize,
    },
    /// Check or test the rules: `vigil rules check [DIR]`, `vigil rules test [DIR]`.
    #[command(subcommand)]
    Rules(vigil::rules::cli::RulesCommand),
    /// Manage the field-encryption key ring (`vigil keys rotate`, `vigil keys list`).
    Keys(vigil::crypto::cli::KeysArgs),
    /// Check or read the audit log: `vigil audit verify`, `vigil audit list [--since T] [--until T]`.
    #[command(subcommand)]
    Audit(vigil::audit::cli::AuditCommand),
    /// Check, recover or compact the embedded store: `vigil store check`, `vigil store recover`,
    /// `vigil store compact`.
    #[command(subcommand)]
    Store(vigil::store::recover::cli::StoreCommand),
    /// Print a signed console token.
    Token {
        /// Role of the holder.
        #[arg(long, value_enum, default_value = "rrt")]
        role: Role,
        /// Unit the holder may see (repeat for several; `*` for all).
        #[arg(long = "unit", required = true)]
        units: Vec<String>,
        /// Subject (user id) in the token.
        #[arg(long, default_value = "console-user")]
        sub: String,
        /// Validity in hours.
        #[arg(long, default_value_t = 12)]
        hours: i64,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

/// What is logged when `VIGIL_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn,ractor=warn";

/// Logs to stderr, filtered by `VIGIL_LOG`, each call site held to [`log_limit::BUDGET`] lines
/// per [`log_limit::WINDOW`] (call inside the runtime: a task reports what was suppressed).
fn init_logging() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // ractor opens an INFO span around every actor's message loop, entered and left on every
    // message; Vigil's own logs name the patient or device instead, so the span is left off
    // (docs/BENCHMARKS.md, issue 12 (d)). `VIGIL_LOG=info,ractor=info` turns it back on.
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let limit = log_limit::PerCallsite::new(log_limit::BUDGET, log_limit::WINDOW);
    // The level filter first, so events it drops never reach the limiter's lock.
    let layer = tracing_subscriber::fmt::layer().with_target(false).with_filter(filter.and(limit.clone()));
    tracing_subscriber::registry().with(layer).init();
    tokio::spawn(limit.report());
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before any file is created: what Vigil writes is private to the service user.
    app::harden_process();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            let config = Config::load(&args)?;
            let running = app::start(&config).await?;
            println!("vigil listening: mllp={} http={}", running.mllp_addr, running.http_addr);
            wait_for_signal().await;
            running.shutdown().await;
        }
        Command::Demo {
            serve,
            beds,
            interval_secs,
            deterioration_secs,
            deteriorating,
            recover_after_secs,
            units,
            fhir_every,
            dropout_secs,
            dropout_after_secs,
        } => {
            init_logging();
            let mut config = Config::load(&serve)?;
            // The simulated FHIR gateway names the ward's patients under this system: the same
            // patients the simulated EMR admits over HL7 (PID-3.4 VIGIL_SIM).
            config
                .fhir
                .identifier_systems
                .entry("VIGIL_SIM".into())
                .or_insert_with(|| vigil_loadtest::fhir::SIM_SYSTEM.into());
            let running = app::start(&config).await?;
            println!("vigil listening: mllp={} http={}", running.mllp_addr, running.http_addr);
            let token = running.auth.issue("demo", Role::Rrt, vec!["*".into()], time::Duration::hours(12));
            let gateway = running.auth.issue("demo-gateway", Role::Gateway, Vec::new(), time::Duration::hours(12));
            // The ward simulator (vigil-loadtest) takes a watch channel; the dropout monitor is
            // ours and takes a token.
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let stop_monitor = tokio_util::sync::CancellationToken::new();
            let ward = vigil_loadtest::ward::WardConfig {
                beds,
                interval: Duration::from_secs(interval_secs.max(1)),
                deterioration_period: Duration::from_secs(deterioration_secs.max(10)),
                deteriorating,
                recover_after: recover_after_secs.map(Duration::from_secs),
                units: units.clone(),
                fhir: Some(vigil_loadtest::ward::FhirGateway {
                    http_addr: running.http_addr.to_string(),
                    token: gateway,
                    every: fhir_every,
                }),
                ..Default::default()
            };
            let dropout = (dropout_secs > 0).then(|| {
                let dropout = vigil::demo_monitor::Dropout {
                    interval: Duration::from_secs(interval_secs.max(1)),
                    reporting: Duration::from_secs(dropout_after_secs.max(1)),
                    silent: Duration::from_secs(dropout_secs),
                };
                let unit = units.first().cloned().unwrap_or_else(|| "ICU".into());
                tokio::spawn(vigil::demo_monitor::run(
                    running.mllp_addr.to_string(),
                    unit,
                    dropout,
                    stop_monitor.clone(),
                ))
            });
            let ward = tokio::spawn(vigil_loadtest::ward::run_ward(running.mllp_addr.to_string(), ward, stop_rx));
            println!(
                "\nVigil demo running: {beds} simulated beds on {} ({deteriorating} deteriorating), admitted by ADT^A01 and sending IHE PCD-01 vitals over MLLP to {} (every {fhir_every}th bed through a FHIR gateway instead).",
                units.join(", "),
                running.mllp_addr
            );
            if dropout_secs > 0 {
                println!(
                    "One more monitor ({}, bed 99A) reports for {dropout_after_secs} s, drops out for {dropout_secs} s, and comes back: device.offline is raised and resolved.",
                    vigil::demo_monitor::DEVICE
                );
            }
            println!("Open the console:\n\n    http://{}/#token={token}\n", running.http_addr);
            println!("WebSocket: ws://{}/ws?token=<token>   Stop with Ctrl-C.\n", running.http_addr);
            wait_for_signal().await;
            let _ = stop.send(true);
            stop_monitor.cancel();
            if let Some(dropout) = dropout {
                let _ = dropout.await;
            }
            match ward.await {
                Ok(Ok(stats)) => {
                    tracing::info!(sent = stats.sent, acked = stats.acked, naks = stats.naks, "ward stopped")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "ward failed"),
                Err(e) => tracing::warn!(error = %e, "ward task failed"),
            }
            running.shutdown().await;
        }
        Command::Rules(command) => std::process::exit(vigil::rules::cli::run(command)),
        Command::Keys(args) => vigil::crypto::cli::run(&args)?,
        Command::Audit(command) => std::process::exit(vigil::audit::cli::run(command)?),
        Command::Store(command) => std::process::exit(vigil::store::recover::cli::run(command)?),
        Command::Token { role, units, sub, hours, serve } => {
            let config = Config::load(&serve)?;
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
            let auth = app::load_auth(&config)?;
            anyhow::ensure!(
                auth.can_issue(),
                "this server verifies tokens from an identity provider ({}); it holds no key to issue them",
                config.auth_algorithm
            );
            let max = config.token_policy.max_lifetime_secs;
            anyhow::ensure!(
                hours.saturating_mul(3600) <= max,
                "--hours {hours} is longer than auth.max_token_lifetime_secs ({max} s): the server would refuse the token"
            );
            println!("{}", auth.issue(&sub, role, units, time::Duration::hours(hours)));
        }
    }
    Ok(())
}
