//! Records the commit kedge is built from, for `kedge version`: `$KEDGE_COMMIT` when the
//! packaging sets it, else `git rev-parse --short HEAD`, else "unknown".
fn main() {
    println!("cargo:rerun-if-env-changed=KEDGE_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("KEDGE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|c| !c.is_empty())
        });
    println!(
        "cargo:rustc-env=KEDGE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
