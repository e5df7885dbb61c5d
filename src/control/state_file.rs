//! The state directory and its files: one JSON file per cluster, `{state_dir}/cluster-{name}.json`,
//! holding the cluster's last known good objects. This module is the file format (a header that
//! says what the file is, then the objects of every persisted kind, see
//! [`kinds`](super::kinds)) and its I/O: atomic replacement (temp file, fsync, rename, fsync of
//! the directory), files `0600`, a directory it creates `0700` (they hold TLS private keys).
//! Objects are serialized whole and never looked into.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kinds::{ClusterObjects, LoadedObjects, SavedObjects};

/// What a state file says it is; a file that says anything else is not read.
pub const FORMAT: &str = "kedge.dev/cluster-state/v1";

/// The state directory, known to be writable.
#[derive(Debug)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// Creates `path` if needed and checks that a file can be written in it. When it cannot,
    /// says so once and returns `None`: kedge then runs without persistence.
    pub fn open(path: &Path) -> Option<StateDir> {
        let probe = path.join(".kedge-probe");
        // Owner-only: the files hold TLS private keys.
        let usable = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .and_then(|()| write_atomic(&probe, b"kedge\n"))
            .and_then(|()| fs::remove_file(&probe));
        match usable {
            Ok(()) => Some(StateDir(path.to_owned())),
            Err(e) => {
                tracing::warn!(
                    "state_dir {}: {e}; running without persistence (a restart while an API server \
                     is unreachable serves nothing from that cluster)",
                    path.display()
                );
                None
            }
        }
    }

    /// The file that holds cluster `name`'s state (names are `[a-z0-9-]+`, safe in a path).
    pub fn cluster_file(&self, name: &str) -> PathBuf {
        self.0.join(format!("cluster-{name}.json"))
    }
}

/// A state file as written: the header, then the objects' arrays beside it.
#[derive(Serialize)]
struct FileOut<'a> {
    format: &'a str,
    cluster: &'a str,
    saved_at: &'a str,
    #[serde(flatten)]
    objects: SavedObjects<'a>,
}

/// What a file must say before the rest of it is read. (The objects are read in a second pass
/// as [`LoadedObjects`], which skips these fields: no buffering of the whole file.)
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    cluster: Option<String>,
    saved_at: Option<String>,
}

/// The state file of `cluster`, as JSON.
pub fn encode(cluster: &str, saved_at: &str, objects: &ClusterObjects) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&FileOut {
        format: FORMAT,
        cluster,
        saved_at,
        objects: objects.saved(),
    })
}

/// Reads a state file of `cluster` back: its time and objects. Anything else (not JSON, another
/// format, another cluster's) is an error that says what it is.
pub fn decode(cluster: &str, bytes: &[u8]) -> Result<(String, ClusterObjects), String> {
    let header: Header = serde_json::from_slice(bytes).map_err(|e| format!("not a kedge state file: {e}"))?;
    match header.format.as_deref() {
        Some(FORMAT) => {}
        Some(other) => return Err(format!("format {other:?}, not {FORMAT:?}")),
        None => return Err(format!("not a kedge state file (no \"format\": {FORMAT:?})")),
    }
    match header.cluster.as_deref() {
        Some(c) if c == cluster => {}
        Some(other) => return Err(format!("the state of cluster {other:?}, not {cluster:?}")),
        None => return Err("not a kedge state file (no \"cluster\")".into()),
    }
    let saved_at = header.saved_at.ok_or("damaged: no \"saved_at\"")?;
    let objects: LoadedObjects = serde_json::from_slice(bytes).map_err(|e| format!("damaged: {e}"))?;
    Ok((saved_at, objects.into()))
}

/// Loads `cluster`'s state from `file`: `None` when there is no file.
pub fn load(file: &Path, cluster: &str) -> Result<Option<(String, ClusterObjects)>, String> {
    match fs::read(file) {
        Ok(bytes) => decode(cluster, &bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees the old file or the new one,
/// never a part: a temp file next to it, written and fsynced, renamed over it, then the
/// directory fsynced so that the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
pub(super) mod tests;
