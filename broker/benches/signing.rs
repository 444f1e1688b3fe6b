//! Ed25519 figures (measured, never asserted): what one signature costs the broker, with the
//! library it signs with (aws-lc-rs, through `keys::SigningKey`) against ed25519-dalek, on an
//! attestation-sized message. Alternated rounds, so that a drift of the machine hits both.
//!
//! `cargo bench -p broker --bench signing` (env: `UNEFOIS_BENCH_SIGNATURES`, default 20000).

#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Instant;

use broker::keys::SigningKey;
use broker::signing::{AttestationSigner, PAYLOAD_TYPE, pae};
use ed25519_dalek::Signer as _;

fn main() {
    let n: u32 = std::env::var("UNEFOIS_BENCH_SIGNATURES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed = [7u8; 32];
    // About the size of a fetch's attestation payload.
    let message = pae(PAYLOAD_TYPE, &[b'x'; 700]);
    let ours = SigningKey::from_seed(&seed).unwrap();
    let dalek = ed25519_dalek::SigningKey::from_bytes(&seed);
    let attestations = AttestationSigner::from_seed(&seed, "unefois.test").unwrap();
    let time = |f: &dyn Fn() -> u8| {
        let started = Instant::now();
        let mut sink = 0u8;
        for _ in 0..n {
            sink ^= f();
        }
        std::hint::black_box(sink);
        started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    println!(
        "µs per Ed25519 signature of a {}-byte message, {n} signatures per round",
        message.len()
    );
    for round in 1..=3 {
        let a = time(&|| ours.sign(&message)[0]);
        let d = time(&|| dalek.sign(&message).to_bytes()[0]);
        let e = time(&|| attestations.sign(vec![b'x'; 700]).signatures[0].sig[0]);
        println!(
            "round {round}: aws-lc-rs (SigningKey) {a:.2}, ed25519-dalek {d:.2} ({:.2} ×), \
             AttestationSigner::sign with PAE and envelope {e:.2}",
            d / a
        );
    }
}
