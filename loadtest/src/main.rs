//! `vigil-loadtest` command line: run the demo ward, send one HL7 file, drive an open-loop load
//! test, or count flapping alerts on the console WebSocket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::io::AsyncReadExt as _;
use tracing_subscriber::EnvFilter;
use vigil_loadtest::fhir::{FhirBenchConfig, run_fhir_bench};
use vigil_loadtest::flapwatch::{FlapwatchConfig, run_flapwatch};
use vigil_loadtest::mllp::{MllpClient, ack_code};
use vigil_loadtest::rate::{RateConfig, run_rate};
use vigil_loadtest::report::Slo;
use vigil_loadtest::ward::{WardConfig, run_ward};

/// HL7 files are single messages; anything this large is the wrong file.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "vigil-loadtest",
    version,
    about = "Simulators and open-loop load generator for Vigil (synthetic data only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a ward of monitored synthetic patients until Ctrl-C.
    Ward {
        /// Vigil MLLP listener (host:port).
        #[arg(long, env = "VIGIL_MLLP", default_value = "127.0.0.1:2575")]
        mllp: String,
        /// Occupied beds.
        #[arg(long, default_value_t = 12)]
        beds: usize,
        /// Mean milliseconds between messages from one bed.
        #[arg(long, default_value_t = 3000)]
        interval_ms: u64,
        /// Patients drifting towards sepsis.
        #[arg(long, default_value_t = 2)]
        deteriorating: usize,
        /// Seconds for a deteriorating patient to reach full sepsis.
        #[arg(long, default_value_t = 180)]
        deterioration_secs: u64,
        /// Point of care written to PV1-3 (repeat to split the beds over several units,
        /// e.g. `--beds 40 --unit ICU --unit 5W`).
        #[arg(long = "unit", default_values_t = ["ICU".to_owned()])]
        units: Vec<String>,
        /// Seed for patients and noise.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Vigil HTTP listener for beds behind a FHIR gateway (with --fhir-token).
        #[arg(long, env = "VIGIL_HTTP")]
        fhir_http: Option<String>,
        /// Gateway token (`vigil token --role gateway`).
        #[arg(long, env = "VIGIL_GATEWAY_TOKEN")]
        fhir_token: Option<String>,
        /// Every n-th bed sends its vitals over FHIR (0: none).
        #[arg(long, default_value_t = 4)]
        fhir_every: usize,
    },
    /// FHIR throughput: Observations by single POSTs, then over one NDJSON `$stream`; prints
    /// a Markdown line. Patients are sent under the simulator's identifier system.
    Fhir {
        /// Vigil HTTP listener (host:port).
        #[arg(long, env = "VIGIL_HTTP", default_value = "127.0.0.1:8080")]
        http: String,
        /// Gateway token (`vigil token --role gateway`).
        #[arg(long, env = "VIGIL_GATEWAY_TOKEN")]
        token: String,
        /// Observations sent by single POSTs.
        #[arg(long, default_value_t = 20_000)]
        posts: usize,
        /// Connections for the single POSTs.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Observations sent over one `$stream` request.
        #[arg(long, default_value_t = 50_000)]
        stream_lines: usize,
        /// Distinct synthetic patients.
        #[arg(long, default_value_t = 500)]
        patients: usize,
    },
    /// Send one HL7 v2 file (LF or CRLF line endings are converted to CR) and print the ACK.
    Send {
        /// Vigil MLLP listener (host:port).
        #[arg(long, env = "VIGIL_MLLP", default_value = "127.0.0.1:2575")]
        mllp: String,
        /// Seconds to wait for the connection and for the ACK.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
        /// The HL7 message file.
        file: PathBuf,
    },
    /// Watch the console WebSocket and count alerts raised again soon after being resolved;
    /// prints a Markdown report.
    Flapwatch {
        /// Console WebSocket, e.g. ws://127.0.0.1:8080/ws.
        #[arg(long, env = "VIGIL_WS", default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        /// Console token (`vigil token --unit '*'`); sent as a Bearer header.
        #[arg(long, env = "VIGIL_TOKEN")]
        token: String,
        /// Units to watch (repeat); none = every unit in the token.
        #[arg(long = "unit")]
        units: Vec<String>,
        /// Seconds to watch.
        #[arg(long, default_value_t = 300)]
        duration: u64,
        /// A new alert within this many seconds of a resolved one (same patient, rule and
        /// finding) counts as raised again.
        #[arg(long, default_value_t = 60)]
        window: u64,
    },
    /// The echo baseline on its own: an MLLP server that answers every frame AA and does
    /// nothing else, for comparing a server with what the machine and harness carry.
    EchoServer {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:2576")]
        listen: String,
    },
    /// The disk's flush floor on its own: `fdatasync` after each 4 KiB append in a scratch file
    /// in DIR (removed after). No durable ACK is faster than one flush of the disk that holds
    /// the server's data.
    FsyncProbe {
        /// A directory on the disk to measure (the server's data directory).
        #[arg(long)]
        dir: PathBuf,
        /// Flushes to time (at most 16,384).
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Run a scenario file (loadtest/scenarios/*.toml) against Vigil: live progress, then a
    /// terminal table, and optionally JSON and a self-contained HTML report; `--slo` sets the
    /// exit code (2 when an objective is not met).
    Run(Box<RunArgs>),
    /// Open-loop load test; prints a Markdown report.
    Rate {
        /// Vigil MLLP listener (host:port).
        #[arg(long, env = "VIGIL_MLLP", default_value = "127.0.0.1:2575")]
        mllp: String,
        /// Target messages per second.
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Concurrent MLLP connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Distinct synthetic patients.
        #[arg(long, default_value_t = 500)]
        patients: usize,
        /// First run the same load against an in-process echo server and report the rate as a
        /// fraction of the echo's.
        #[arg(long)]
        baseline: bool,
        /// How senders wait for each intended send time: `precise` (a timer thread of the
        /// harness's own) or `tick` (tokio's millisecond timer).
        #[arg(long, value_enum, default_value_t = vigil_loadtest::pace::Pacing::Precise)]
        pacing: vigil_loadtest::pace::Pacing,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scenario file.
    #[arg(long, short = 's')]
    scenario: PathBuf,
    /// Vigil MLLP listener (host:port).
    #[arg(long, env = "VIGIL_MLLP", default_value = "127.0.0.1:2575")]
    mllp: String,
    /// Vigil HTTP listener (host:port): consoles, FHIR, /metrics.
    #[arg(long, env = "VIGIL_HTTP")]
    http: Option<String>,
    /// Console token for the consoles (`vigil token --unit '*'`).
    #[arg(long, env = "VIGIL_TOKEN")]
    token: Option<String>,
    /// Gateway token for the FHIR load (`vigil token --role gateway`).
    #[arg(long, env = "VIGIL_GATEWAY_TOKEN")]
    gateway_token: Option<String>,
    /// The server's process id: RSS and CPU sampled from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Read the per-stage histograms from /metrics (needs --http) before and after the window.
    #[arg(long)]
    stages: bool,
    /// Bearer token for /metrics when `[http] metrics_require_auth` is set.
    #[arg(long, env = "VIGIL_METRICS_TOKEN")]
    metrics_token: Option<String>,
    /// Override the scenario's rate (msg/s at full load).
    #[arg(long)]
    rate: Option<f64>,
    /// Override the measured seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Override the warm-up seconds.
    #[arg(long)]
    warmup: Option<f64>,
    /// Override the ramp seconds.
    #[arg(long)]
    ramp: Option<f64>,
    /// Override the MLLP connections.
    #[arg(long)]
    connections: Option<usize>,
    /// Override how senders wait for each intended send time: `precise` (a timer thread of
    /// the harness's own) or `tick` (tokio's millisecond timer, as before).
    #[arg(long, value_enum)]
    pacing: Option<vigil_loadtest::pace::Pacing>,
    /// Override the number of consoles (0: none).
    #[arg(long)]
    consoles: Option<usize>,
    /// Override the FHIR Observations/s (scenarios with a `[fhir]` section).
    #[arg(long)]
    fhir_rate: Option<f64>,
    /// First run the scenario's MLLP schedule against an in-process echo server, and state the
    /// rate as a fraction of the echo's.
    #[arg(long)]
    baseline: bool,
    /// Run against an in-process echo server only (no Vigil): the harness's own ceiling.
    #[arg(long, conflicts_with = "baseline")]
    echo: bool,
    /// Before the run, time 500 `fdatasync`s of 4 KiB appends in this directory (the server's
    /// data directory, or one on the same disk) and report them beside the ACK latency: the
    /// floor under every durable ACK. Metric `fsync.p99` etc. in `--slo`.
    #[arg(long)]
    fsync_dir: Option<PathBuf>,
    /// Objectives, e.g. `ack.p99<=10ms`, `alert.p99<=20ms`, `errors==0` (repeat or separate
    /// with commas); any not met exits with 2.
    #[arg(long, value_delimiter = ',')]
    slo: Vec<Slo>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// No live progress.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Ward {
            mllp,
            beds,
            interval_ms,
            deteriorating,
            deterioration_secs,
            units,
            seed,
            fhir_http,
            fhir_token,
            fhir_every,
        } => {
            let fhir = match (fhir_http, fhir_token) {
                (Some(http_addr), Some(token)) => {
                    Some(vigil_loadtest::ward::FhirGateway { http_addr, token, every: fhir_every })
                }
                _ => None,
            };
            let cfg = WardConfig {
                beds,
                interval: Duration::from_millis(interval_ms),
                deteriorating,
                deterioration_period: Duration::from_secs(deterioration_secs),
                recover_after: None,
                units,
                seed,
                fhir,
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!("Ctrl-C received; stopping ward");
                }
                // On a signal-handler failure stopping is also the safe choice.
                let _ = tx.send(true);
            });
            let stats = run_ward(mllp, cfg, rx).await?;
            println!("sent {} acked {} naks {} errors {}", stats.sent, stats.acked, stats.naks, stats.errors);
        }
        Command::Send { mllp, timeout_secs, file } => {
            let message = read_hl7_file(&file).await?;
            let timeout = Duration::from_secs(timeout_secs);
            let mut client =
                MllpClient::connect(&mllp, timeout).await.with_context(|| format!("connecting to {mllp}"))?;
            let ack = client.send(&message).await.context("sending message")?;
            println!("{}", ack.replace('\r', "\n").trim_end());
            match ack_code(&ack) {
                Some("AA" | "CA") => {}
                code => anyhow::bail!("message not accepted (MSA-1 {})", code.unwrap_or("missing")),
            }
        }
        Command::Flapwatch { url, token, units, duration, window } => {
            let report = run_flapwatch(FlapwatchConfig {
                url,
                token,
                units,
                duration: Duration::from_secs(duration),
                window: Duration::from_secs(window),
            })
            .await?;
            print!("{}", report.to_markdown());
        }
        Command::Rate { mllp, rate, duration, connections, patients, baseline, pacing } => {
            let cfg = RateConfig {
                addr: mllp,
                rate_per_sec: rate,
                duration: Duration::from_secs(duration),
                connections,
                patients,
                pacing,
            };
            let echo = if baseline {
                let (addr, stop, _task) = vigil_loadtest::echo::spawn("127.0.0.1:0").await?;
                let echo = run_rate(RateConfig { addr, ..cfg.clone() }).await?;
                let _ = stop.send(true);
                Some(echo)
            } else {
                None
            };
            let report = run_rate(cfg).await?;
            print!("{}", report.to_markdown());
            if let Some(echo) = echo {
                println!(
                    "\nEcho baseline, same load, same run: {:.1} msg/s (ACK p99 {:.3} ms); Vigil carried {:.1} % of it.",
                    echo.achieved_rate,
                    echo.p99_us as f64 / 1000.0,
                    report.achieved_rate / echo.achieved_rate.max(1e-9) * 100.0
                );
            }
        }
        Command::FsyncProbe { dir, count } => {
            let floor = tokio::task::spawn_blocking(move || vigil_loadtest::disk::probe(&dir, count)).await??;
            let l = &floor.fsync;
            println!(
                "fdatasync after a {} B append in {}, {} times: mean {:.3} ms, p50 {:.3} ms, p90 {:.3} ms, \
                 p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
                floor.write_bytes, floor.dir, l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        Command::EchoServer { listen } => {
            let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
            tracing::info!(addr = %listener.local_addr()?, "echo server answering AA; Ctrl-C stops");
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = tx.send(true);
            });
            vigil_loadtest::echo::serve(listener, rx).await;
        }
        Command::Run(args) => {
            let met = vigil_loadtest::cli::run_scenario(args.into_options()).await?;
            if !met {
                std::process::exit(2);
            }
        }
        Command::Fhir { http, token, posts, connections, stream_lines, patients } => {
            let r = run_fhir_bench(FhirBenchConfig { addr: http, token, posts, connections, stream_lines, patients })
                .await?;
            println!("| mode | Observations | stored (201) | rate |\n|---|---|---|---|");
            println!(
                "| single POST, {connections} connections | {posts} | {} | {:.0} /s |",
                r.posts_created, r.posts_per_sec
            );
            println!(
                "| NDJSON `$stream`, 1 request | {stream_lines} | {} | {:.0} /s |",
                r.stream_created, r.stream_per_sec
            );
            if r.refused > 0 {
                println!("\n{} answers were not 201", r.refused);
            }
        }
    }
    Ok(())
}

impl RunArgs {
    fn into_options(self) -> vigil_loadtest::cli::RunOptions {
        vigil_loadtest::cli::RunOptions {
            scenario: self.scenario,
            target: vigil_loadtest::load::Target {
                mllp: self.mllp,
                http: self.http,
                console_token: self.token,
                gateway_token: self.gateway_token,
                pid: self.pid,
                scrape_metrics: self.stages,
                metrics_token: self.metrics_token,
            },
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            ramp: self.ramp,
            connections: self.connections,
            pacing: self.pacing,
            consoles: self.consoles,
            fhir_rate: self.fhir_rate,
            baseline: self.baseline,
            echo_only: self.echo,
            fsync_dir: self.fsync_dir,
            slo: self.slo,
            json: self.json,
            html: self.html,
            progress: !self.quiet,
        }
    }
}

async fn read_hl7_file(path: &PathBuf) -> anyhow::Result<String> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .await
        .with_context(|| format!("reading {} as UTF-8", path.display()))?;
    anyhow::ensure!(text.len() as u64 <= MAX_FILE_BYTES, "{} is larger than {MAX_FILE_BYTES} bytes", path.display());
    Ok(to_hl7_segments(&text))
}

/// Normalises line endings to HL7's CR segment terminator and drops blank lines.
fn to_hl7_segments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split(['\r', '\n']).filter(|l| !l.trim().is_empty()) {
        out.push_str(line);
        out.push('\r');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn line_endings_become_cr() {
        assert_eq!(to_hl7_segments("MSH|a\r\nPID|b\n\nOBX|c"), "MSH|a\rPID|b\rOBX|c\r");
    }
}
