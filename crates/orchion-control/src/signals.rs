//! Hearing the other replicas: a listener on the store's signals (PostgreSQL's `LISTEN`) that
//! wakes the claims waiting here when another replica changed work, the scheduler when it
//! changed the schedules, and this replica's event hub when events were appended anywhere.
//! Without replicas (SQLite) it has nothing to do.

use std::{sync::Arc, time::Duration};

use orchion_store::{Heard, Signal, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Scheduler, WorkQueue};

/// How long to wait before listening again after the listener failed.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the store's signals until `stop`: work signals wake `work`'s waiting claims,
/// schedule signals the `scheduler`, event signals ring `events_appended`, token and secret
/// signals make `access` and `secrets` forget what they read. After a lost connection,
/// everything is woken (and forgotten) once.
pub async fn follow_signals(
    store: Arc<dyn Store>,
    work: Arc<WorkQueue>,
    scheduler: Arc<Scheduler>,
    access: Arc<crate::Access>,
    secrets: Arc<crate::Secrets>,
    events_appended: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let listening = tokio::select! {
            listening = store.listen() => listening,
            () = stop.cancelled() => return,
        };
        let mut listener = match listening {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the other replicas' changes; trying again");
                if pause(&stop).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let heard = tokio::select! {
                heard = listener.recv() => heard,
                () = stop.cancelled() => return,
            };
            match heard {
                Ok(heard) => {
                    work.heard(heard);
                    if matches!(heard, Heard::Signal(Signal::Schedules) | Heard::Missed) {
                        scheduler.heard();
                    }
                    if matches!(heard, Heard::Signal(Signal::Events) | Heard::Missed) {
                        events_appended.notify_one();
                    }
                    if matches!(heard, Heard::Signal(Signal::Tokens) | Heard::Missed) {
                        access.forget_checked();
                    }
                    if matches!(heard, Heard::Signal(Signal::Secrets) | Heard::Missed) {
                        secrets.forget();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for the other replicas' changes failed; listening again");
                    work.heard(Heard::Missed);
                    scheduler.heard();
                    events_appended.notify_one();
                    access.forget_checked();
                    secrets.forget();
                    if pause(&stop).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Waits [`RETRY`]; `true` when stopped meanwhile.
async fn pause(stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(RETRY) => false,
        () = stop.cancelled() => true,
    }
}
