//! Graceful shutdown (RELIABILITY S5): stop admitting, let running jobs finish up to a
//! deadline, cancel the rest, and return once every job is settled (its hold settled or
//! voided), so the process can exit with nothing reserved.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::{JobError, Jobs};

/// How long cancelled jobs get to confirm and settle after the deadline: a step of the engine
/// and one database transaction each.
const SETTLE_GRACE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
pub(crate) struct DrainState {
    draining: AtomicBool,
    /// Set just before the jobs still running at the deadline are cancelled.
    cancelling: AtomicBool,
    /// Work under way that a shutdown waits for: admissions (from the first check to the job
    /// queued or refused) and callers' tasks (a batch line, up to its line's last write).
    busy: AtomicUsize,
    /// Jobs queued and not yet settled, with a way to cancel each.
    live: Mutex<HashMap<String, engine::Canceller>>,
}

/// Work a shutdown waits for, counted for as long as this lives.
#[derive(Debug)]
pub struct Busy(Jobs);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inner.drain.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Jobs that were still running at the deadline and were cancelled.
    pub cancelled: usize,
    /// Jobs still not settled when the drain gave up (their holds expire by TTL, and the
    /// journal or a live instance settles them).
    pub unsettled: usize,
}

impl Jobs {
    /// Counts work a shutdown must wait for (an admission, a batch line's task), or refuses it
    /// once the instance is draining.
    pub fn busy(&self) -> Result<Busy, JobError> {
        let d = &self.inner.drain;
        d.busy.fetch_add(1, Ordering::SeqCst);
        let guard = Busy(self.clone());
        // Checked after counting: a drain that starts meanwhile either sees this work or is
        // seen by it.
        if d.draining.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        Ok(guard)
    }

    pub(crate) fn track(&self, job_id: &str, canceller: engine::Canceller) {
        lock(&self.inner.drain.live).insert(job_id.to_string(), canceller);
    }

    pub(crate) fn untrack(&self, job_id: &str) {
        lock(&self.inner.drain.live).remove(job_id);
    }

    pub(crate) fn cancelled_for_shutdown(&self) -> bool {
        self.inner.drain.cancelling.load(Ordering::SeqCst)
    }

    /// Whether this instance stopped admitting jobs.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.draining.load(Ordering::SeqCst)
    }

    /// Jobs admitted here and not yet settled.
    pub fn unsettled(&self) -> usize {
        lock(&self.inner.drain.live).len()
    }

    fn settled_all(&self) -> bool {
        self.inner.drain.busy.load(Ordering::SeqCst) == 0 && self.unsettled() == 0
    }

    /// Stops admitting (new jobs get [`JobError::ShuttingDown`]), waits up to `deadline` for the
    /// running jobs to end, then cancels those left (a stream is charged for what it delivered,
    /// anything else is voided) and waits for them to settle.
    pub async fn drain(&self, deadline: Duration) -> Drained {
        let d = &self.inner.drain;
        d.draining.store(true, Ordering::SeqCst);
        let until = Instant::now() + deadline;
        while !self.settled_all() && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        let mut cancelled = 0;
        if !self.settled_all() {
            d.cancelling.store(true, Ordering::SeqCst);
            let left: Vec<engine::Canceller> = lock(&d.live).values().cloned().collect();
            cancelled = left.len();
            tracing::warn!(jobs = cancelled, "shutdown deadline reached: cancelling");
            for c in left {
                c.cancel();
            }
            let until = Instant::now() + SETTLE_GRACE;
            while !self.settled_all() && Instant::now() < until {
                tokio::time::sleep(POLL).await;
            }
        }
        Drained {
            cancelled,
            unsettled: self.unsettled(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
