//! The end-to-end tests: real brokers on 127.0.0.1 port 0, a PKI per test, real participants
//! over mTLS (the harness is the crate's library, `tests/src/`). One module per area, linked
//! into this one test binary: one link instead of one per file. Run one area with
//! `cargo test -p unefois-tests --test it <module>::`.
//!
//! The tests of a binary share its process, and run concurrently. Those that read what is the
//! process's rather than their broker's (the Prometheus recorder's values, a global log
//! subscriber) or time what the process does (flood budgets, resident memory) are in the
//! `serial` test binary instead, one at a time.

mod audit;
mod backup;
mod bad_input;
mod browser;
mod certificates;
mod cli;
mod consents;
mod console;
mod crash;
mod data_dir;
mod desk;
mod durability;
mod exchange;
mod grpc_provider;
mod hardening;
mod http_mapping;
mod identity;
mod limits;
mod mandates;
mod mtls;
mod origin;
mod prefill;
mod provider_access;
mod providers;
mod registry;
mod reload;
mod sample_registry;
mod web;
mod web_history_bench;
