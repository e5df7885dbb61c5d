//! kedge: a Kubernetes ingress that lives outside the cluster. The library holds everything; the
//! `kedge` binary is `cli::main`. It is a library too so that `benches/` can drive the pure parts
//! (translation, routing, HTTP parsing) directly.

#![deny(unsafe_code)]

mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod hash;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod process;
pub mod proxy_protocol;
pub mod routes;
pub mod shared;
pub mod stats;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod worker;
