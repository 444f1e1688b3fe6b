//! Oracles: one per parser of untrusted input. Each runs the parser on an input through its
//! public API and panics when a property does not hold, so that both drivers find the same
//! bugs: the libFuzzer targets of `fuzz/fuzz_targets/` (coverage-guided, on demand) and the
//! proptest properties of `tests/tests/properties.rs` (bounded, in every `cargo test`), which
//! includes this file with `#[path]`.
//!
//! Beyond "does not panic", the properties checked are cheap ones:
//!
//! - registry: an error names the registry file first, then a non-empty key and a message;
//! - subject: a normalised subject re-parses to itself; a pivot identity's subject re-parses
//!   to itself and re-derives from its own canonical fields; name normalisation is idempotent;
//! - dataset: an error names the dataset file; a loaded dataset serves exactly the claims of
//!   its file;
//! - http: a 200 answer gives exactly the claims its JSON pointers select (recomputed here with
//!   `serde_json` and `ClaimValue::from_json`), or `InvalidResponse`, never anything else;
//! - record: a decoded record encodes to non-empty bytes that decode to it again, byte for byte
//!   stable;
//! - journal: a segment either opens (the file is then a prefix of the input, every durable
//!   record reads back, and a second open changes nothing) or is refused as corrupt naming it;
//! - checkpoint: a checkpoint that verifies under one log key never verifies under another
//!   of the same origin, and what it says, signed by that other key, verifies under it only.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use broker::LogSigner;
use broker::event::Record;
use broker::journal::{HEADER_LEN, Journal, JournalError, JournalOptions};
use broker::registry::{Folder, Registry};
use broker::subject::{MAX_SUBJECT_BYTES, PivotIdentity, Subject, normalise_name};
use serde_json::Value;
use unefois_adapters::{
    Adapter, AdapterError, AdapterRequest, ClaimSpec, ClaimType, ClaimValue, Claims, HttpAdapter,
    HttpConfig, LegalBasis, StaticDataset, check_claims,
};
use unefois_tlog::checkpoint::verify_checkpoint;

/// The repository's `examples/` folder: the registry's relative paths (datasets, JWKS)
/// resolve there. Both crates that include this file sit one level below the root.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
}

/// A scratch folder, in memory (`/dev/shm`) where there is one: the journal and dataset
/// oracles write a file per input.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("unefois-fuzz-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("unefois-fuzz-").tempdir()
    };
    dir.expect("a scratch folder")
}

/// A current-thread runtime for the async APIs (journal close, adapters), one per thread.
fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}

/// Polls a future that never waits (the static adapter answers from memory) to its end.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the static adapter waited"),
    }
}

// ------------------------------------------------------------------------------ registry

/// The name the registry bytes go by in errors; nothing is read from it.
pub const REGISTRY_FILE: &str = "fuzz/registry.toml";

/// `Registry::parse` on `bytes`, relative paths resolved in `examples/`. An error names the
/// registry file first, then a non-empty key and message; a registry that loads has the
/// SHA-256 of exactly these bytes, and parsing is deterministic.
pub fn registry(bytes: &[u8]) {
    let file = Path::new(REGISTRY_FILE);
    let base = examples_dir();
    match Registry::parse(file, &Folder::new(&base), bytes) {
        Ok(registry) => {
            assert_eq!(registry.file(), file);
            let again = Registry::parse(file, &Folder::new(&base), bytes)
                .expect("parsing is deterministic");
            assert_eq!(again.sha256(), registry.sha256());
            assert_eq!(
                again.participants().count(),
                registry.participants().count()
            );
            for p in registry.participants() {
                assert!(registry.participant(&p.id).is_some());
            }
        }
        Err(e) => {
            assert_eq!(e.file, file, "the error names the registry file");
            assert!(!e.key.is_empty(), "the error names a key: {e}");
            assert!(!e.message.is_empty(), "the error says what is wrong: {e}");
            assert!(
                e.to_string().starts_with(REGISTRY_FILE),
                "the message starts with the file: {e}"
            );
        }
    }
}

// ------------------------------------------------------------------------------- subject

/// `Subject::parse`: a subject that parses is at most [`MAX_SUBJECT_BYTES`] and re-parses to
/// itself (normalisation is idempotent); one accepted without `test:` subjects is accepted,
/// the same, with them.
pub fn subject(raw: &str, allow_test: bool) {
    let Ok(subject) = Subject::parse(raw, allow_test) else {
        return;
    };
    assert!(subject.as_str().len() <= MAX_SUBJECT_BYTES);
    assert_eq!(
        Subject::parse(subject.as_str(), allow_test),
        Ok(subject.clone()),
        "a normalised subject re-parses to itself"
    );
    if !allow_test {
        assert_eq!(Subject::parse(raw, true), Ok(subject));
    }
}

/// `Subject::pivot` on six identity claims (family name, given names, birth date, gender,
/// birth place, birth country): a derived subject re-parses to itself, and deriving again
/// from its own canonical fields gives it back; `normalise_name` is idempotent.
pub fn pivot(fields: [&str; 6]) {
    for name in &fields[..2] {
        if let Ok(normalised) = normalise_name(name) {
            assert_eq!(
                normalise_name(&normalised),
                Ok(normalised.clone()),
                "normalise_name is idempotent"
            );
        }
    }
    let [
        family_name,
        given_names,
        birthdate,
        gender,
        birthplace,
        birthcountry,
    ] = fields;
    let identity = PivotIdentity {
        family_name,
        given_names,
        birthdate,
        gender,
        birthplace,
        birthcountry,
    };
    let Ok(subject) = Subject::pivot(&identity) else {
        return;
    };
    assert_eq!(
        Subject::parse(subject.as_str(), false),
        Ok(subject.clone()),
        "a pivot subject re-parses to itself"
    );
    let value = subject
        .as_str()
        .strip_prefix("pivot:")
        .expect("a pivot subject");
    let canonical: Vec<&str> = value.split('|').collect();
    let [family, given, date, sex, place, country] = canonical[..] else {
        panic!("a pivot subject has six fields");
    };
    let again = Subject::pivot(&PivotIdentity {
        family_name: family,
        given_names: given,
        birthdate: date,
        gender: if sex == "M" { "male" } else { "female" },
        birthplace: place,
        birthcountry: country,
    });
    assert_eq!(
        again,
        Ok(subject),
        "canonical fields derive the same subject"
    );
}

/// Splits a fuzz input into the six fields of [`pivot`], one per line (missing ones empty).
pub fn pivot_fields(text: &str) -> [&str; 6] {
    let mut fields = [""; 6];
    for (slot, line) in fields.iter_mut().zip(text.split('\n')) {
        *slot = line;
    }
    fields
}

// ------------------------------------------------------------------------------- dataset

/// The attestation type the dataset and http oracles serve.
pub const TYPE: &str = "caf.quotient_familial";

/// The schema of [`TYPE`] in examples/registry.toml.
pub fn dataset_schema() -> Vec<ClaimSpec> {
    specs(&[
        ("quotient_familial", ClaimType::Integer),
        ("mois_reference", ClaimType::String),
        ("nombre_enfants", ClaimType::Integer),
        ("allocataire_depuis", ClaimType::Date),
    ])
}

fn specs(claims: &[(&str, ClaimType)]) -> Vec<ClaimSpec> {
    claims
        .iter()
        .map(|(name, claim_type)| ClaimSpec {
            name: (*name).into(),
            claim_type: *claim_type,
        })
        .collect()
}

fn request(subject: &str, claims: &[String]) -> AdapterRequest {
    AdapterRequest {
        subject: subject.into(),
        attestation_type: TYPE.into(),
        claims: claims.to_vec(),
        consumer: "mairie-lyon".into(),
        purpose: "tarification_cantine".into(),
        legal_basis: LegalBasis::Consent {
            consent_id: "c-1".into(),
        },
        request_id: "r-1".into(),
        consumer_siret: None,
        purpose_label: String::new(),
        civil_status: None,
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
    }
}

/// `StaticDataset::load` on `bytes` written to a file: an error names the file; a dataset
/// that loads serves, for each subject of the file, exactly the claims written for it (read
/// back here with `serde_json` and `ClaimValue::from_json`), and nothing for another subject.
pub fn dataset(bytes: &[u8]) {
    let dir = scratch();
    let path = dir.path().join("fuzz.dataset.json");
    std::fs::write(&path, bytes).expect("write the dataset");
    let schema = dataset_schema();
    let dataset = match StaticDataset::load(&path, TYPE, &schema) {
        Ok(dataset) => dataset,
        Err(e) => {
            assert!(
                e.to_string().contains(&path.display().to_string()),
                "the error names the dataset file: {e}"
            );
            return;
        }
    };
    assert_eq!(dataset.attestation_type(), TYPE);
    let file: serde_json::Map<String, Value> =
        serde_json::from_slice(bytes).expect("a dataset that loads is a JSON object");
    assert_eq!(dataset.len(), file.len(), "one record per subject");
    let all: Vec<String> = schema.iter().map(|s| s.name.clone()).collect();
    for (subject, record) in file.iter().take(16) {
        let record = record
            .as_object()
            .expect("a record that loads is an object");
        let expected: Claims = record
            .iter()
            .map(|(name, json)| {
                let spec = schema
                    .iter()
                    .find(|s| s.name == *name)
                    .expect("a loaded claim is in the schema");
                let value = ClaimValue::from_json(spec.claim_type, json)
                    .expect("a loaded claim has its type");
                (name.clone(), value)
            })
            .collect();
        let served = ready(dataset.fetch(&request(subject, &all))).expect("a subject of the file");
        assert_eq!(served, expected, "the dataset serves what its file says");
        check_claims(&schema, &all, &served).expect("served claims fit the schema");
    }
    let unknown = format!("{}\u{1}", file.keys().next().map_or("", String::as_str));
    assert!(matches!(
        ready(dataset.fetch(&request(&unknown, &all))),
        Err(AdapterError::NotFound)
    ));
}

// ---------------------------------------------------------------------------------- http

/// Largest answer the http oracle's adapter accepts, small so that the limit is reached.
pub const HTTP_MAX_RESPONSE_BYTES: usize = 2048;
/// Deepest nesting the http adapter accepts (`unefois_adapters::MAX_JSON_DEPTH`).
const MAX_DEPTH: usize = unefois_adapters::MAX_JSON_DEPTH;

/// The claims the http oracle's adapter reads: name, type, JSON pointer. `cache` is mapped but
/// never requested: it must never come back.
pub const HTTP_CLAIMS: &[(&str, ClaimType, &str)] = &[
    ("qf", ClaimType::Integer, "/data/qf"),
    ("mois", ClaimType::String, "/data/mois"),
    ("parts", ClaimType::Number, "/parts"),
    ("etudiant", ClaimType::Boolean, "/data/flags/0"),
    ("depuis", ClaimType::Date, "/a~1b/~0depuis"),
    ("cache", ClaimType::String, "/cache"),
];

/// An [`HttpAdapter`] in front of a local HTTP/1.1 server that answers 200 with whatever body
/// it is given: the adapter's JSON mapping is private, so the oracle drives the public
/// adapter over loopback.
pub struct HttpHarness {
    /// The adapter's own runtime, with a worker that always drives its connections whichever
    /// thread calls [`HttpHarness::check`].
    runtime: tokio::runtime::Runtime,
    adapter: HttpAdapter,
    body: Arc<Mutex<Vec<u8>>>,
    schema: Vec<ClaimSpec>,
    requested: Vec<String>,
}

impl HttpHarness {
    /// Starts the server (a thread per connection; the adapter keeps one alive) and builds
    /// the adapter.
    pub fn start() -> HttpHarness {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local address").port();
        let body = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::clone(&body);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let body = Arc::clone(&served);
                std::thread::spawn(move || serve(stream, &body));
            }
        });
        let schema = specs(
            &HTTP_CLAIMS
                .iter()
                .map(|(name, t, _)| (*name, *t))
                .collect::<Vec<_>>(),
        );
        // Built from JSON, as the registry's parser builds it: new settings keep their defaults.
        let claims: serde_json::Map<String, Value> = HTTP_CLAIMS
            .iter()
            .map(|(name, _, pointer)| ((*name).to_string(), Value::from(*pointer)))
            .collect();
        let config: HttpConfig = serde_json::from_value(serde_json::json!({
            "url": format!("http://127.0.0.1:{port}/v1/{{subject}}?claims={{claims}}"),
            "claims": claims,
            "timeout_ms": 5000,
            "retries": 0,
            "max_response_bytes": HTTP_MAX_RESPONSE_BYTES,
            "allow_plain_http": true,
        }))
        .expect("a valid http adapter configuration");
        let adapter = HttpAdapter::new(TYPE, &schema, &config).expect("a valid http adapter");
        let requested = HTTP_CLAIMS
            .iter()
            .map(|(name, _, _)| (*name).to_string())
            .filter(|name| name != "cache")
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        HttpHarness {
            runtime,
            adapter,
            body,
            schema,
            requested,
        }
    }

    /// The provider answers 200 with `body`: the adapter gives exactly the claims the
    /// pointers select (null and missing ones left out), or `InvalidResponse` when the body
    /// is too large, not JSON, nested too deep or holds a claim of the wrong type.
    pub fn check(&self, body: &[u8]) {
        body.clone_into(&mut self.body.lock().expect("body lock"));
        let got = self
            .runtime
            .block_on(self.adapter.fetch(&request("test:alice", &self.requested)));
        match (expected_http(body, &self.requested), got) {
            (Ok(expected), Ok(got)) => {
                assert_eq!(got, expected, "the claims the pointers select");
                assert!(!got.contains_key("cache"), "an unrequested claim came back");
                check_claims(&self.schema, &self.requested, &got).expect("claims fit the schema");
            }
            (Err(()), Err(AdapterError::InvalidResponse(_))) => {}
            (expected, got) => panic!("expected {expected:?}, the adapter gave {got:?}"),
        }
    }
}

/// What a 200 answer with `body` must give, recomputed from the documented behaviour.
fn expected_http(body: &[u8], requested: &[String]) -> Result<Claims, ()> {
    if body.len() > HTTP_MAX_RESPONSE_BYTES {
        return Err(());
    }
    let document: Value = serde_json::from_slice(body).map_err(|_| ())?;
    if depth(&document) > MAX_DEPTH {
        return Err(());
    }
    let mut claims = Claims::new();
    for name in requested {
        let Some((_, claim_type, pointer)) = HTTP_CLAIMS.iter().find(|(n, _, _)| n == name) else {
            continue;
        };
        match document.pointer(pointer) {
            None | Some(Value::Null) => {}
            Some(json) => {
                let value = ClaimValue::from_json(*claim_type, json).map_err(|_| ())?;
                claims.insert(name.clone(), value);
            }
        }
    }
    Ok(claims)
}

/// Nesting depth of arrays and objects (a scalar is 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// One keep-alive connection: answers every request with 200 and the current body.
fn serve(stream: TcpStream, body: &Mutex<Vec<u8>>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // The request head, up to its empty line (GET: no body).
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {}
            }
        }
        let body = body.lock().map(|b| b.clone()).unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(&body).is_err() {
            return;
        }
    }
}

/// The http oracle, with one harness per process.
pub fn http(body: &[u8]) {
    static HARNESS: OnceLock<Mutex<HttpHarness>> = OnceLock::new();
    let harness = HARNESS.get_or_init(|| Mutex::new(HttpHarness::start()));
    harness
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .check(body);
}

// -------------------------------------------------------------------------------- record

/// `Record::decode`: a record that decodes encodes to non-empty bytes that decode to the same
/// record and encode to the same bytes again.
pub fn record(bytes: &[u8]) {
    let Ok(record) = Record::decode(bytes) else {
        return;
    };
    record_round_trip(&record);
}

/// A record encodes to non-empty bytes that decode to it and encode to themselves.
pub fn record_round_trip(record: &Record) -> Vec<u8> {
    let encoded = record.encode();
    assert!(
        !encoded.is_empty(),
        "the record does not encode: {record:?}"
    );
    let decoded = Record::decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "its own encoding does not decode ({e}): {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(&decoded, record, "decode(encode(record)) == record");
    assert_eq!(decoded.encode(), encoded, "the encoding is stable");
    encoded
}

// ------------------------------------------------------------------------------- journal

/// The first segment's file name.
pub const FIRST_SEGMENT: &str = "journal-00000000000000000000.seg";

/// Options for the oracle's journals: no `fdatasync` (scratch data), defaults otherwise.
fn options() -> JournalOptions {
    JournalOptions {
        sync: false,
        ..JournalOptions::default()
    }
}

/// What a journal opened on one segment holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened {
    /// The durable records' payloads, in order.
    pub payloads: Vec<Vec<u8>>,
    /// The segment's length after recovery.
    pub len: u64,
}

/// `Journal::open` on a directory whose only segment holds `bytes`, then
/// `Journal::read_from(0)`. Either the journal opens, keeps a prefix of the input (a torn
/// tail is cut, nothing else changes), reads back exactly `next_seq` records whose encodings
/// fill that prefix, and a second open finds the same; or it is refused as corrupt, naming
/// the segment.
pub fn journal_segment(bytes: &[u8]) -> Result<Opened, JournalError> {
    let dir = scratch();
    let segment = dir.path().join(FIRST_SEGMENT);
    std::fs::write(&segment, bytes).expect("write the segment");
    let opened = match open_and_read(dir.path()) {
        Ok(opened) => opened,
        Err(e) => {
            match &e {
                JournalError::Corrupt { path, .. } => {
                    assert_eq!(path, &segment, "the error names the segment: {e}");
                }
                other => panic!("a segment is either recovered or corrupt, not {other}"),
            }
            return Err(e);
        }
    };
    let kept = std::fs::read(&segment).expect("read the segment back");
    assert_eq!(kept.len() as u64, opened.len);
    assert!(
        bytes.starts_with(&kept),
        "recovery only cuts a tail ({} bytes kept of {})",
        kept.len(),
        bytes.len()
    );
    let encoded: usize = opened.payloads.iter().map(|p| HEADER_LEN + p.len()).sum();
    assert_eq!(encoded, kept.len(), "the records fill what is kept");
    let again = open_and_read(dir.path()).expect("a recovered journal opens again");
    assert_eq!(again, opened, "a second recovery changes nothing");
    Ok(opened)
}

fn open_and_read(dir: &Path) -> Result<Opened, JournalError> {
    let journal = Journal::open(dir, options())?;
    let next = journal.next_seq();
    let records = journal
        .read_from(0)
        .and_then(|reader| reader.collect::<Result<Vec<_>, _>>());
    block_on(journal.close());
    let records = records.unwrap_or_else(|e| panic!("a durable record does not read back: {e}"));
    assert_eq!(
        records.len() as u64,
        next,
        "every durable record reads back"
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
    }
    let len = std::fs::metadata(dir.join(FIRST_SEGMENT))
        .expect("the segment")
        .len();
    Ok(Opened {
        payloads: records.into_iter().map(|r| r.payload).collect(),
        len,
    })
}

/// Writes `payloads` through a real journal (one batch each) and returns the segment's bytes.
pub fn journal_bytes(payloads: &[Vec<u8>]) -> Vec<u8> {
    let dir = scratch();
    let journal = Journal::open(dir.path(), options()).expect("open a new journal");
    block_on(async {
        for payload in payloads {
            journal.append(payload.clone()).await.expect("append");
        }
        journal.close().await;
    });
    std::fs::read(dir.path().join(FIRST_SEGMENT)).expect("read the segment")
}

// ---------------------------------------------------------------------------- checkpoint

/// `verify_checkpoint`, on input `<verifier key>\n<signed note>`: a checkpoint that verifies
/// has the key's origin and does not verify under another log key of the same origin; its
/// size and root signed by that other key verify under it, and not under the first.
pub fn checkpoint(text: &str) {
    let (vkey, note) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(verified) = verify_checkpoint(vkey, note) else {
        return;
    };
    let name = vkey.split('+').next().unwrap_or_default();
    assert_eq!(
        verified.origin, name,
        "the checkpoint's origin is the key's name"
    );
    if let Some(trust_domain) = verified.origin.strip_suffix("/unefois/audit") {
        let other = LogSigner::from_seed(&[0x5a; 32], trust_domain).unwrap();
        assert_eq!(other.origin(), verified.origin);
        assert!(
            verify_checkpoint(other.vkey(), note).is_err(),
            "a checkpoint verified under one key verifies under another"
        );
        let resigned = other.sign(verified.size, verified.root);
        assert_eq!(verify_checkpoint(other.vkey(), &resigned), Ok(verified));
        assert!(verify_checkpoint(vkey, &resigned).is_err());
    }
}
