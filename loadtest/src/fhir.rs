//! FHIR side of the simulators: the vitals of a PCD-01 message as FHIR R4 Observations (the
//! blood-pressure panel with its components, MDC and LOINC codes, the monitor's EUI-64 under
//! the PHD system), a minimal keep-alive HTTP/1.1 client for Vigil's `/fhir` routes, and the
//! FHIR throughput benchmark (single POSTs and the NDJSON `$stream`). Synthetic data only.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::pcd01::{PatientDemo, Vitals, eui64};

/// The identifier system the simulator's MRNs are sent under over FHIR; Vigil must map it to
/// the HL7 namespace of the same patients (`[fhir.identifier_systems] VIGIL_SIM = ...`), as
/// `vigil demo` does.
pub const SIM_SYSTEM: &str = "http://vigil.example.org/sim/mrn";
const MDC: &str = "urn:iso:std:iso:11073:10101";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// Largest answer read from Vigil.
const MAX_RESPONSE: usize = 16 << 20;

/// `71-10-00-FE-FF-5F-49-B0` from 16 hex digits.
fn dashed(hex: &str) -> String {
    hex.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// The vitals of one monitor message as Observations (the same values `oru_r01` sends).
pub fn observations(p: &PatientDemo, device_id: &str, v: &Vitals, id_prefix: &str, at: OffsetDateTime) -> Vec<Value> {
    let subject = json!({ "identifier": { "system": SIM_SYSTEM, "value": p.mrn } });
    let device = json!({ "identifier": { "system": EUI64_SYSTEM, "value": dashed(&eui64(device_id)) } });
    let effective = at.format(&Rfc3339).unwrap_or_default();
    let coding = |mdc: Option<&str>, loinc: Option<&str>| {
        let mut c = Vec::new();
        if let Some(code) = mdc {
            c.push(json!({ "system": MDC, "code": code }));
        }
        if let Some(code) = loinc {
            c.push(json!({ "system": LOINC, "code": code }));
        }
        json!({ "coding": c })
    };
    let quantity = |value: f64, unit: &str| json!({ "value": value, "unit": unit, "system": UCUM, "code": unit });
    let mut out = Vec::new();
    let mut push = |name: &str, code: Value, value: (&str, Value)| {
        let mut o = json!({
            "resourceType": "Observation",
            "status": "final",
            "identifier": [{ "system": "urn:ietf:rfc:3986", "value": format!("urn:vigil-sim:{id_prefix}-{name}") }],
            "code": code,
            "subject": subject,
            "device": device,
            "effectiveDateTime": effective,
        });
        o[value.0] = value.1;
        out.push(o);
    };
    for (name, mdc, loinc, value, unit) in [
        ("hr", Some("147842"), Some("8867-4"), v.hr, "/min"),
        ("rr", Some("151562"), Some("9279-1"), v.rr, "/min"),
        ("spo2", Some("150456"), Some("59408-5"), v.spo2, "%"),
        ("temp", Some("150344"), Some("8310-5"), v.temp_c, "Cel"),
        ("fio2", None, Some("3150-0"), v.fio2, "%"),
        ("o2", None, Some("3151-8"), v.o2_flow, "L/min"),
        ("gcs", None, Some("9269-2"), v.gcs, "{score}"),
    ] {
        if let Some(x) = value {
            push(name, coding(mdc, loinc), ("valueQuantity", quantity(x, unit)));
        }
    }
    let components: Vec<Value> = [
        (Some("150021"), Some("8480-6"), v.sbp),
        (Some("150022"), Some("8462-4"), v.dbp),
        (Some("150023"), None, v.map),
    ]
    .into_iter()
    .filter_map(|(mdc, loinc, value)| {
        value.map(|x| json!({ "code": coding(mdc, loinc), "valueQuantity": quantity(x, "mm[Hg]") }))
    })
    .collect();
    if !components.is_empty() {
        push("bp", coding(Some("150020"), Some("85354-9")), ("component", Value::Array(components)));
    }
    if let Some(a) = v.acvpu {
        let answer = json!({ "coding": [{ "code": a.code(), "display": a.text() }], "text": a.text() });
        push("acvpu", coding(None, Some("67775-7")), ("valueCodeableConcept", answer));
    }
    out
}

/// A transaction Bundle of `resources`, identified by `id` (a resend is recognised by it).
pub fn transaction(resources: Vec<Value>, id: &str) -> Value {
    let entry: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let kind = r["resourceType"].as_str().unwrap_or("Observation").to_string();
            json!({ "resource": r, "request": { "method": "POST", "url": kind } })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": { "system": "urn:ietf:rfc:3986", "value": format!("urn:vigil-sim:{id}") },
        "entry": entry,
    })
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connect, read or write failed, or the peer closed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Not an HTTP/1.1 answer we can read.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
}

/// One keep-alive HTTP/1.1 connection to Vigil.
pub struct HttpClient {
    stream: BufReader<TcpStream>,
    host: String,
    timeout: Duration,
}

impl HttpClient {
    /// Connect to `addr` (`host:port`).
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, HttpError> {
        let stream =
            tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| HttpError::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(HttpClient { stream: BufReader::new(stream), host: addr.to_string(), timeout })
    }

    /// POST `body` and read the whole answer: status and body.
    pub async fn post(
        &mut self,
        path: &str,
        token: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let exchange = async {
            let stream = self.stream.get_mut();
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            read_response(&mut self.stream).await
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| HttpError::Timeout)?
    }
}

async fn read_response(stream: &mut BufReader<TcpStream>) -> Result<(u16, Vec<u8>), HttpError> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(HttpError::Malformed("connection closed"));
    }
    let status: u16 =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(HttpError::Malformed("status line"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(HttpError::Malformed("headers cut short"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| HttpError::Malformed("chunk size"))?;
            if body.len() + size > MAX_RESPONSE {
                return Err(HttpError::Malformed("answer too large"));
            }
            let mut chunk = vec![0; size + 2];
            stream.read_exact(&mut chunk).await?;
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
            if size == 0 {
                return Ok((status, body));
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_RESPONSE {
        return Err(HttpError::Malformed("answer too large"));
    }
    body.resize(length, 0);
    stream.read_exact(&mut body).await?;
    Ok((status, body))
}

/// FHIR throughput benchmark settings.
#[derive(Debug, Clone)]
pub struct FhirBenchConfig {
    /// Vigil's HTTP listener, `host:port`.
    pub addr: String,
    /// A gateway token.
    pub token: String,
    /// Observations to send by single POSTs.
    pub posts: usize,
    /// Connections for the single POSTs (closed loop, one request in flight each).
    pub connections: usize,
    /// Observations to send over one NDJSON `$stream` request.
    pub stream_lines: usize,
    /// Distinct synthetic patients.
    pub patients: usize,
}

/// What the benchmark measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirBenchReport {
    /// Single POSTs answered 201, and their rate.
    pub posts_created: u64,
    /// Observations per second over single POSTs.
    pub posts_per_sec: f64,
    /// NDJSON lines answered 201.
    pub stream_created: u64,
    /// Observations per second over `$stream`.
    pub stream_per_sec: f64,
    /// Answers other than 201 (both modes).
    pub refused: u64,
}

fn bench_observation(i: usize, patients: usize, run: u64) -> Value {
    let mrn = format!("FB{:06}", i % patients.max(1));
    json!({
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{ "system": "urn:ietf:rfc:3986", "value": format!("urn:vigil-bench:{run:x}-{i}") }],
        "code": { "coding": [{ "system": MDC, "code": "147842" }, { "system": LOINC, "code": "8867-4" }] },
        "subject": { "identifier": { "system": SIM_SYSTEM, "value": mrn } },
        "effectiveDateTime": OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default(),
        "valueQuantity": { "value": 60 + (i % 40) as u64, "unit": "/min", "system": UCUM, "code": "/min" },
    })
}

/// Send `posts` Observations by single POSTs over `connections`, then `stream_lines` over one
/// `$stream` request (writing and reading at once), and time both.
pub async fn run_fhir_bench(cfg: FhirBenchConfig) -> anyhow::Result<FhirBenchReport> {
    let run = OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
    let connections = cfg.connections.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let cfg = cfg.clone();
        tasks.spawn(async move {
            let mut client = HttpClient::connect(&cfg.addr, Duration::from_secs(10)).await?;
            let (mut created, mut refused) = (0u64, 0u64);
            for i in (c..cfg.posts).step_by(connections) {
                let body = bench_observation(i, cfg.patients, run).to_string();
                let (status, _) =
                    client.post("/fhir/Observation", &cfg.token, "application/fhir+json", body.as_bytes()).await?;
                if status == 201 { created += 1 } else { refused += 1 }
            }
            Ok::<_, HttpError>((created, refused))
        });
    }
    let (mut posts_created, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (c, r) = done??;
        posts_created += c;
        refused += r;
    }
    let posts_secs = started.elapsed().as_secs_f64();

    // NDJSON: one request, the body written while the answers are read.
    let stream = TcpStream::connect(&cfg.addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut body = Vec::with_capacity(cfg.stream_lines * 400);
    for i in 0..cfg.stream_lines {
        body.extend_from_slice(bench_observation(cfg.posts + i, cfg.patients, run).to_string().as_bytes());
        body.push(b'\n');
    }
    let head = format!(
        "POST /fhir/$stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/fhir+ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        cfg.addr,
        cfg.token,
        body.len()
    );
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            write.write_all(chunk).await?;
        }
        write.flush().await?;
        Ok::<_, std::io::Error>(write)
    });
    let mut reader = BufReader::new(read);
    let mut answers = Vec::new();
    let mut all = Vec::new();
    let limit = cfg.stream_lines.saturating_mul(512).max(MAX_RESPONSE);
    reader.read_to_end(&mut all).await?;
    anyhow::ensure!(all.len() <= limit, "answer larger than expected");
    let _write_half = writer.await??;
    let stream_secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&all);
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line.trim())
            && v.get("line").is_some()
        {
            answers.push(v["status"].as_u64().unwrap_or(0));
        }
    }
    let stream_created = answers.iter().filter(|s| **s == 201).count() as u64;
    refused += answers.len() as u64 - stream_created;
    anyhow::ensure!(answers.len() == cfg.stream_lines, "{} answers for {} lines", answers.len(), cfg.stream_lines);
    Ok(FhirBenchReport {
        posts_created,
        posts_per_sec: posts_created as f64 / posts_secs.max(1e-9),
        stream_created,
        stream_per_sec: stream_created as f64 / stream_secs.max(1e-9),
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcd01::Acvpu;

    #[test]
    fn vitals_become_observations_with_a_blood_pressure_panel_and_the_monitor_eui64() {
        let p = PatientDemo {
            mrn: "SIM000001".into(),
            assigning_authority: "VIGIL_SIM".into(),
            family: "Testperson".into(),
            given: "Alpha".into(),
            birth_date: "19500101".into(),
            sex: "F".into(),
            unit: "ICU".into(),
            room: "01".into(),
            bed: "A".into(),
        };
        let v = Vitals {
            hr: Some(92.0),
            rr: Some(18.0),
            sbp: Some(118.0),
            dbp: Some(70.0),
            map: Some(86.0),
            acvpu: Some(Acvpu::Confusion),
            ..Vitals::default()
        };
        let obs = observations(&p, "MON-ICU-01A", &v, "r-1", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(obs.len(), 4, "hr, rr, the panel, ACVPU");
        let bp = obs.iter().find(|o| o["code"]["coding"][0]["code"] == "150020").unwrap();
        assert_eq!(bp["component"].as_array().unwrap().len(), 3);
        assert_eq!(bp["component"][0]["valueQuantity"]["value"], 118.0);
        let device = bp["device"]["identifier"]["value"].as_str().unwrap();
        assert_eq!(device.len(), 23, "8 dash-separated octets: {device}");
        assert_eq!(obs[0]["subject"]["identifier"]["system"], SIM_SYSTEM);
        let bundle = transaction(obs, "r-1");
        assert_eq!(bundle["entry"][0]["request"]["url"], "Observation");
    }
}
