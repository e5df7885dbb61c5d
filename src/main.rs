//! kedge: a Kubernetes ingress that lives outside the cluster. `main` only hands argv to the
//! CLI and turns its outcome into an exit code (64 for a bad configuration, as sysexits).

#![deny(unsafe_code)]

mod cli;
mod config;
mod control;
mod http;
mod routes;
mod telemetry;
mod worker;

fn main() -> std::process::ExitCode {
    cli::main()
}
