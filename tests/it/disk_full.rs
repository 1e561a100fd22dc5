//! The embedded store's disk fills up: the real binary on a small tmpfs (mounted by the test;
//! it needs root, as CI has, and says SKIPPED otherwise). Messages the store cannot make durable
//! are answered AE, never AA; `/readyz` turns 503; the log says why. fjall poisons its database
//! on a failed journal write, so recovery is a restart once space is back: the store opens (the
//! torn tail of the journal is dropped), everything acknowledged before is there, the journal
//! checks clean, and the refused messages, resent, are accepted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vigil_loadtest::mllp::{MllpClient, ack_code};

use crate::support::*;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn readyz(http: std::net::SocketAddr) -> u16 {
    let Ok(mut stream) = tokio::net::TcpStream::connect(http).await else { return 0 };
    let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n").await;
    let mut head = [0u8; 12];
    let _ = stream.read_exact(&mut head).await;
    std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Fills the filesystem of `dir` until a write fails; the file holding the space.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![0xa5u8; chunk];
        while file.write_all(&block).and_then(|()| file.flush()).is_ok() {}
    }
    path
}

fn spawn(data: &str, rules: &str, config: &str) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    command
        .args(vigil_args("serve", data, rules, &["--config", config]))
        .env("VIGIL_LOG", "warn")
        .stderr(Stdio::inherit());
    spawn_command(command)
}

async fn send(addr: std::net::SocketAddr, id: &str) -> String {
    let mut client = MllpClient::connect(&addr.to_string(), Duration::from_secs(30)).await.unwrap();
    let ack = client.send(&septic_oru(id, "MRN-DISK", "Disk")).await.unwrap();
    ack_code(&ack).unwrap_or("?").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_ae_not_aa_turns_readiness_off_and_a_restart_with_space_loses_nothing() {
    let root = tempfile::Builder::new().prefix("vigil-it-diskfull-").tempdir().unwrap();
    let mnt = root.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs"]).arg(&mnt).status();
    if !matches!(mounted, Ok(status) if status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root, as CI has)");
        return;
    }
    let _mounted = Mounted(mnt.clone());
    let data = mnt.join("data");
    let data_str = data.to_str().unwrap().to_string();
    let rules = rules_dir();
    let rules_str = rules.to_str().unwrap();
    let config = root.path().join("vigil.toml");
    // A message waits 1 s for the store, then is answered AE.
    std::fs::write(&config, "[store]\nunavailable_ack_delay_secs = 1\n").unwrap();
    let config_str = config.to_str().unwrap();
    let mut proc = spawn(&data_str, rules_str, config_str);
    // Where the server logs.
    let logged = proc.collect_stdout();
    let mut accepted = Vec::new();
    for i in 0..20 {
        let id = format!("DISK-{i}");
        assert_eq!(send(proc.mllp, &id).await, "AA");
        accepted.push(id);
    }
    assert_eq!(readyz(proc.http).await, 200);

    let ballast = fill(&mnt);
    // The journal's current page may still take a message or two (then they are durable and
    // acknowledged); from the first refused write on, nothing is acknowledged.
    let mut refused = Vec::new();
    for i in 20..60 {
        let id = format!("DISK-{i}");
        match send(proc.mllp, &id).await.as_str() {
            "AA" => {
                assert!(refused.is_empty(), "{id} acknowledged AA after the store refused a write");
                accepted.push(id);
            }
            "AE" => refused.push(id),
            other => panic!("{id} answered {other}"),
        }
        if refused.len() == 5 {
            break;
        }
    }
    assert_eq!(refused.len(), 5, "the full disk was never noticed");
    let started = Instant::now();
    while readyz(proc.http).await != 503 {
        assert!(started.elapsed() < Duration::from_secs(10), "readiness stays on with the disk full");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = logged.lock().unwrap().join("\n");
    assert!(log.contains("refused a write"), "the log says what happened:\n{log}");
    assert!(log.contains("No space left on device") || log.contains("os error 28"), "and why:\n{log}");
    drop(proc); // kill -9, as an operator's restart after a wedged store may be

    // Space returns; the server restarts on the same data.
    std::fs::remove_file(&ballast).unwrap();
    let check =
        Command::new(env!("CARGO_BIN_EXE_vigil")).args(["store", "check", "--data-dir", &data_str]).output().unwrap();
    assert!(check.status.success(), "the journal checks clean: {}", String::from_utf8_lossy(&check.stdout));
    let proc = spawn(&data_str, rules_str, config_str);
    assert_eq!(readyz(proc.http).await, 200);
    for id in &refused {
        assert_eq!(send(proc.mllp, id).await, "AA", "{id} resent once space is back");
    }
    drop(proc);
    let stored: std::collections::HashSet<String> =
        stored_control_ids(&data, &["MRN-DISK".to_string()]).await.into_iter().collect();
    for id in accepted.iter().chain(&refused) {
        assert!(stored.contains(id), "{id} acknowledged AA but not stored");
    }
    println!(
        "disk full: {} AA before, {} AE while full, all {} stored after the restart",
        accepted.len(),
        refused.len(),
        stored.len()
    );
}
