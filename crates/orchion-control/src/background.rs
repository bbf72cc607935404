//! One shape for the control plane's background loops: a [`Reconciler`] is one idempotent pass
//! ([`Reconciler::reconcile`], which tests call directly), and [`drive`] runs it on its period
//! and whenever it is woken, until shutdown — the same `select!`, logging and metrics for every
//! one (liveness, lease reaper, scheduler, workflow engine, event hub). A failed pass is logged
//! and counted; the next pass tries again, nothing retries inside. [`Background`] tracks every
//! task it spawns, so shutdown cancels and joins them all.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{sync::Notify, time::MissedTickBehavior};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Why a pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Its period came round.
    Period,
    /// Something woke it ([`Reconciler::wake`]).
    Wake,
}

/// A background pass over the control plane's state.
pub trait Reconciler: Send + Sync + 'static {
    /// Its name in logs and metrics (`liveness`, `reaper`, …).
    fn name(&self) -> &'static str;

    /// How often it runs when nothing wakes it.
    fn period(&self) -> Duration;

    /// What wakes it before its period ends (with `notify_one`, so a wake-up during a pass is
    /// kept for the next); `None` when only the period does.
    fn wake(&self) -> Option<&Notify> {
        None
    }

    /// One pass; returns how many things it changed.
    fn reconcile(
        &self,
        cause: Cause,
    ) -> impl Future<Output = Result<usize, Box<dyn std::error::Error + Send + Sync>>> + Send;

    /// Runs once when the loop stops (a last write).
    fn stopped(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs `reconciler` until `shutdown`, then its [`Reconciler::stopped`].
pub async fn drive<R: Reconciler>(reconciler: Arc<R>, shutdown: CancellationToken) {
    enum Event {
        Pass(Cause),
        Shutdown,
    }
    let name = reconciler.name();
    let metrics = orchion_metrics::metrics();
    let mut period = tokio::time::interval(reconciler.period());
    period.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let never = Notify::new();
    loop {
        let wake = reconciler.wake().unwrap_or(&never);
        let event = tokio::select! {
            _ = period.tick() => Event::Pass(Cause::Period),
            () = wake.notified() => Event::Pass(Cause::Wake),
            () = shutdown.cancelled() => Event::Shutdown,
        };
        match event {
            Event::Pass(cause) => {
                let started = std::time::Instant::now();
                let outcome = match reconciler.reconcile(cause).await {
                    Ok(0) => "ok",
                    Ok(changed) => {
                        tracing::debug!(reconciler = name, changed, ?cause, "pass done");
                        "ok"
                    }
                    Err(e) => {
                        tracing::warn!(reconciler = name, error = %e, "pass failed; the next one tries again");
                        "error"
                    }
                };
                metrics
                    .reconciler_passes
                    .with_label_values(&[name, outcome])
                    .inc();
                metrics
                    .reconciler_pass_duration
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
            }
            Event::Shutdown => break,
        }
    }
    reconciler.stopped().await;
}

/// The process's background tasks: each one spawned here is tracked, and
/// [`Background::shutdown`] cancels them and waits for every one to end.
#[derive(Debug, Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// What the tasks watch to stop; cancelled by [`Background::shutdown`].
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `reconciler` under [`drive`].
    pub fn reconcile<R: Reconciler>(&self, reconciler: Arc<R>) {
        self.tracker.spawn(drive(reconciler, self.stop.clone()));
    }

    /// Runs a task that ends by itself once [`Background::stopping`] is cancelled.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Asks every task to stop and waits until all have ended.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting {
        passes: AtomicUsize,
        woken: AtomicUsize,
        stopped: AtomicUsize,
        wake: Notify,
        /// Rung at the end of every pass, for the test to wait on.
        passed: Notify,
    }

    impl Reconciler for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }

        fn period(&self) -> Duration {
            Duration::from_secs(3600)
        }

        fn wake(&self) -> Option<&Notify> {
            Some(&self.wake)
        }

        async fn reconcile(
            &self,
            cause: Cause,
        ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
            self.passes.fetch_add(1, Ordering::SeqCst);
            if cause == Cause::Wake {
                self.woken.fetch_add(1, Ordering::SeqCst);
            }
            self.passed.notify_one();
            if cause == Cause::Wake {
                return Err("a failed pass does not stop the loop".into());
            }
            Ok(1)
        }

        async fn stopped(&self) {
            self.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_reconciler_runs_at_once_on_each_wake_and_stops_when_asked() {
        let counting = Arc::new(Counting {
            passes: AtomicUsize::new(0),
            woken: AtomicUsize::new(0),
            stopped: AtomicUsize::new(0),
            wake: Notify::new(),
            passed: Notify::new(),
        });
        let pass = || async {
            tokio::time::timeout(Duration::from_secs(10), counting.passed.notified())
                .await
                .expect("a pass within 10 s");
        };
        let background = Background::new();
        background.reconcile(counting.clone());
        // The first period tick is immediate; the period (an hour) never comes round again.
        pass().await;
        for expected in 1..=3 {
            counting.wake.notify_one();
            pass().await;
            assert_eq!(counting.woken.load(Ordering::SeqCst), expected);
        }
        assert_eq!(counting.passes.load(Ordering::SeqCst), 4);
        background.shutdown().await;
        assert_eq!(
            counting.stopped.load(Ordering::SeqCst),
            1,
            "stopped once, joined"
        );
    }
}
