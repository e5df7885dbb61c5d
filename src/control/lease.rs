//! The election of a cluster's one Ingress status writer: of all the kedges following a cluster
//! (one per edge host), only the holder of a `coordination.k8s.io/v1` Lease writes status
//! ([`super::status`]); the others serve traffic alike and take over when the holder stops
//! renewing. Client-go's leader election, with its defaults:
//!
//! - The holder renews every [`RETRY_PERIOD`] (2 s) and stops writing when it could not renew
//!   within [`RENEW_DEADLINE`] (10 s) of its last renewal, or at once when it sees another holder.
//! - Another kedge takes the Lease over when no one holds it (absent: created; released), or when
//!   the record has not changed for its `leaseDurationSeconds` ([`LEASE_DURATION`], 15 s) as
//!   measured on *this* host's clock since it last saw the record change, never against the
//!   remote `renewTime`: clock skew between hosts does not matter. The gap between the 10 s and
//!   the 15 s is what keeps two writers from overlapping. Candidates try every 2 s, jittered up
//!   to 4.4 s (client-go's factor 1.2), so that they do not retry in step.
//! - Every write is an update carrying the resourceVersion last seen: a 409 Conflict means that
//!   another kedge won this round. `leaseTransitions` counts the changes of holder.
//! - On a clean stop (SIGTERM) the holder releases the Lease as client-go's `ReleaseOnCancel`
//!   does: holder cleared, `leaseDurationSeconds` 1, so another kedge takes over at its next try
//!   instead of 15 s later.
//!
//! The holder identity is this host's name, `_`, and 128 random bits written as a UUID
//! (client-go's `hostname_uuid`): every process is a new holder.
//!
//! [`Elector`] is the decision, pure (records and instants in, the record to write out); the
//! task around it does the reads and writes. Becoming and ceasing to be the writer is logged once
//! each, and is the gauge `kedge_status_writer{cluster}` ([`crate::stats::status_writer`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::ClusterConfig;

/// How long a record stays in force after it last changed (client-go's `LeaseDuration`).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder goes on writing without a successful renewal (`RenewDeadline`).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the holder renews and the others try (`RetryPeriod`).
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// A candidate waits `RETRY_PERIOD` plus up to this many times it between tries (client-go's
/// `JitterFactor`).
const JITTER: f64 = 1.2;
/// The longest a stop waits for the release to be written.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The record as this kedge last saw it.
#[derive(Debug, Clone)]
struct Observed {
    spec: LeaseSpec,
    /// The resourceVersion the next update names.
    rv: Option<String>,
    /// When (on this host's clock) the record was first seen as it is now.
    at: Instant,
}

/// One kedge's side of the election: who it is and what it last saw.
#[derive(Debug)]
pub struct Elector {
    me: String,
    observed: Option<Observed>,
}

impl Elector {
    pub fn new(me: String) -> Elector {
        Elector { me, observed: None }
    }

    /// Takes in a Lease as read or written at `now`: the observation time moves only when the
    /// record differs from the one seen last (a renewal changes `renewTime`, so a live holder's
    /// record changes every retry period).
    pub fn observe(&mut self, lease: &Lease, now: Instant) {
        let spec = lease.spec.clone().unwrap_or_default();
        let rv = lease.metadata.resource_version.clone();
        match &mut self.observed {
            Some(o) if o.spec == spec => o.rv = rv,
            _ => self.observed = Some(Observed { spec, rv, at: now }),
        }
    }

    /// The holder in the record seen last (`None`: no record seen, or no one holds it).
    pub fn holder(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .and_then(|o| o.spec.holder_identity.as_deref())
            .filter(|h| !h.is_empty())
    }

    /// Whether the record seen last names this kedge.
    pub fn is_leader(&self) -> bool {
        self.holder() == Some(self.me.as_str())
    }

    /// Whether the record seen last is still in force at `now`: less than its duration since
    /// it was seen to change.
    fn in_force(&self, now: Instant) -> bool {
        self.observed.as_ref().is_some_and(|o| {
            let secs = o.spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
            o.at + Duration::from_secs(secs) > now
        })
    }

    /// The record that makes this kedge the holder, written at `wall`: renewal of its own record
    /// (acquire time and transitions kept), or a takeover (transitions + 1), or the first record
    /// when none was seen (create). `None` while another holder's record is in force.
    pub fn claim(&self, now: Instant, wall: Timestamp) -> Option<LeaseSpec> {
        let t = MicroTime(wall);
        let mut spec = LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(t.clone()),
            renew_time: Some(t),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
        let Some(o) = &self.observed else {
            return Some(spec);
        };
        let transitions = o.spec.lease_transitions.unwrap_or(0);
        if self.is_leader() {
            spec.acquire_time.clone_from(&o.spec.acquire_time);
            spec.lease_transitions = Some(transitions);
        } else if self.holder().is_some() && self.in_force(now) {
            return None;
        } else {
            spec.lease_transitions = Some(transitions.saturating_add(1));
        }
        Some(spec)
    }

    /// The record that gives the Lease up at `wall` (client-go's release: no holder, a 1 s
    /// duration, transitions kept); `None` when the record seen last is not this kedge's.
    pub fn release(&self, wall: Timestamp) -> Option<LeaseSpec> {
        let o = self.observed.as_ref().filter(|_| self.is_leader())?;
        let t = MicroTime(wall);
        Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(t.clone()),
            renew_time: Some(t),
            lease_transitions: o.spec.lease_transitions,
            ..LeaseSpec::default()
        })
    }

    /// The Lease object that writes `spec` over the record seen last (its resourceVersion).
    fn update(&self, name: &str, spec: LeaseSpec) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: self.observed.as_ref().and_then(|o| o.rv.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        }
    }
}

/// This process's holder identity: host name, `_`, a random UUID (version 4).
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kedge".to_owned());
    let mut b = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{host}_{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// 16 bytes from the system's random source (the clock's nanoseconds if it fails).
fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut b).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = nanos.to_le_bytes();
    }
    b
}

/// A cluster's campaign, as its status writer holds it: whether this kedge holds the Lease now,
/// and the stop that releases it.
pub struct Election {
    holding: watch::Receiver<bool>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Election {
    /// Starts campaigning for the cluster's `status_lease` on the current runtime.
    pub fn start(client: Client, cfg: &ClusterConfig) -> Election {
        let (tx, holding) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let campaign = Campaign {
            api: Api::namespaced(client, &cfg.status_lease.namespace),
            name: cfg.status_lease.name.clone(),
            lease: cfg.status_lease.to_string(),
            cluster: cfg.name.clone(),
            holding: tx,
        };
        crate::stats::status_writer(&cfg.name, false);
        let task = tokio::spawn(campaign.run(Elector::new(identity()), stopped));
        Election { holding, stop, task }
    }

    /// Whether this kedge holds the Lease, changing as it does.
    pub fn holding(&self) -> watch::Receiver<bool> {
        self.holding.clone()
    }

    /// Stops campaigning; a holder releases the Lease first (waiting at most
    /// [`RELEASE_TIMEOUT`] for the write).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(RELEASE_TIMEOUT + Duration::from_millis(500), self.task).await;
    }
}

/// The task's side of an [`Election`].
struct Campaign {
    api: Api<Lease>,
    name: String,
    /// `namespace/name`, for the log.
    lease: String,
    cluster: String,
    holding: watch::Sender<bool>,
}

/// What one try found.
enum Tried {
    /// This kedge holds the Lease (created, renewed or taken over).
    Held,
    /// Another kedge's record is in force, or another kedge wrote first (409).
    Other,
}

/// A failed create or update: a 409 (AlreadyExists, Conflict) means another kedge won this round.
fn lost(e: kube::Error) -> Result<Tried, String> {
    match e {
        kube::Error::Api(s) if s.code == 409 => Ok(Tried::Other),
        e => Err(e.to_string()),
    }
}

impl Campaign {
    /// Tries and waits, in turn, until stopped; then releases the Lease if it holds it.
    async fn run(self, mut el: Elector, mut stopped: oneshot::Receiver<()>) {
        // The last successful renewal while holding.
        let mut renewed: Option<Instant> = None;
        // The error of the failing streak, logged at its start.
        let mut failing = false;
        let mut rng = u64::from_le_bytes(random_bytes()[..8].try_into().unwrap_or([1; 8])) | 1;
        loop {
            // A holder's try may take until its renew deadline; a candidate's as long.
            let deadline = renewed.unwrap_or_else(Instant::now) + RENEW_DEADLINE;
            let tried = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.try_once(&mut el)) => r.unwrap_or_else(|_| {
                    Err(format!("no answer within {}s", RENEW_DEADLINE.as_secs()))
                }),
                _ = &mut stopped => break,
            };
            let now = Instant::now();
            match tried {
                Ok(Tried::Held) => {
                    renewed = Some(now);
                    if std::mem::take(&mut failing) {
                        tracing::info!(cluster = self.cluster, lease = self.lease, "status Lease reached again");
                    }
                    self.set(true, "");
                }
                Ok(Tried::Other) => {
                    renewed = None;
                    failing = false;
                    self.set(false, "another kedge holds the Lease");
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            cluster = self.cluster,
                            lease = self.lease,
                            error = e,
                            "cannot read or write the status Lease; retrying"
                        );
                    }
                    if renewed.is_some_and(|t| now >= t + RENEW_DEADLINE) {
                        renewed = None;
                        self.set(
                            false,
                            &format!("could not renew the Lease within {}s", RENEW_DEADLINE.as_secs()),
                        );
                    }
                }
            }
            let wait = if renewed.is_some() {
                RETRY_PERIOD
            } else {
                // xorshift64*, for the jitter only.
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let r = rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let f = (r >> 11) as f64 / (1u64 << 53) as f64;
                RETRY_PERIOD + RETRY_PERIOD.mul_f64(JITTER * f)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = &mut stopped => break,
            }
        }
        // Stopped: no more writes, then the release, so that the next holder starts after the
        // last write of this one.
        self.set(false, "kedge is stopping");
        if let Some(spec) = el.release(Timestamp::now()) {
            let lease = el.update(&self.name, spec);
            let pp = PostParams::default();
            let done = tokio::time::timeout(RELEASE_TIMEOUT, self.api.replace(&self.name, &pp, &lease));
            match done.await {
                Ok(Ok(_)) => tracing::info!(cluster = self.cluster, lease = self.lease, "status Lease released"),
                Ok(Err(e)) => {
                    tracing::warn!(cluster = self.cluster, lease = self.lease, error = %e, "cannot release the status Lease")
                }
                Err(_) => tracing::warn!(
                    cluster = self.cluster,
                    lease = self.lease,
                    "cannot release the status Lease in time"
                ),
            }
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: a holder whose record is in force first
    /// updates it straight away; else read it (create it when absent), and write the claim if
    /// there is one.
    async fn try_once(&self, el: &mut Elector) -> Result<Tried, String> {
        let pp = PostParams::default();
        if el.is_leader()
            && let Some(spec) = el.claim(Instant::now(), Timestamp::now())
            && el.in_force(Instant::now())
        {
            // A failure (a 409 above all) falls back to reading the record.
            if let Ok(written) = self.api.replace(&self.name, &pp, &el.update(&self.name, spec)).await {
                el.observe(&written, Instant::now());
                return Ok(Tried::Held);
            }
        }
        let current = self.api.get_opt(&self.name).await.map_err(|e| e.to_string())?;
        let Some(current) = current else {
            // Absent (never made, or deleted): whoever creates it holds it.
            el.observed = None;
            let spec = el.claim(Instant::now(), Timestamp::now()).unwrap_or_default();
            return match self.api.create(&pp, &el.update(&self.name, spec)).await {
                Ok(created) => {
                    el.observe(&created, Instant::now());
                    Ok(Tried::Held)
                }
                Err(e) => lost(e),
            };
        };
        el.observe(&current, Instant::now());
        let Some(spec) = el.claim(Instant::now(), Timestamp::now()) else {
            return Ok(Tried::Other);
        };
        match self.api.replace(&self.name, &pp, &el.update(&self.name, spec)).await {
            Ok(written) => {
                el.observe(&written, Instant::now());
                Ok(Tried::Held)
            }
            Err(e) => lost(e),
        }
    }

    /// Says whether this kedge is the writer now; a change is logged (with `why` when it stops)
    /// and shown by the gauge.
    fn set(&self, holding: bool, why: &str) {
        let changed = self
            .holding
            .send_if_modified(|h| std::mem::replace(h, holding) != holding);
        if !changed {
            return;
        }
        crate::stats::status_writer(&self.cluster, holding);
        if holding {
            tracing::info!(
                cluster = self.cluster,
                lease = self.lease,
                "became the status writer for cluster {}",
                self.cluster
            );
        } else {
            tracing::info!(
                cluster = self.cluster,
                lease = self.lease,
                why,
                "no longer the status writer for cluster {}",
                self.cluster
            );
        }
    }
}

#[cfg(test)]
mod tests;
