//! Giving memory back after bursts. glibc's malloc keeps the pages a burst of connections freed
//! inside each worker thread's arena (only the top of an arena is returned by itself), so RSS
//! stayed at its burst level: measured with 3 bursts of 1,000 keep-alive connections on 2
//! workers, 8 MB idle → 35 MB for good. [`Trimmer`] asks malloc to return free pages
//! (`malloc_trim`, which walks every arena) once the open connections have fallen to less than
//! half of a peak at least `MIN_DROP` above them (HTTP/2 streams count as connections): a few
//! times after a burst, never per request.
//! With it the same bursts come back to within a few MB of idle (BENCHMARKS.md).

use std::sync::atomic::Ordering;

use crate::metrics::WorkerMetrics;

/// A drop in open connections smaller than this is not worth a trim.
const MIN_DROP: i64 = 200;

/// Follows the open connections and trims after a burst ends. Used by the control thread, once a
/// second.
#[derive(Debug, Default)]
pub struct Trimmer {
    peak: i64,
}

impl Trimmer {
    /// Looks at the open connections now; trims when a burst has ended. Returns whether it did.
    pub fn tick(&mut self, workers: &[std::sync::Arc<WorkerMetrics>]) -> bool {
        // HTTP/2 streams count like connections: each holds its request's buffers and upstream
        // connection, so 2,000 streams on 20 connections are a burst as large as 2,000
        // connections (measured: 58 MB kept after `h2load -c20 -m100`, 4.6 MB after a trim).
        let open: i64 = workers
            .iter()
            .map(|w| w.connections.load(Ordering::Relaxed) + w.streams.load(Ordering::Relaxed))
            .sum();
        self.peak = self.peak.max(open);
        if self.peak - open < MIN_DROP || open * 2 > self.peak {
            return false;
        }
        self.peak = open;
        trim();
        true
    }
}

/// Returns free heap pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and only works on malloc's own state, under its own
    // locks; it may be called from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other C libraries: nothing to do (musl returns freed memory by itself).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::Trimmer;
    use crate::metrics::WorkerMetrics;

    #[test]
    fn trims_once_when_a_burst_has_ended() {
        let workers = vec![Arc::new(WorkerMetrics::default()), Arc::new(WorkerMetrics::default())];
        let set = |a: i64, b: i64| {
            workers[0].connections.store(a, Ordering::Relaxed);
            workers[1].connections.store(b, Ordering::Relaxed);
        };
        let mut t = Trimmer::default();
        let mut steps = Vec::new();
        for (a, b) in [
            (10, 10),
            (500, 500),
            (400, 400),
            (200, 100),
            (100, 100),
            (50, 50),
            (60, 60),
            (10, 0),
        ] {
            set(a, b);
            steps.push(t.tick(&workers));
        }
        // Up to 1,000; 800 is not half of it; 300 is (trim; the peak is now 300); 200 is not
        // 200 below; 100 is (trim; peak 100); 120 raises the peak; 10 is not 200 below it.
        assert_eq!(steps, [false, false, false, true, false, true, false, false]);
    }

    #[test]
    fn a_burst_of_streams_on_few_connections_ends_in_a_trim() {
        let w = vec![Arc::new(WorkerMetrics::default())];
        w[0].connections.store(20, Ordering::Relaxed);
        let mut t = Trimmer::default();
        let mut steps = Vec::new();
        for streams in [0, 2_000, 1_500, 100, 0] {
            w[0].streams.store(streams, Ordering::Relaxed);
            steps.push(t.tick(&w));
        }
        // 20 connections throughout: only their streams make the burst (2,020) and its end.
        assert_eq!(steps, [false, false, false, true, false]);
    }
}
