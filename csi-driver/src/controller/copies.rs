//! Copies in the background: snapshots and clones of large volumes take longer than a gRPC call
//! should. Each copy is keyed by the id of what it fills; a request starts it (or finds it
//! running), waits a little, and otherwise answers "in progress" so that the caller polls (the
//! snapshotter sees `ready_to_use: false`, the provisioner ABORTED and retries). At most
//! `limit` copies run at once; the others queue.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::grpc::error::CsiError;
use crate::share::nfs::Progress;

pub struct Copies {
    slots: Arc<Semaphore>,
    wait: Duration,
    jobs: Mutex<HashMap<String, Job>>,
}

struct Job {
    /// The id of the volume or snapshot the copy reads from (which must not be deleted under
    /// it).
    source: Option<String>,
    progress: Arc<Progress>,
    done: watch::Receiver<bool>,
    result: Arc<Mutex<Option<Result<u64, CsiError>>>>,
    task: tokio::task::AbortHandle,
}

/// Counts a copy in `tether_csi_copies` while it lives (also when it is cancelled).
struct CountedCopy;

impl CountedCopy {
    fn start() -> CountedCopy {
        crate::metrics::metrics().copies.inc();
        CountedCopy
    }
}

impl Drop for CountedCopy {
    fn drop(&mut self) {
        crate::metrics::metrics().copies.dec();
    }
}

/// Where a copy stands after the wait.
pub enum Outcome {
    /// Finished: the bytes copied.
    Done(u64),
    Failed(CsiError),
    /// Still at work (or waiting for a slot).
    Running {
        bytes: u64,
        files: u64,
    },
}

impl Copies {
    /// At most `limit` copies at once; a request waits up to `wait` for its copy.
    pub fn new(limit: usize, wait: Duration) -> Copies {
        Copies {
            slots: Arc::new(Semaphore::new(limit.max(1))),
            wait,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The copy for `key`: joins the one running, or starts `copy` (given the progress counter
    /// to update). Waits for it up to the configured time. A finished copy's outcome is handed
    /// out once.
    pub async fn run<F, Fut>(&self, key: &str, source: Option<&str>, copy: F) -> Outcome
    where
        F: FnOnce(Arc<Progress>) -> Fut,
        Fut: Future<Output = Result<u64, CsiError>> + Send + 'static,
    {
        let (mut done, progress) = {
            let mut jobs = self.jobs();
            let job = jobs.entry(key.to_string()).or_insert_with(|| {
                let progress = Arc::new(Progress::default());
                let work = copy(progress.clone());
                let (tell, done) = watch::channel(false);
                let result = Arc::new(Mutex::new(None));
                let slots = self.slots.clone();
                let slot_result = result.clone();
                let counted = CountedCopy::start();
                let task = tokio::spawn(async move {
                    let _counted = counted;
                    let outcome = match slots.acquire_owned().await {
                        Ok(_slot) => work.await,
                        Err(_) => Err(CsiError::Internal("the copy queue is closed".into())),
                    };
                    *slot_result.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
                    let _ = tell.send(true);
                })
                .abort_handle();
                Job {
                    source: source.map(str::to_string),
                    progress,
                    done,
                    result,
                    task,
                }
            });
            (job.done.clone(), job.progress.clone())
        };
        let finished = tokio::time::timeout(self.wait, done.wait_for(|d| *d))
            .await
            .is_ok_and(|r| r.is_ok());
        if !finished {
            return Outcome::Running {
                bytes: progress.bytes(),
                files: progress.files(),
            };
        }
        let Some(job) = self.jobs().remove(key) else {
            // Another request for the same key took the outcome first: what it made of it is
            // on the share by the time this caller looks again.
            return Outcome::Running {
                bytes: progress.bytes(),
                files: progress.files(),
            };
        };
        let outcome = job.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        match outcome {
            Some(Ok(bytes)) => Outcome::Done(bytes),
            Some(Err(e)) => Outcome::Failed(e),
            None => Outcome::Failed(CsiError::Internal("a copy ended without a result".into())),
        }
    }

    /// Whether a copy for `key` is running (or finished and not yet collected).
    pub fn has(&self, key: &str) -> bool {
        self.jobs().contains_key(key)
    }

    /// Whether a running copy reads from the volume or snapshot `id`.
    pub fn reads_from(&self, id: &str) -> bool {
        self.jobs()
            .values()
            .any(|job| job.source.as_deref() == Some(id) && !*job.done.borrow())
    }

    /// Stops the copy for `key`, if any (its partial result is the caller's to remove).
    pub fn cancel(&self, key: &str) {
        if let Some(job) = self.jobs().remove(key) {
            job.task.abort();
            tracing::info!(key, "copy cancelled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_finish_in_the_background_and_queue_beyond_the_limit() {
        let copies = Copies::new(1, Duration::from_millis(50));
        let (release, gate) = watch::channel(false);
        let slow = |mut gate: watch::Receiver<bool>| {
            move |progress: Arc<Progress>| async move {
                progress
                    .bytes
                    .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
                let _ = gate.wait_for(|g| *g).await;
                Ok(7)
            }
        };
        assert!(matches!(
            copies.run("a", Some("vol"), slow(gate.clone())).await,
            Outcome::Running { bytes: 7, .. }
        ));
        assert!(copies.reads_from("vol"));
        // Queued behind "a": nothing done yet.
        assert!(matches!(
            copies.run("b", None, slow(gate.clone())).await,
            Outcome::Running { bytes: 0, .. }
        ));
        // Joining a running copy does not start another.
        assert!(matches!(
            copies.run("a", None, |_| async { Ok(99) }).await,
            Outcome::Running { .. }
        ));
        release.send(true).unwrap();
        assert!(matches!(
            copies.run("a", None, slow(gate.clone())).await,
            Outcome::Done(7)
        ));
        assert!(!copies.has("a") && !copies.reads_from("vol"));
        assert!(matches!(
            copies.run("b", None, slow(gate.clone())).await,
            Outcome::Done(7)
        ));
        assert!(matches!(
            copies
                .run("c", None, |_| async { Err(CsiError::invalid("no")) })
                .await,
            Outcome::Failed(CsiError::Invalid(_))
        ));
        copies.run("d", None, slow(watch::channel(false).1)).await;
        copies.cancel("d");
        assert!(!copies.has("d"));
    }
}
