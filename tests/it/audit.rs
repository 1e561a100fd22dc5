//! The audit log is tamper-evident: an attacker with the data directory but not the key (kept
//! beside it, never in it) edits, deletes, reorders or inserts records in the raw keyspace —
//! through the engine, so its own checksums are right — and `vigil audit verify` says where.

use std::path::Path;
use std::process::Command;

use fjall::{Database, KeyspaceCreateOptions};
use vigil::audit::{AuditKey, AuditLog};

use crate::support::*;

/// A data directory whose audit log holds `n` records, written as the server writes them.
fn audit_dir(tag: &str, n: u64) -> TestDir {
    let dir = tempdir(tag);
    let key = AuditKey::load_or_create(&vigil::config::default_keys_dir(&dir).join("audit.key")).unwrap();
    let log = AuditLog::open(Database::builder(dir.join("fjall")).open().unwrap(), key).unwrap();
    for i in 1..=n {
        log.record(&format!("nurse-{i}"), "nurse", "view_patient", &format!("P-{i}"), "ok");
    }
    log.persist();
    dir
}

/// The raw keyspace, as someone with the data directory and the fjall crate sees it.
fn tamper(dir: &Path, change: impl FnOnce(&fjall::Keyspace)) {
    let db = Database::builder(dir.join("fjall")).open().unwrap();
    let chain = db.keyspace("audit_chain", KeyspaceCreateOptions::default).unwrap();
    change(&chain);
    db.persist(fjall::PersistMode::SyncAll).unwrap();
}

fn get(chain: &fjall::Keyspace, seq: u64) -> serde_json::Value {
    serde_json::from_slice(&chain.get(seq.to_be_bytes()).unwrap().unwrap()).unwrap()
}

fn put(chain: &fjall::Keyspace, seq: u64, value: &serde_json::Value) {
    chain.insert(seq.to_be_bytes(), serde_json::to_vec(value).unwrap()).unwrap();
}

/// `vigil audit <args>` on `dir`: exit code and stdout.
fn vigil_audit(dir: &Path, args: &[&str]) -> (i32, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_vigil")).arg("audit").args(args).arg("--data-dir").arg(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    assert!(code == 0 || code == 1, "audit {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    (code, stdout)
}

fn assert_detected(dir: &Path, expected: &[&str]) {
    let (code, out) = vigil_audit(dir, &["verify"]);
    assert_eq!(code, 1, "verify passed a tampered log:\n{out}");
    for line in expected {
        assert!(out.contains(line), "{line:?} not reported:\n{out}");
    }
}

#[test]
fn audit_verify_passes_an_intact_log_and_list_reads_a_time_range() {
    let dir = audit_dir("audit-ok", 10);
    let (code, out) = vigil_audit(&dir, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: 10 records; head 10 "), "{out}");

    let (_, all) = vigil_audit(&dir, &["list"]);
    let records: Vec<serde_json::Value> = all.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 10);
    assert_eq!(records[3]["seq"], 4);
    assert_eq!(records[3]["user"], "nurse-4");
    let fourth = records[3]["at"].as_str().unwrap();
    let seventh = records[6]["at"].as_str().unwrap();
    let (_, some) = vigil_audit(&dir, &["list", "--since", fourth, "--until", seventh]);
    let seqs: Vec<u64> =
        some.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    // Records written within the same nanosecond share a time; the range holds 4..=6 at least.
    assert!(seqs.contains(&4) && seqs.contains(&6) && !seqs.contains(&7) && !seqs.contains(&3), "{seqs:?}");
}

#[test]
fn audit_verify_detects_an_edited_record() {
    let dir = audit_dir("audit-edit", 10);
    tamper(&dir, |chain| {
        let mut record = get(chain, 4);
        record["outcome"] = "denied: unit not in token".into();
        put(chain, 4, &record);
    });
    assert_detected(&dir, &["record 4 (", "edited or forged"]);
}

#[test]
fn audit_verify_detects_a_deleted_record_in_the_middle_and_at_the_end() {
    let dir = audit_dir("audit-delete", 10);
    tamper(&dir, |chain| chain.remove(5u64.to_be_bytes()).unwrap());
    assert_detected(&dir, &["record 6 (", "deleted: records 5..5 are missing", "chain broken"]);

    let dir = audit_dir("audit-truncate", 10);
    tamper(&dir, |chain| {
        chain.remove(9u64.to_be_bytes()).unwrap();
        chain.remove(10u64.to_be_bytes()).unwrap();
    });
    assert_detected(&dir, &["deleted: the head names record 10, the chain ends at 8"]);
}

#[test]
fn audit_verify_detects_reordered_records() {
    let dir = audit_dir("audit-reorder", 10);
    tamper(&dir, |chain| {
        let (third, seventh) = (get(chain, 3), get(chain, 7));
        put(chain, 3, &seventh);
        put(chain, 7, &third);
    });
    assert_detected(&dir, &["record 3 (", "moved: the record stored as 3 says it is 7", "record 7 ("]);
}

#[test]
fn audit_verify_detects_inserted_records() {
    // A forged record appended after the last one, chained to it as well as the attacker can.
    let dir = audit_dir("audit-insert", 10);
    tamper(&dir, |chain| {
        let mut forged = get(chain, 10);
        forged["seq"] = 11.into();
        forged["prev"] = forged["mac"].clone();
        forged["user"] = "intruder".into();
        forged["mac"] = "00".repeat(32).into();
        put(chain, 11, &forged);
    });
    assert_detected(&dir, &["record 11 (", "edited or forged", "the head names record 10, the chain ends at 11"]);

    // A copy of a genuine record slipped in between two others under a key of its own.
    let dir = audit_dir("audit-insert-between", 10);
    tamper(&dir, |chain| {
        let copy = get(chain, 2);
        chain.insert([0, 0, 0, 0, 0, 0, 0, 2, 0], serde_json::to_vec(&copy).unwrap()).unwrap();
    });
    assert_detected(&dir, &["inserted: key 000000000000000200 is not a record number"]);
}

/// Everything the server writes under its data and key directories is private to the service
/// user: directories 0700, files 0600 (umask 077 at start; the data directory is tightened
/// when it exists with wider permissions).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_audit_and_key_files_are_private_to_the_service_user() {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = tempdir("perms");
    let data = dir.join("data");
    std::fs::DirBuilder::new().mode(0o755).create(&data).unwrap();
    let data_arg = data.to_str().unwrap().to_string();
    let rules = rules_dir();
    let args = vigil_args("serve", &data_arg, rules.to_str().unwrap(), &[]);
    let proc = spawn_vigil(&args);
    // A message, a token and an audited request: the store, the audit log and keys are written.
    let mut client =
        vigil_loadtest::mllp::MllpClient::connect(&proc.mllp.to_string(), std::time::Duration::from_secs(10))
            .await
            .unwrap();
    let ack = client.send(&septic_oru("PERM-1", "MRN-PERM", "Private")).await.unwrap();
    assert_eq!(vigil_loadtest::mllp::ack_code(&ack), Some("AA"));
    let token = vigil_token(&data, "ICU");
    let mut ws = ws_connect(proc.http, &token).await;
    ws_send(&mut ws, serde_json::json!({"type": "subscribe", "units": ["ICU"]})).await;
    ws_next(&mut ws, &["snapshot"], std::time::Duration::from_secs(10)).await;
    drop(ws);
    drop(proc);

    let mut checked = 0;
    let mut wide = Vec::new();
    let mut pending = vec![data.clone(), vigil::config::default_keys_dir(&data)];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        checked += 1;
        if meta.is_dir() {
            if mode != 0o700 {
                wide.push(format!("{} {mode:o}", path.display()));
            }
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if mode & 0o077 != 0 {
            wide.push(format!("{} {mode:o}", path.display()));
        }
    }
    assert!(checked > 10, "only {checked} paths under the data and key directories");
    assert!(wide.is_empty(), "readable beyond the service user: {wide:#?}");
    assert!(vigil::config::default_keys_dir(&data).join("audit.key").exists());
}
