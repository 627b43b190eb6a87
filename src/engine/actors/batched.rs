//! The engine's per-event statements, batched: reading an order as its actor needs it (and
//! marking a create as sent), recording a successful call, and writing the attempt log
//! (`crate::db::attempts`). Each order actor still asks for
//! its own row and records its own outcome, one event at a time; what it asks is queued, and a
//! task sends everything that queued while the previous batch was on its way as one statement
//! (`WHERE id = ANY($1)`, `UPDATE … FROM unnest(…)`). One round trip and one commit then serve
//! many orders, so the engine is not bound by PostgreSQL's per-transaction rate (BENCHMARKS.md,
//! issue 13). Nothing waits for a batch to fill: a lone request goes out at once.
//!
//! A batch that fails is sent again one request at a time, so each request gets its own answer:
//! a transient error is retried by its caller's `db_step`, and a rejected statement concerns
//! only the order it came from.
//!
//! Hand-written: no crate batches async requests into one SQL statement per round trip with
//! per-request answers; this is a channel, a semaphore and two queries.

use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use crate::db::PgPool;
use crate::domain::OrderId;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::db::attempts::{self, NewAttempt};
use crate::db::sync::{self as queries, SyncRow};
use crate::db::QueryError;

/// Most requests in one statement.
const MOST_PER_BATCH: usize = 256;
/// Batches of one kind on their way at once. While they are, requests queue and the next batch
/// grows: the busier the engine, the larger its batches.
const BATCHES_IN_FLIGHT: usize = 4;

type Reply<T> = oneshot::Sender<Result<T, QueryError>>;

/// A queue of requests of one kind, sent in batches.
struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<(Req, Reply<Resp>)>,
}

impl<Req: Clone + 'static, Resp: 'static> Batcher<Req, Resp> {
    /// Starts the batching task on the current arbiter. `batch` answers a whole batch, one
    /// answer per request in the same order; `single` answers one request alone.
    fn start<B, BFut, S, SFut>(batch: B, single: S) -> Self
    where
        B: Fn(Vec<Req>) -> BFut + 'static,
        BFut: Future<Output = Result<Vec<Resp>, QueryError>> + 'static,
        S: Fn(Req) -> SFut + Clone + 'static,
        SFut: Future<Output = Result<Resp, QueryError>> + 'static,
    {
        let (queue, mut waiting) = mpsc::unbounded_channel::<(Req, Reply<Resp>)>();
        let batch = Rc::new(batch);
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        actix_rt::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return; // never closed
                };
                let mut taken = Vec::with_capacity(MOST_PER_BATCH);
                if waiting.recv_many(&mut taken, MOST_PER_BATCH).await == 0 {
                    return; // every sender is gone: the engine stopped
                }
                let (batch, single) = (batch.clone(), single.clone());
                actix_rt::spawn(async move {
                    let (requests, replies): (Vec<Req>, Vec<Reply<Resp>>) =
                        taken.into_iter().unzip();
                    match batch(requests.clone()).await {
                        Ok(answers) if answers.len() == replies.len() => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        // Each request on its own: its own answer, or its own error.
                        _ => {
                            let alone = requests.into_iter().zip(replies).map(|(req, reply)| {
                                let answer = single(req);
                                async move {
                                    let _ = reply.send(answer.await);
                                }
                            });
                            futures_util::future::join_all(alone).await;
                        }
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `request` at once, and returns its answer to wait for.
    fn ask(&self, request: Req) -> impl Future<Output = Result<Resp, QueryError>> + use<Req, Resp> {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue.send((request, reply));
        async move {
            queued.map_err(|_| QueryError::PoolClosed)?;
            answer.await.unwrap_or(Err(QueryError::PoolClosed))
        }
    }
}

/// A successful call to record: the order, the version the external API now holds, and the
/// call's attempts for the attempt log.
#[derive(Clone)]
struct Success {
    id: OrderId,
    version: i64,
    attempts: Vec<NewAttempt>,
}

/// The batched statements of the event path. Built once per engine, on its arbiter.
pub struct BatchedQueries {
    loads: Batcher<OrderId, Option<SyncRow>>,
    successes: Batcher<Success, Option<i64>>,
    /// The attempts of one call each.
    attempts: Batcher<Vec<NewAttempt>, ()>,
}

impl BatchedQueries {
    /// `pool` is the durable pool (the create mark must be on disk before its `POST`);
    /// `bookkeeping` takes the recorded successes and the attempt log.
    pub fn start(pool: PgPool, bookkeeping: PgPool) -> Self {
        let attempts = {
            let (many, one) = (bookkeeping.clone(), bookkeeping.clone());
            Batcher::start(
                move |calls: Vec<Vec<NewAttempt>>| {
                    let pool = many.clone();
                    async move {
                        let answers = vec![(); calls.len()];
                        let rows: Vec<NewAttempt> = calls.into_iter().flatten().collect();
                        attempts::insert_many(&pool, &rows).await?;
                        Ok(answers)
                    }
                },
                move |call: Vec<NewAttempt>| {
                    let pool = one.clone();
                    async move { attempts::insert_many(&pool, &call).await }
                },
            )
        };
        let loads = {
            let (many, one) = (pool.clone(), pool);
            Batcher::start(
                move |ids: Vec<OrderId>| {
                    let pool = many.clone();
                    async move {
                        let rows = queries::load_many_marking_create(&pool, &ids).await?;
                        let by_id: HashMap<OrderId, SyncRow> =
                            rows.into_iter().map(|row| (row.id(), row)).collect();
                        Ok(ids.iter().map(|id| by_id.get(id).cloned()).collect())
                    }
                },
                move |id| {
                    let pool = one.clone();
                    async move { queries::load_marking_create(&pool, id).await }
                },
            )
        };
        let successes = {
            let (many, one) = (bookkeeping.clone(), bookkeeping);
            Batcher::start(
                move |synced: Vec<Success>| {
                    let pool = many.clone();
                    async move {
                        let pairs: Vec<(OrderId, i64)> =
                            synced.iter().map(|s| (s.id, s.version)).collect();
                        let attempts: Vec<NewAttempt> =
                            synced.into_iter().flat_map(|s| s.attempts).collect();
                        let current = queries::record_many_synced(&pool, &pairs, &attempts).await?;
                        let by_id: HashMap<OrderId, i64> = current.into_iter().collect();
                        Ok(pairs.iter().map(|(id, _)| by_id.get(id).copied()).collect())
                    }
                },
                move |success: Success| {
                    let pool = one.clone();
                    async move {
                        let pair = [(success.id, success.version)];
                        let current =
                            queries::record_many_synced(&pool, &pair, &success.attempts).await?;
                        Ok(current.first().map(|&(_, version)| version))
                    }
                },
            )
        };
        Self {
            loads,
            successes,
            attempts,
        }
    }

    /// [`queries::load_marking_create`], in a batch.
    pub async fn load_marking_create(&self, id: OrderId) -> Result<Option<SyncRow>, QueryError> {
        self.loads.ask(id).await
    }

    /// [`queries::record_synced`] in a batch, writing the call's `attempts` to the attempt log
    /// in the same statement.
    pub async fn record_synced(
        &self,
        id: OrderId,
        version: i64,
        attempts: Vec<NewAttempt>,
    ) -> Result<Option<i64>, QueryError> {
        self.successes
            .ask(Success {
                id,
                version,
                attempts,
            })
            .await
    }

    /// Queues the attempts of one call for the attempt log at once (a call whose success is
    /// recorded gives them to [`Self::record_synced`] instead); the returned future ends when
    /// they are written. The log is not state: a batch that cannot be written is reported
    /// and dropped, never retried in the event's way.
    pub fn log_attempts(&self, call: Vec<NewAttempt>) -> impl Future<Output = ()> + use<> {
        let order_id = call.first().map(|a| a.order_id);
        let written = (!call.is_empty()).then(|| self.attempts.ask(call));
        async move {
            let Some(written) = written else { return };
            if let Err(error) = written.await {
                tracing::warn!(order_id = order_id.map(OrderId::get), error = %error, "cannot write the attempt log; these attempts are not recorded");
            }
        }
    }
}
