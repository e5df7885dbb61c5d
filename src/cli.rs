//! Subcommands: `run`, `check`, `version`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a configuration that does not validate (sysexits' EX_USAGE), so scripts and
/// systemd's `ExecStartPre` can tell a bad file from a failed start.
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "kedge",
    about = "Kubernetes ingress for edge hosts outside the cluster",
    version
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, default_value = "/etc/kedge/kedge.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (0 when valid, 64 with file:line:column when not).
    Check {
        #[arg(long, short, default_value = "/etc/kedge/kedge.toml")]
        config: PathBuf,
    },
    /// Print the version and the I/O driver this kernel allows.
    Version,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Version => {
            let driver = if monoio::utils::detect_uring() {
                "io_uring"
            } else {
                "epoll (io_uring unavailable)"
            };
            println!("kedge {} (driver: {driver})", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { config } => match crate::config::load(&config) {
            Ok(c) => {
                let (_, warnings) = crate::routes::build_static(&c.routes);
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} listeners, {} routes)",
                    config.display(),
                    c.process.listeners.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Run { config } => {
            let cfg = match crate::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            crate::telemetry::init(&cfg.process.log);
            match crate::control::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
