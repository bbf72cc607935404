//! Group commit: concurrent writes of one kind are gathered and written in one transaction.
//!
//! A batch takes whatever is waiting when the writer is free — nothing waits for a batch to
//! fill, so an idle system pays no latency for it, and a busy one pays one commit for many
//! writes. If a whole batch fails, its items are written one by one, so each caller gets its
//! own error and one bad item cannot fail the others.
//!
//! The writer task runs on its owner's [`TaskTracker`] and stops when its `stop` token is
//! cancelled: what was submitted before is still written, what comes after is refused as a
//! closed store.

use std::{future::Future, sync::Arc};

use orchion_store::StoreError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

/// Writes items of type `T` in batches; each caller gets its own result.
pub(crate) struct Batcher<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
}

impl<T, R> Batcher<T, R>
where
    T: Clone + Send + 'static,
    R: Send + 'static,
{
    /// Starts the writer task on `tasks`, until `stop`. `write` stores a batch in one
    /// transaction and returns one result per item, or an error when nothing was written.
    pub(crate) fn spawn<F, Fut>(
        max: usize,
        tasks: &TaskTracker,
        stop: CancellationToken,
        write: F,
    ) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(max * 4);
        let write = Arc::new(write);
        tasks.spawn(async move {
            loop {
                // What is queued is written first (without looking at `stop`: under load the
                // queue is rarely empty); once stopped, the queue is closed and drained, so no
                // caller is left without an answer.
                let first = match rx.try_recv() {
                    Ok(first) => Some(first),
                    Err(_) => tokio::select! {
                        biased;
                        first = rx.recv() => first,
                        () = stop.cancelled() => {
                            rx.close();
                            rx.recv().await
                        }
                    },
                };
                let Some(first) = first else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
                match write(items.clone()).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(e) if items.len() == 1 => {
                        if let Some(reply) = replies.into_iter().next() {
                            let _ = reply.send(Err(e));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, size = items.len(), "a batch failed; writing its items one by one");
                        for (item, reply) in items.into_iter().zip(replies) {
                            let result = match write(vec![item]).await {
                                Ok(mut results) => results.pop().unwrap_or_else(|| {
                                    Err(StoreError::Corrupt(
                                        "a batch of one came back empty".into(),
                                    ))
                                }),
                                Err(e) => Err(e),
                            };
                            let _ = reply.send(result);
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Writes one item with whatever else is waiting, and returns its own result.
    pub(crate) async fn submit(&self, item: T) -> Result<R, StoreError> {
        let (reply, result) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }

    /// Writes several items with whatever else is waiting, and returns their results in order.
    /// The items are queued together, so they share transactions as far as the batch size lets.
    pub(crate) async fn submit_all(&self, items: Vec<T>) -> Vec<Result<R, StoreError>> {
        let total = items.len();
        let mut pending = Vec::with_capacity(total);
        for item in items {
            let (reply, result) = oneshot::channel();
            if self.tx.send((item, reply)).await.is_err() {
                break;
            }
            pending.push(result);
        }
        let mut results = Vec::with_capacity(total);
        for result in pending {
            results.push(result.await.map_err(|_| closed()).and_then(|r| r));
        }
        // Items the writer never took (it stopped) fail as a closing store does.
        results.resize_with(total, || Err(closed()));
        results
    }
}

/// The error of a store that is shutting down.
fn closed() -> StoreError {
    StoreError::Unavailable(orchion_store::sqlx::Error::PoolClosed)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_writes_share_transactions_and_keep_their_own_results() {
        let calls = Arc::new(AtomicUsize::new(0));
        let batcher: Arc<Batcher<u32, u32>> = Arc::new({
            let calls = calls.clone();
            Batcher::spawn(
                64,
                &TaskTracker::new(),
                CancellationToken::new(),
                move |items: Vec<u32>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Hold the "transaction" a moment, as a commit does, so others queue up.
                        tokio::task::yield_now().await;
                        Ok(items
                            .into_iter()
                            .map(|i| {
                                if i % 10 == 9 {
                                    Err(StoreError::Conflict(format!("{i}")))
                                } else {
                                    Ok(i * 2)
                                }
                            })
                            .collect())
                    }
                },
            )
        });
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.submit(i).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.unwrap();
            match result {
                Ok(doubled) => assert_eq!(doubled, i * 2),
                Err(StoreError::Conflict(which)) => assert_eq!(which, i.to_string()),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(calls.load(Ordering::SeqCst) < 200, "writes were grouped");
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_item_by_item() {
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let batcher: Batcher<u32, u32> =
            Batcher::spawn(64, &tracker, stop, |items: Vec<u32>| async move {
                if items.len() > 1 {
                    return Err(StoreError::Conflict("the whole batch".into()));
                }
                match items[0] {
                    3 => Err(StoreError::Conflict("three".into())),
                    i => Ok(vec![Ok(i)]),
                }
            });
        let batcher = Arc::new(batcher);
        let tasks: Vec<_> = (0..8u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.submit(i).await) })
            })
            .collect();
        for task in tasks {
            let (i, result) = task.await.unwrap();
            if i == 3 {
                assert!(matches!(result, Err(StoreError::Conflict(m)) if m == "three"));
            } else {
                assert_eq!(result.unwrap(), i);
            }
        }
    }

    #[tokio::test]
    async fn a_stopped_batcher_refuses_new_items_and_its_task_ends() {
        let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
        let batcher: Batcher<u32, u32> =
            Batcher::spawn(8, &tracker, stop.clone(), |items: Vec<u32>| async move {
                Ok(items.into_iter().map(Ok).collect())
            });
        assert_eq!(batcher.submit(1).await.unwrap(), 1);
        stop.cancel();
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .expect("the writer task ends once stopped");
        assert!(matches!(
            batcher.submit(2).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
