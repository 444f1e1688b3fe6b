//! Property tests of the parsers that read untrusted input: the registry, subject ids and pivot
//! identities, static datasets, the http adapter's JSON mapping, journal records and segments,
//! signed checkpoints. The oracles are those of the fuzz targets (`fuzz/src/oracles.rs`,
//! included below), so a property holds the same under proptest here, bounded and in every
//! `cargo test`, and under libFuzzer (docs/fuzzing.md). The seed corpus of the fuzz targets
//! (`fuzz/seeds/`) is replayed here too.

use std::path::{Path, PathBuf};

use broker::LogSigner;
use broker::event::{Event, ExchangeEvent, Outcome, Record, RecordedBasis};
use broker::journal::{HEADER_LEN, JournalError};
use broker::subject::Subject;
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use time::{Date, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
use unefois_adapters::ClaimType;
use unefois_tlog::checkpoint::verify_checkpoint;

#[path = "../../fuzz/src/oracles.rs"]
#[allow(dead_code)]
mod oracles;

/// 256 cases per property: enough to catch the shallow bugs in every run, few enough that the
/// whole file takes seconds in a debug build. `UNEFOIS_PROPTEST_SCALE=8` runs eight times as
/// many (CI's fuzzing step). Failures print the shrunk input; nothing is written to disk.
fn config() -> Config {
    cases(256)
}

/// `n` cases, times `UNEFOIS_PROPTEST_SCALE`.
fn cases(n: u32) -> Config {
    let scale = std::env::var("UNEFOIS_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    Config {
        cases: n.saturating_mul(scale),
        failure_persistence: None,
        ..Config::default()
    }
}

/// The fuzz targets' seed corpus folder for `target`.
fn seeds(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

/// Every seed of `target`, with its file name.
fn seed_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = seeds(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a seed").path();
            let bytes = std::fs::read(&path).expect("read a seed");
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed in {}", dir.display());
    files
}

fn sample_registry() -> String {
    std::fs::read_to_string(oracles::examples_dir().join("registry.toml"))
        .expect("examples/registry.toml")
}

// ------------------------------------------------------------------------------ the corpus

#[test]
fn the_seed_corpus_holds_every_property() {
    for (_, bytes) in seed_files("registry") {
        oracles::registry(&bytes);
    }
    for (_, bytes) in seed_files("subject") {
        let raw = String::from_utf8_lossy(&bytes);
        oracles::subject(&raw, false);
        oracles::subject(&raw, true);
    }
    for (_, bytes) in seed_files("pivot") {
        oracles::pivot(oracles::pivot_fields(&String::from_utf8_lossy(&bytes)));
    }
    for (_, bytes) in seed_files("dataset") {
        oracles::dataset(&bytes);
    }
    for (_, bytes) in seed_files("http_json") {
        oracles::http(&bytes);
    }
    for (_, bytes) in seed_files("record") {
        oracles::record(&bytes);
    }
    for (_, bytes) in seed_files("journal_segment") {
        let _ = oracles::journal_segment(&bytes);
    }
    for (_, bytes) in seed_files("checkpoint") {
        oracles::checkpoint(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn the_seeds_reach_the_happy_paths() {
    // The sample registry, real records, a real segment and a real checkpoint are accepted:
    // a seed corpus of rejected inputs only would leave the fuzzer outside the parsers.
    let registry = std::fs::read(seeds("registry").join("sample.toml")).expect("sample seed");
    assert!(
        broker::registry::Registry::parse(
            Path::new("sample.toml"),
            &broker::registry::Folder::new(&oracles::examples_dir()),
            &registry
        )
        .is_ok()
    );
    let records = seed_files("record");
    assert!(
        records
            .iter()
            .filter(|(_, b)| Record::decode(b).is_ok())
            .count()
            >= 5
    );
    let opened = seed_files("journal_segment")
        .iter()
        .filter_map(|(_, b)| oracles::journal_segment(b).ok())
        .map(|o| o.payloads.len())
        .max();
    assert!(opened.unwrap_or(0) >= 5, "a real segment with records");
    assert!(seed_files("checkpoint").iter().any(|(_, b)| {
        let text = String::from_utf8_lossy(b);
        let (vkey, note) = text.split_once('\n').unwrap_or_default();
        verify_checkpoint(vkey, note).is_ok()
    }));
}

// -------------------------------------------------------------------------------- registry

/// Lines that, dropped into the sample registry, break it in many ways.
const REGISTRY_SNIPPETS: &[&str] = &[
    "[[participants]]",
    "[[habilitations]]",
    "[[attestation_types]]",
    "[[purposes]]",
    "[[forms]]",
    "[[identity_providers]]",
    "[federation]",
    "id = \"caf\"",
    "id = \"Caf\"",
    "id = \"\"",
    "roles = []",
    "roles = [\"consumer\", \"consumer\"]",
    "roles = [\"king\"]",
    "name = \"\"",
    "trust_domain = \"UNEFOIS..test\"",
    "allow_test_subjects = \"yes\"",
    "expires = 1999-01-01",
    "expires = \"demain\"",
    "claims = [\"nope\"]",
    "purposes = [\"nope\"]",
    "legal_basis = \"contract\"",
    "legal_basis = { law = \"\" }",
    "adapter = { kind = \"static\", dataset = \"../../etc/passwd\" }",
    "adapter = { kind = \"static\", dataset = \"/etc/passwd\" }",
    "adapter = { kind = \"http\", url = \"ftp://x/{subject}\", claims = {} }",
    "adapter = { kind = \"grpc\", endpoint = \"\" }",
    "max_age_days = -1",
    "max_subjects_per_minute = 0",
    "rate_limit = { per_minute = 0, burst = 0 }",
    "jwks = \"dev-idp/nope.json\"",
    "max_token_age_seconds = 0",
    "derived_claims = [{ name = \"x\", from = \"nope\", rule = { at_most = 1 } }]",
    "fields = [{ name = \"f\", claim = \"nope.nope\" }]",
    "version = 0",
    "x = 1",
    "[",
    "\"",
];

fn mutated_registry() -> impl Strategy<Value = String> {
    let lines: Vec<String> = sample_registry().lines().map(str::to_string).collect();
    let n = lines.len();
    (
        prop::collection::vec(prop::bool::weighted(0.995), n),
        prop::collection::vec(
            (
                0..=n,
                prop_oneof![
                    prop::sample::select(REGISTRY_SNIPPETS).prop_map(str::to_string),
                    "[a-z_]{1,12} = \"[^\"\\\\\\n]{0,12}\"",
                ],
            ),
            0..3,
        ),
    )
        .prop_map(move |(keep, inserts)| {
            let mut out: Vec<String> = lines
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(l, _)| l.clone())
                .collect();
            for (at, line) in inserts {
                out.insert(at.min(out.len()), line);
            }
            out.join("\n")
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn registry_bytes_are_refused_naming_the_file(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        oracles::registry(&bytes);
    }

    #[test]
    fn a_mutated_sample_registry_loads_or_names_file_and_key(text in mutated_registry()) {
        oracles::registry(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(cases(32))]

    /// `broker::registry::load` on a file: an error names that file.
    #[test]
    fn a_registry_file_that_fails_to_load_is_named(text in mutated_registry()) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("registry.toml");
        std::fs::write(&path, &text).expect("write the registry");
        if let Err(e) = broker::registry::load(&path) {
            prop_assert_eq!(&e.file, &path);
            prop_assert!(e.to_string().starts_with(&path.display().to_string()), "{}", e);
        }
    }
}

// -------------------------------------------------------------------------------- subjects

/// 8 or 13 random digits followed by their Luhn check digit.
fn luhn_valid(len: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(0u32..10, len - 1).prop_map(|digits| {
        let sum: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| {
                if i % 2 == 0 {
                    let d2 = d * 2;
                    if d2 > 9 { d2 - 9 } else { d2 }
                } else {
                    *d
                }
            })
            .sum();
        let check = (10 - sum % 10) % 10;
        digits
            .iter()
            .chain([check].iter())
            .map(|d| char::from(b'0' + *d as u8))
            .collect()
    })
}

/// Inserts spaces at the given positions.
fn spaced(digits: &str, spaces: &[usize]) -> String {
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        for _ in spaces.iter().filter(|s| **s == i) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A canonical `pivot:` value (docs/subjects.md), born in France or abroad.
const CANONICAL_PIVOT: &str = "[A-Z]{1,10}(-[A-Z]{1,6})?( [A-Z]{1,6})?\\|([A-Z]{1,8}( [A-Z]{1,8})?)?\\|(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])\\|[MF]\\|([0-9]{5}\\|99100|2[AB][0-9]{3}\\|99100|\\|99[1-5][0-9]{2})";

fn subject_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(siren|siret|test|pivot|SIREN|Test|sirène|x)?:?[0-9 a-z._|-]{0,30}",
        "pivot:[A-Z -]{0,12}\\|[A-Z -]{0,12}\\|[0-9]{4}-[0-9]{2}-[0-9]{2}\\|[MFX]\\|[0-9AB]{0,6}\\|99[0-9]{3}",
        CANONICAL_PIVOT.prop_map(|v| format!("pivot:{v}")),
        "test:[a-z0-9._-]{0,70}",
        "(siren|siret):[0-9 ]{0,20}",
        luhn_valid(9).prop_map(|d| format!("siren:{d}")),
        luhn_valid(14).prop_map(|d| format!("siret:{d}")),
        "siret:356000000[0-9]{5}",
        "[ -~]{250,260}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_subject_reparses_to_itself(raw in subject_text(), allow_test in any::<bool>()) {
        oracles::subject(&raw, allow_test);
    }

    #[test]
    fn luhn_valid_numbers_parse_with_any_spacing(
        siren in luhn_valid(9),
        siret in luhn_valid(14),
        spaces in prop::collection::vec(0usize..14, 0..4),
    ) {
        let parsed = Subject::parse(&format!("siren:{}", spaced(&siren, &spaces)), false);
        prop_assert_eq!(parsed.map(|s| s.as_str().to_string()), Ok(format!("siren:{siren}")));
        let parsed = Subject::parse(&format!("siret:{}", spaced(&siret, &spaces)), false);
        prop_assert_eq!(parsed.map(|s| s.as_str().to_string()), Ok(format!("siret:{siret}")));
    }
}

/// A name as an identity provider may spell it: mostly letters (accented, ligatures) and
/// separators, sometimes characters a name may not hold.
fn name() -> impl Strategy<Value = String> {
    let letters = prop::sample::select(vec![
        "a", "Z", "é", "È", "ç", "œ", "Æ", "ß", "ø", "Đ", "ł", "ﬁ", "ǆ", "Å", "ñ", "-", "‐", "‑",
        "'", "’", "`", ".", ",", " ", "\u{a0}", "\t", "\u{301}",
    ]);
    let odd = prop::sample::select(vec!["ı", "ŀ", "ẞ", "—", "0", "|", "_", "\u{200b}", "😀"]);
    prop_oneof![
        6 => prop::collection::vec(letters.clone(), 0..24).prop_map(|parts| parts.concat()),
        2 => (prop::collection::vec(letters, 0..12), odd).prop_map(|(mut parts, odd)| {
            let middle = parts.len() / 2;
            parts.insert(middle, odd);
            parts.concat()
        }),
        1 => "[A-Za-z' -]{90,110}",
        1 => any::<String>(),
    ]
}

/// Birth place and country: a commune in France, abroad, or anything.
fn birthplace() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        4 => ("([0-9]{5}|2[ABab][0-9]{3}| [0-9]{5} )", Just("99100".to_string())),
        2 => (Just(String::new()), "( ?)99[1-5][0-9]{2}( ?)"),
        1 => ("[0-9ABab|]{0,6}", "[0-9]{4,6}"),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_pivot_identity_normalises_idempotently(
        family in name(),
        given in name(),
        date in prop_oneof![
            4 => "( ?)(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])( ?)",
            1 => "[0-9]{4}-[0-9]{2}-[0-9]{2}",
            1 => "[0-9 -]{8,12}",
        ],
        gender in prop_oneof![4 => prop::sample::select(vec!["male", "female"]), 1 => prop::sample::select(vec!["M", "other", "", "Male"])],
        (place, country) in birthplace(),
    ) {
        oracles::pivot([family.as_str(), &given, &date, gender, &place, &country]);
    }
}

// -------------------------------------------------------------------------------- datasets

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        (0i64..5000).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}".prop_map(Value::String),
        "20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])".prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}".prop_map(Value::String),
        Just(Value::String("x".repeat(5000))),
    ]
}

/// A JSON value of the claim type `t`, most of the time within its bounds; anything else
/// sometimes (so that both the accepting and the refusing paths are taken often).
fn typed(t: ClaimType) -> BoxedStrategy<Value> {
    let good = match t {
        ClaimType::Integer => prop_oneof![
            (0i64..5000).prop_map(Value::from),
            any::<i64>().prop_map(Value::from)
        ]
        .boxed(),
        ClaimType::String => prop_oneof![
            "[ -~é]{0,20}".prop_map(Value::String),
            Just(Value::String("x".repeat(4096)))
        ]
        .boxed(),
        ClaimType::Number => prop_oneof![
            (-1e6f64..1e6).prop_map(Value::from),
            (0i64..10).prop_map(Value::from)
        ]
        .boxed(),
        ClaimType::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
        ClaimType::Date => {
            "(0[0-9]{3}|19[0-9]{2}|20[0-9]{2}|9999)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                .prop_map(Value::String)
                .boxed()
        }
    };
    prop_oneof![6 => good, 1 => Just(Value::Null), 2 => json_value()].boxed()
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z/~]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A dataset's text, built by hand so that duplicate subjects and claims survive.
fn dataset_text() -> impl Strategy<Value = String> {
    let claim = prop_oneof![
        6 => prop::sample::select(oracles::dataset_schema()).prop_flat_map(|spec| {
            (Just(spec.name), typed(spec.claim_type).prop_filter("not null", |v| !v.is_null()))
        }),
        1 => (
            prop_oneof![Just("autre".to_string()), any::<String>()],
            json_leaf(),
        ),
    ];
    let record = prop_oneof![
        8 => prop::collection::vec(claim, 0..5).prop_map(|claims| {
            let entries: Vec<String> = claims
                .iter()
                .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
                .collect();
            format!("{{{}}}", entries.join(","))
        }),
        1 => json_value().prop_map(|v| v.to_string()),
    ];
    let subject = prop_oneof![
        "test:[a-z]{1,8}",
        Just("test:alice".to_string()),
        any::<String>(),
        "[ -~]{250,260}",
    ];
    prop_oneof![
        10 => prop::collection::vec((subject, record), 0..5).prop_map(|records| {
            let entries: Vec<String> = records
                .iter()
                .map(|(s, r)| format!("{}:{r}", Value::String(s.clone())))
                .collect();
            format!("{{{}}}", entries.join(","))
        }),
        1 => json_value().prop_map(|v| v.to_string()),
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_dataset_serves_its_file_or_names_it(text in dataset_text()) {
        oracles::dataset(text.as_bytes());
    }

    #[test]
    fn dataset_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        oracles::dataset(&bytes);
    }
}

// ---------------------------------------------------------------------------- http answers

/// A provider's answer: the pointers' places filled with any JSON, sometimes nested deep,
/// padded past the size limit, or not JSON at all.
fn http_body() -> impl Strategy<Value = Vec<u8>> {
    let document = (
        typed(ClaimType::Integer),
        typed(ClaimType::String),
        typed(ClaimType::Number),
        prop::collection::vec(typed(ClaimType::Boolean), 0..3),
        typed(ClaimType::Date),
        json_value(),
        prop::option::of(58usize..70),
    )
        .prop_map(|(qf, mois, parts, flags, depuis, cache, deep)| {
            let mut doc = serde_json::json!({
                "data": { "qf": qf, "mois": mois, "flags": flags },
                "parts": parts,
                "a/b": { "~depuis": depuis },
                "cache": cache,
            });
            if let Some(levels) = deep {
                let mut nested = Value::Null;
                for _ in 0..levels {
                    nested = Value::Array(vec![nested]);
                }
                doc["deep"] = nested;
            }
            serde_json::to_vec(&doc).expect("serialise")
        });
    prop_oneof![
        8 => document,
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (json_value(), 0usize..3000).prop_map(|(v, pad)| {
            let mut body = serde_json::to_vec(&v).expect("serialise");
            body.extend(std::iter::repeat_n(b' ', pad));
            body
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_http_answer_gives_what_its_pointers_select(body in http_body()) {
        oracles::http(&body);
    }
}

// --------------------------------------------------------------------------------- records

fn datetime() -> impl Strategy<Value = OffsetDateTime> {
    (
        // 0000-01-01 to 9999-12-31, the years RFC 3339 can write.
        1_721_060i32..=5_373_484,
        0u8..24,
        0u8..60,
        0u8..60,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
        prop_oneof![Just(0i32), -(23 * 60 + 59)..=(23 * 60 + 59)],
    )
        .prop_map(|(day, h, m, s, ns, offset_minutes)| {
            let date = Date::from_julian_day(day).expect("a day in range");
            let time = Time::from_hms_nano(h, m, s, ns).expect("a time");
            let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).expect("an offset");
            PrimitiveDateTime::new(date, time).assume_offset(offset)
        })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9.-]{0,12}"]
}

fn opt() -> impl Strategy<Value = Option<String>> {
    prop::option::of(text())
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..3)
}

fn exchange() -> impl Strategy<Value = ExchangeEvent> {
    (
        (
            prop::sample::select(vec![
                Outcome::Granted,
                Outcome::Denied,
                Outcome::Failed,
                Outcome::Previewed,
                Outcome::Rejected,
            ]),
            opt(),
            text(),
            opt(),
            opt(),
            opt(),
            text(),
            text(),
        ),
        (
            prop::option::of(prop_oneof![
                text().prop_map(|citation| RecordedBasis::Law { citation }),
                text().prop_map(|consent_id| RecordedBasis::Consent { consent_id }),
            ]),
            opt(),
            opt(),
            opt(),
            opt(),
            opt(),
            texts(),
            opt(),
            text(),
            opt(),
        ),
        (opt(), prop::option::of(any::<u64>()), opt()),
    )
        .prop_map(
            |(
                (
                    outcome,
                    reason,
                    participant,
                    agent,
                    subject,
                    pseudonym_key,
                    attestation_type,
                    purpose,
                ),
                (
                    legal_basis,
                    habilitation,
                    mandate_id,
                    attestation_id,
                    payload_sha256,
                    provider,
                    derived_rules,
                    request_id,
                    registry_sha256,
                    prefill_id,
                ),
                (request_fingerprint, retry_of, subject_sealed),
            )| ExchangeEvent {
                outcome,
                reason,
                participant,
                agent,
                subject,
                subject_sealed,
                pseudonym_key,
                attestation_type,
                purpose,
                legal_basis,
                habilitation,
                mandate_id,
                attestation_id,
                payload_sha256,
                provider,
                derived_rules,
                request_id,
                registry_sha256,
                prefill_id,
                request_fingerprint,
                retry_of,
            },
        )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        text().prop_map(|version| Event::BrokerStarted {
            version,
            keys: Default::default(),
        }),
        Just(Event::BrokerStopped {}),
        text().prop_map(|registry_sha256| Event::RegistryLoaded {
            registry_sha256,
            files: Default::default(),
        }),
        (
            (text(), opt(), opt(), text(), text(), text(), opt(), texts()),
            (text(), datetime(), opt(), opt(), opt()),
        )
            .prop_map(
                |(
                    (
                        consent_id,
                        subject,
                        subject_sealed,
                        pseudonym_key,
                        consumer,
                        participant,
                        agent,
                        attestation_types,
                    ),
                    (purpose, expires_at, request_id, request_fingerprint, mandate_id),
                )| Event::ConsentGranted {
                    consent_id,
                    subject,
                    subject_sealed,
                    pseudonym_key,
                    consumer,
                    participant,
                    agent,
                    attestation_types,
                    purpose,
                    expires_at,
                    request_id,
                    request_fingerprint,
                    mandate_id,
                }
            ),
        (text(), text(), opt(), opt(), any::<bool>(), opt()).prop_map(
            |(
                consent_id,
                participant,
                agent,
                ended_with_mandate,
                with_identity_evidence,
                ended_with_consent,
            )| {
                Event::ConsentRevoked {
                    consent_id,
                    participant,
                    agent,
                    ended_with_mandate,
                    with_identity_evidence,
                    ended_with_consent,
                }
            }
        ),
        (text(), text(), opt(), datetime(), opt(), opt(), opt()).prop_map(
            |(
                consent_id,
                participant,
                agent,
                expires_at,
                mandate_id,
                request_id,
                request_fingerprint,
            )| {
                Event::ConsentRenewed {
                    consent_id,
                    participant,
                    agent,
                    expires_at,
                    mandate_id,
                    request_id,
                    request_fingerprint,
                }
            }
        ),
        (text(), opt(), opt(), opt(), opt(), any::<bool>()).prop_map(
            |(
                participant,
                agent,
                subject_sealed,
                consent_id,
                mandate_id,
                with_identity_evidence,
            )| {
                Event::ConsentsRead {
                    participant,
                    agent,
                    subject_sealed,
                    consent_id,
                    mandate_id,
                    with_identity_evidence,
                }
            }
        ),
        (text(), opt(), text(), opt()).prop_map(|(participant, agent, query, subject_sealed)| {
            Event::AuditRead {
                participant,
                agent,
                query,
                subject_sealed,
            }
        }),
        (text(), opt(), opt(), opt(), opt()).prop_map(
            |(participant, agent, subject, subject_sealed, mandate_id)| {
                Event::AccessHistoryRead {
                    participant,
                    agent,
                    subject,
                    subject_sealed,
                    mandate_id,
                }
            }
        ),
        (
            (text(), opt(), opt(), text(), text(), text(), texts()),
            (any::<u32>(), text(), datetime(), opt(), opt()),
        )
            .prop_map(
                |(
                    (
                        mandate_id,
                        subject,
                        subject_sealed,
                        pseudonym_key,
                        structure,
                        agent,
                        purposes,
                    ),
                    (duration_days, document_sha256, expires_at, request_id, request_fingerprint),
                )| Event::MandateCreated {
                    mandate_id,
                    subject,
                    subject_sealed,
                    pseudonym_key,
                    structure,
                    agent,
                    purposes,
                    duration_days,
                    document_sha256,
                    expires_at,
                    request_id,
                    request_fingerprint,
                }
            ),
        (text(), text(), opt()).prop_map(|(mandate_id, participant, agent)| {
            Event::MandateRevoked {
                mandate_id,
                participant,
                agent,
            }
        }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(participant, count, window_seconds)| {
            Event::RateLimited {
                participant,
                count,
                window_seconds,
            }
        }),
        (text(), text(), any::<u64>(), any::<u32>()).prop_map(
            |(participant, habilitation, distinct_subjects, limit)| Event::HarvestingAlarm {
                participant,
                habilitation,
                distinct_subjects,
                limit
            }
        ),
        exchange().prop_map(|e| Event::Exchange(Box::new(e))),
    ]
}

/// A valid record: the current encoding version (others are refused, see the findings).
fn record() -> impl Strategy<Value = Record> {
    (datetime(), event()).prop_map(|(time, event)| Record {
        v: broker::event::RECORD_VERSION,
        time,
        event,
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_valid_record_round_trips_byte_for_byte(record in record()) {
        let bytes = oracles::record_round_trip(&record);
        // And what decodes from its bytes passes the decoding oracle.
        oracles::record(&bytes);
    }

    #[test]
    fn a_mutated_record_decodes_to_a_round_tripping_record(
        record in record(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = record.encode();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        oracles::record(&bytes);
    }

    #[test]
    fn record_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        oracles::record(&bytes);
    }
}

// --------------------------------------------------------------------------------- journal

fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 1..6)
}

/// Offsets where each record starts, and the segment's length.
fn boundaries(payloads: &[Vec<u8>]) -> Vec<usize> {
    let mut at = vec![0];
    for p in payloads {
        at.push(at.last().copied().unwrap_or(0) + HEADER_LEN + p.len());
    }
    at
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn segment_bytes_are_recovered_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = oracles::journal_segment(&bytes);
    }

    /// A torn tail (the segment cut anywhere) loses exactly the records it cuts into.
    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record(payloads in payloads(), cut in any::<prop::sample::Index>()) {
        let bytes = oracles::journal_bytes(&payloads);
        let starts = boundaries(&payloads);
        prop_assert_eq!(starts.last().copied(), Some(bytes.len()));
        let cut = cut.index(bytes.len() + 1);
        let whole = starts.iter().filter(|s| **s <= cut).count() - 1;
        let opened = oracles::journal_segment(&bytes[..cut]).expect("a torn tail recovers");
        prop_assert_eq!(&opened.payloads[..], &payloads[..whole]);
        prop_assert_eq!(opened.len as usize, starts[whole]);
    }

    /// A damaged byte in the last record is a torn tail; anywhere before, it is corruption.
    #[test]
    fn a_damaged_record_is_refused_unless_it_is_the_last(
        payloads in payloads(),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = oracles::journal_bytes(&payloads);
        let starts = boundaries(&payloads);
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        let damaged = starts.iter().filter(|s| **s <= i).count() - 1;
        match oracles::journal_segment(&bytes) {
            Ok(opened) => {
                prop_assert_eq!(damaged, payloads.len() - 1, "damage before the last record was accepted");
                prop_assert_eq!(&opened.payloads[..], &payloads[..damaged]);
            }
            Err(JournalError::Corrupt { offset, .. }) => {
                prop_assert!(damaged < payloads.len() - 1, "a damaged last record was refused");
                prop_assert_eq!(offset as usize, starts[damaged]);
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }
}

// ----------------------------------------------------------------------------- checkpoints

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,12}(\\.[a-z][a-z0-9-]{0,8}){0,2}"
}

proptest! {
    // Ed25519 in a debug build: a few milliseconds per signature.
    #![proptest_config(cases(128))]

    #[test]
    fn a_checkpoint_verifies_under_its_key_only(
        seed in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        domain in trust_domain(),
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
    ) {
        prop_assume!(seed != other);
        let log = LogSigner::from_seed(&seed, &domain).unwrap();
        let note = log.sign(size, root);
        let verified = verify_checkpoint(log.vkey(), &note).expect("its own checkpoint");
        prop_assert_eq!(verified.origin.as_str(), log.origin());
        prop_assert_eq!((verified.size, verified.root), (size, root));
        let impostor = LogSigner::from_seed(&other, &domain).unwrap();
        prop_assert!(verify_checkpoint(impostor.vkey(), &note).is_err());
        oracles::checkpoint(&format!("{}\n{note}", log.vkey()));
    }

    #[test]
    fn a_damaged_checkpoint_never_verifies_to_something_else(
        seed in any::<[u8; 32]>(),
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let log = LogSigner::from_seed(&seed, "unefois.test").unwrap();
        let mut note = log.sign(size, root).into_bytes();
        let i = at.index(note.len());
        note[i] = byte;
        let Ok(note) = String::from_utf8(note) else { return Ok(()) };
        if let Ok(verified) = verify_checkpoint(log.vkey(), &note) {
            prop_assert_eq!((verified.size, verified.root), (size, root));
        }
        oracles::checkpoint(&format!("{}\n{note}", log.vkey()));
    }

    #[test]
    fn checkpoint_text_never_panics(text in any::<String>()) {
        oracles::checkpoint(&text);
    }
}

// -------------------------------------------------------------------------------- findings
//
// Inputs the fuzz targets and properties found that broke a documented property, kept as
// regression tests of their fixes (docs/fuzzing.md, "Findings").

/// docs/audit-log.md: "`v`: encoding version, currently `1`; a reader refuses versions it does
/// not know". `Record::decode` (used by the store's replay and the audit queries) used to read
/// any `v` as version 1.
#[test]
fn a_record_of_an_unknown_version_is_refused() {
    for v in ["0", "3", "4294967295"] {
        let bytes = format!(r#"{{"v":{v},"time":"2026-11-22T10:00:00Z","kind":"broker_stopped"}}"#);
        assert!(
            Record::decode(bytes.as_bytes()).is_err(),
            "version {v} was accepted: {bytes}"
        );
    }
}

/// Found by the `registry` fuzz target (input `['']`, 4 bytes): an unknown top-level key whose
/// name is empty gave a `RegistryError` whose key was empty, so the message read
/// `registry.toml: : TOML parse error ...`; every other error names a key (or `(file)`,
/// `(syntax)`, `(top level)`), as the registry module documents.
#[test]
fn a_registry_error_always_names_a_key() {
    for text in ["['']", "\"\" = 1", "[\"\"]\nx = 1"] {
        let e = broker::registry::Registry::parse(
            Path::new("registry.toml"),
            &broker::registry::Folder::new(&oracles::examples_dir()),
            text.as_bytes(),
        )
        .expect_err("not a registry");
        assert!(!e.key.is_empty(), "{text:?}: no key in {e}");
    }
}
