//! What the control-plane tests ask a running kedge: who answers a host, and whether it says it
//! is ready. (They start it with [`Kedge::follow`] or [`Setup::follow`](super::kedge::Setup::follow).)

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{Client, Kedge, wait_for};

/// GET `path` on `host` over a fresh connection: the status and the name of the upstream that
/// answered (`x-upstream`), if one did.
pub fn get(kedge: &Kedge, host: &str, path: &str) -> (u16, Option<String>) {
    let resp = Client::connect(kedge.addr()).get(host, path);
    (resp.status, resp.upstream().map(str::to_owned))
}

/// The state file of cluster `test` in `state_dir`, as JSON, if it is there and complete.
pub fn state_file(state_dir: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(state_dir.join("cluster-test.json")).ok()?).ok()
}

/// `GET /readyz` on the admin server: the status and the body.
pub fn readyz(kedge: &Kedge) -> (u16, String) {
    let resp = Client::connect(kedge.admin_addr()).get("x", "/readyz");
    let body = resp.text();
    (resp.status, body)
}

/// Waits until `/readyz` answers `status` with a line that starts with `line`; returns the body.
/// Panics after `timeout` with the last answer.
pub fn wait_readyz(kedge: &Kedge, timeout: Duration, status: u16, line: &str) -> String {
    wait_for(timeout, &format!("/readyz {status} with {line:?}"), || {
        let (got, body) = readyz(kedge);
        if got == status && body.lines().any(|l| l.starts_with(line)) {
            Ok(body)
        } else {
            Err((got, body))
        }
    })
}
