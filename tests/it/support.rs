//! Shared test support: servers on port 0 (in-process or as the real binary), HL7 messages,
//! WebSocket clients.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use vigil::config::{Config, ServeArgs};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A data directory for one test, removed with everything beside it (the key files Vigil
/// keeps next to the data directory) when the test ends.
pub struct TestDir {
    _root: tempfile::TempDir,
    path: PathBuf,
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for TestDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

pub fn tempdir(tag: &str) -> TestDir {
    let root = tempfile::Builder::new().prefix(&format!("vigil-it-{tag}-")).tempdir().unwrap();
    let path = root.path().join("data");
    std::fs::create_dir_all(&path).unwrap();
    TestDir { _root: root, path }
}

/// A data directory on a memory-backed filesystem (`/dev/shm`) where there is one, else
/// [`tempdir`]. For tests that time a server's handling of connections rather than its disk:
/// every AA waits for an fsync, and on a disk shared with parallel tests and builds one fsync
/// was measured at 1.9 s (a 4 GB write beside the slow-drip test) while the CPU's wake-up lag
/// stayed under 80 ms. fsync on tmpfs returns at once, so what such a test times is the server.
pub fn memory_tempdir(tag: &str) -> TestDir {
    let shm = Path::new("/dev/shm");
    let root = match tempfile::Builder::new().prefix(&format!("vigil-it-{tag}-")).tempdir_in(shm) {
        Ok(root) => root,
        Err(e) => {
            eprintln!("no memory-backed filesystem at {} ({e}): {tag} uses the disk", shm.display());
            return tempdir(tag);
        }
    };
    let path = root.path().join("data");
    std::fs::create_dir_all(&path).unwrap();
    TestDir { _root: root, path }
}

pub fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

pub fn config(data_dir: &Path) -> Config {
    Config::load(&ServeArgs {
        mllp_addr: Some("127.0.0.1:0".parse().unwrap()),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data_dir.to_path_buf()),
        rules_dir: Some(rules_dir()),
        config: None,
    })
    .unwrap()
}

/// A configuration whose only rule is qSOFA: for tests of the protocol and delivery, where
/// one message must raise exactly one alert whatever else the shipped pack grows to.
pub fn config_qsofa_only(data_dir: &Path) -> Config {
    let rules = data_dir.join("rules-qsofa-only");
    std::fs::create_dir_all(rules.join("data")).unwrap();
    std::fs::copy(rules_dir().join("sepsis_qsofa.rhai"), rules.join("sepsis_qsofa.rhai")).unwrap();
    // qSOFA's criteria are its table in data/scores.json.
    std::fs::copy(rules_dir().join("data").join("scores.json"), rules.join("data").join("scores.json")).unwrap();
    let mut config = config(data_dir);
    config.rules_dir = rules;
    config
}

/// HL7 DTM for now.
pub fn now_dtm() -> String {
    vigil::ingest::hl7_timestamp(time::OffsetDateTime::now_utc())
}

/// An ORU^R01 (IHE PCD-01 shape) whose vitals give qSOFA 2 (RR 26, SBP 92) in original mode.
pub fn septic_oru(control_id: &str, mrn: &str, family: &str) -> String {
    let ts = now_dtm();
    [
        format!("MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|{ts}||ORU^R01^ORU_R01|{control_id}|P|2.6"),
        format!("PID|||{mrn}^^^HOSP^MR||{family}^Test||19600101|M"),
        "PV1||I|ICU^04^B".to_string(),
        format!("OBR|1|{control_id}|{control_id}|182777000^monitoring of patient^SCT|||{ts}"),
        format!("OBX|1|NM|151562^MDC_RESP_RATE^MDC|1.2.1.1|26|264928^MDC_DIM_RESP_PER_MIN^MDC|||||R|||{ts}||||MON-7"),
        format!(
            "OBX|2|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.4.1.1|92|266016^MDC_DIM_MMHG^MDC|||||R|||{ts}||||MON-7"
        ),
        format!(
            "OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|118|264864^MDC_DIM_BEAT_PER_MIN^MDC|||||R|||{ts}||||MON-7"
        ),
    ]
    .join("\r")
}

pub async fn ws_connect(http: SocketAddr, token: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws?token={token}")).await.unwrap();
    ws
}

pub async fn ws_send(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into())).await.unwrap();
}

/// The next JSON frame whose `type` is one of `types`, skipping heartbeats and others.
pub async fn ws_next(ws: &mut Ws, types: &[&str], within: Duration) -> serde_json::Value {
    tokio::time::timeout(within, async {
        loop {
            let msg = ws.next().await.expect("websocket closed").expect("websocket error");
            if let Message::Text(text) = msg {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if types.contains(&v["type"].as_str().unwrap_or_default()) {
                    return v;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {types:?} frame within {within:?}"))
}

/// The real `vigil` binary as a child process, with its announced addresses.
pub struct Proc {
    pub child: Child,
    pub mllp: SocketAddr,
    pub http: SocketAddr,
    pub _stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Proc {
    /// Collect the rest of the child's stdout (where it logs) line by line, from a thread, so
    /// the pipe never fills and blocks the child's logging.
    pub fn collect_stdout(&mut self) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(stdout) = self._stdout.take() {
            let sink = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        lines
    }
}

/// Arguments for `vigil <command>` on ephemeral ports with `data` and `rules`, then `extra`.
pub fn vigil_args<'a>(command: &'a str, data: &'a str, rules: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        command,
        "--mllp-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--rules-dir",
        rules,
    ];
    args.extend_from_slice(extra);
    args
}

// The child is waited for by `Proc::drop`, or just before the panic when it never listened;
// clippy cannot see the drop.
pub fn spawn_vigil(args: &[&str]) -> Proc {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    command.args(args).env("VIGIL_LOG", "warn").stderr(Stdio::inherit());
    spawn_command(command)
}

/// Start `command` (the vigil binary, perhaps behind a wrapper such as `prlimit`) and wait for
/// it to announce its addresses on stdout.
#[allow(clippy::zombie_processes)]
pub fn spawn_command(mut command: Command) -> Proc {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("vigil exited before listening: {status:?}");
        }
        if let Some(rest) = line.trim().strip_prefix("vigil listening: ") {
            let mut mllp = None;
            let mut http = None;
            for part in rest.split_whitespace() {
                if let Some(a) = part.strip_prefix("mllp=") {
                    mllp = a.parse().ok();
                }
                if let Some(a) = part.strip_prefix("http=") {
                    http = a.parse().ok();
                }
            }
            return Proc { child, mllp: mllp.unwrap(), http: http.unwrap(), _stdout: Some(stdout) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn vigil_token(data_dir: &Path, unit: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["token", "--role", "rrt", "--unit", unit, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Control ids of every stored event of the given HOSP MRNs, read from the data dir of a
/// server that is no longer running.
pub async fn stored_control_ids(dir: &Path, mrns: &[String]) -> Vec<String> {
    let index = blind_index(dir);
    let store = open_store(dir);
    let mut ids = Vec::new();
    for mrn in mrns {
        let events =
            store.recorded_events(&index.patient_id("HOSP", mrn), time::OffsetDateTime::UNIX_EPOCH).await.unwrap();
        ids.extend(events.into_iter().map(|e| e.message.expect("every received event names its message").id));
    }
    ids
}

pub fn open_store(dir: &Path) -> vigil::store::EmbeddedStore {
    let publisher = std::sync::Arc::new(vigil_actors::fakes::CollectingPublisher::default());
    let keys =
        vigil::crypto::KeyRing::load_or_create(&vigil::config::default_keys_dir(dir).join("field.keys")).unwrap();
    vigil::store::EmbeddedStore::open(
        dir,
        vigil::store::EmbeddedStoreConfig::default(),
        std::sync::Arc::new(keys),
        publisher,
    )
    .unwrap()
}

/// The blind index a server on `dir` used (its key lives beside the data dir, never in it).
pub fn blind_index(dir: &Path) -> vigil::crypto::BlindIndex {
    let key = vigil::crypto::load_or_create_key(&vigil::config::default_keys_dir(dir).join("index.key")).unwrap();
    vigil::crypto::BlindIndex::new(&key)
}

/// Every stored event of a patient (assigning authority + MRN), read from the data dir of a
/// server that is no longer running.
pub async fn stored_events(dir: &Path, authority: &str, mrn: &str) -> Vec<vigil_actors::RecordedEvent> {
    let index = blind_index(dir);
    let store = open_store(dir);
    store.recorded_events(&index.patient_id(authority, mrn), time::OffsetDateTime::UNIX_EPOCH).await.unwrap()
}

/// A test CA (`ca.pem`) and a `localhost` / 127.0.0.1 server certificate it signs
/// (`cert.pem`, `key.pem`) in `dir`, made with the openssl CLI: (ca, cert, key).
pub fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let (ca_key, ca, key, csr, cert, ext) =
        (path("ca.key"), path("ca.pem"), path("key.pem"), path("leaf.csr"), path("cert.pem"), path("ext.cnf"));
    // webpki refuses a CA as the end entity: a CA, and a leaf it signs.
    let steps: [Vec<&str>; 3] = [
        [&["req", "-x509", "-days", "1", "-subj", "/CN=Vigil Test CA"][..], &ec, &["-keyout", &ca_key, "-out", &ca]]
            .concat(),
        [&["req", "-subj", "/CN=localhost"][..], &ec, &["-keyout", &key, "-out", &csr]].concat(),
        vec![
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-extfile",
            &ext,
        ],
    ];
    for args in steps {
        let status = Command::new("openssl")
            .args(&args)
            .stderr(Stdio::null())
            .status()
            .expect("openssl makes the test certificates");
        assert!(status.success(), "openssl {args:?}");
    }
    (PathBuf::from(ca), PathBuf::from(cert), PathBuf::from(key))
}

/// A TLS connection to `addr` as `localhost`, trusting only the test CA in `ca` (see
/// [`test_certificates`]).
pub async fn tls_connect(
    ca: &Path,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}
