//! Cluster tests: brokers on PostgreSQL, with real servers (a primary and a synchronous
//! standby made with initdb and pg_basebackup, on loopback ports, in temporary folders),
//! started and stopped by each test.

#![allow(clippy::unwrap_used)]

mod acts;
mod crash;
mod durability;
mod harness;
mod idempotency;
mod import;
mod limits;
mod one_log;
mod privacy;
mod soak;
mod tampering;
mod upgrade;
