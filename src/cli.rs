//! Subcommands: `run`, `check`, `version`, `backends`.

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
    /// Show the backends of the running kedge (from its admin listener): endpoints, upstream
    /// TLS, the rules that use them, and the current warnings.
    Backends {
        #[arg(long, short, default_value = "/etc/kedge/kedge.toml")]
        config: PathBuf,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this backend (its full name, e.g. `prod/default/web:80`).
        #[arg(long)]
        backend: Option<String>,
    },
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
            println!(
                "kedge {} (commit {}, driver: {driver})",
                env!("CARGO_PKG_VERSION"),
                env!("KEDGE_COMMIT")
            );
            ExitCode::SUCCESS
        }
        Command::Backends { config, json, backend } => match backends(&config, json, backend.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kedge backends: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match crate::config::load(&config) {
            Ok(c) => {
                let (_, warnings) = crate::control::translate::static_routes::build(&c.routes);
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
            match crate::process::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `kedge backends`: asks the admin listener of the kedge running with `config`.
fn backends(config: &std::path::Path, json: bool, only: Option<&str>) -> Result<(), String> {
    use std::io::{Read, Write};
    let cfg = crate::config::load(config).map_err(|e| e.to_string())?;
    let Some(mut addr) = cfg.process.admin else {
        return Err("[admin] enabled = false in this configuration: there is nothing to ask".into());
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot reach kedge's admin listener at {addr}: {e} (is kedge running?)"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    stream
        .write_all(b"GET /backends HTTP/1.1\r\nHost: kedge\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("the admin listener sent no answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "the admin listener answered: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let mut view: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("unexpected answer: {e}"))?;
    if let Some(name) = only
        && let Some(list) = view.get_mut("backends").and_then(|b| b.as_array_mut())
    {
        list.retain(|b| b["name"] == name);
        if list.is_empty() {
            return Err(format!("no backend named {name:?}"));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&view).unwrap_or_default());
        return Ok(());
    }
    let empty = Vec::new();
    for b in view["backends"].as_array().unwrap_or(&empty) {
        println!("{}", b["name"].as_str().unwrap_or("?"));
        let eps: Vec<&str> = b["endpoints"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|e| e.as_str())
            .collect();
        if eps.is_empty() {
            println!("  endpoints: none (requests get 503)");
        } else {
            println!("  endpoints: {}", eps.join(", "));
        }
        if let Some(t) = b["upstream_tls"].as_object() {
            println!(
                "  upstream TLS: verify {}, name {}{}",
                t["verify"].as_str().unwrap_or("?"),
                t["name"].as_str().unwrap_or("?"),
                if t["sni"] == true { ", SNI" } else { "" }
            );
        }
        for r in b["rules"].as_array().unwrap_or(&empty) {
            let mut extra = vec![r["balance"].as_str().unwrap_or("").to_owned()];
            if let Some(c) = r["affinity_cookie"].as_str() {
                extra.push(format!("affinity cookie {c}"));
            }
            if let Some(c) = r["canary"].as_str() {
                extra.push(format!("canary {c}"));
            }
            if let Some(s) = r["scope"].as_str() {
                extra.push(format!("on {s}"));
            }
            println!(
                "  rule: {}{} ({}) [{}]",
                r["host"].as_str().unwrap_or("?"),
                r["path"].as_str().unwrap_or("?"),
                r["path_type"].as_str().unwrap_or("?"),
                extra.join(", ")
            );
        }
    }
    let warnings = view["warnings"].as_array().unwrap_or(&empty);
    if !warnings.is_empty() && only.is_none() {
        println!("warnings:");
        for w in warnings {
            println!("  {}", w.as_str().unwrap_or("?"));
        }
    }
    Ok(())
}
