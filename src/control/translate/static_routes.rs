//! Static routes: the `[[route]]`s of the TOML file translated into rules and backends of a
//! [`TableBuilder`]. They are added before any cluster's Ingresses, so they win conflicts.

use std::sync::Arc;

use crate::config::StaticRoute;
use crate::routes::{Backend, Policy, RouteTable, TableBuilder};

/// Adds static routes to `builder`; returns warnings for rules that lost to an earlier
/// identical rule. `tls_hosts` are the hosts with a certificate file: their routes redirect
/// plain HTTP to HTTPS unless they say `ssl_redirect = false`.
pub fn add(builder: &mut TableBuilder, routes: &[StaticRoute], tls_hosts: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    for r in routes {
        let policy = Arc::new(Policy {
            ssl_redirect: r
                .ssl_redirect
                .unwrap_or_else(|| r.host.as_ref().is_some_and(|h| tls_hosts.contains(h))),
            max_body: r.max_body,
            host: r.host.as_deref().unwrap_or("*").into(),
            ..Policy::default()
        });
        // Validated when the file was loaded; `upstream_tls` only hands out what it made then.
        let tls = r.upstream_tls.as_ref().and_then(|t| crate::tls::upstream_tls(t).ok());
        let id = builder.backend(Backend {
            name: r.name.as_str().into(),
            endpoints: r.upstreams.clone(),
            tls,
            h2: r.upstream_h2,
        });
        if let Err(c) = builder.rule_with(
            r.host.as_deref(),
            &r.path,
            r.path_type,
            id,
            policy,
            &format!("route {:?}", r.name),
        ) {
            warnings.push(format!(
                "route {:?}: host {} path {} ({:?}) is already routed by {}; ignored",
                r.name,
                r.host.as_deref().unwrap_or("*"),
                r.path,
                r.path_type,
                c.winner
            ));
        }
    }
    warnings
}

/// Builds a table from static routes alone.
pub fn build(routes: &[StaticRoute]) -> (RouteTable, Vec<String>) {
    let mut builder = TableBuilder::default();
    let warnings = add(&mut builder, routes, &[]);
    (builder.build(), warnings)
}

#[cfg(test)]
mod tests;
