//! `OrderSyncActor`: one per order id. An actor because it gives each order a mailbox of its
//! own: the order's events queue there and are handled one at a time (`AtomicResponse` holds
//! the mailbox until an event is fully handled), so the external API never sees two calls for
//! one order at once, while other orders' actors run concurrently.
//!
//! This file is the actor's plumbing (its mailbox, its idle timer); what handling an event means
//! is [`super::event_path`].

use crate::domain::OrderId;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tracing::Instrument;

use super::deps::SyncDeps;
use super::event_path::sync_order;
use super::messages::{HandleEvent, OrderActorIdle, StopIdle};

pub struct OrderSyncActor {
    order_id: OrderId,
    /// Tells this actor apart from a later one for the same order.
    child_id: u64,
    deps: Rc<SyncDeps>,
    /// Where the actor offers to stop when idle (the supervisor).
    supervisor: Recipient<OrderActorIdle>,
    idle_after: Duration,
    /// Events handled so far; the supervisor compares it with the events it sent.
    handled: u64,
    /// Events forwarded to this actor and not yet handled (shared with the supervisor, which
    /// adds to it; same arbiter, so a `Cell`).
    mailbox_depth: Rc<Cell<u64>>,
    idle_timer: Option<SpawnHandle>,
}

impl OrderSyncActor {
    pub fn new(
        order_id: OrderId,
        child_id: u64,
        deps: Rc<SyncDeps>,
        supervisor: Recipient<OrderActorIdle>,
        idle_after: Duration,
        mailbox_depth: Rc<Cell<u64>>,
    ) -> Self {
        Self {
            order_id,
            child_id,
            deps,
            supervisor,
            idle_after,
            handled: 0,
            mailbox_depth,
            idle_timer: None,
        }
    }

    /// (Re)starts the idle countdown; when it runs out, the actor offers to stop.
    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.idle_timer.take() {
            ctx.cancel_future(handle);
        }
        self.idle_timer = Some(ctx.run_later(self.idle_after, |act, _| {
            act.supervisor.do_send(OrderActorIdle {
                order_id: act.order_id,
                child_id: act.child_id,
                handled: act.handled,
            });
        }));
    }
}

impl Actor for OrderSyncActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.arm_idle_timer(ctx);
    }
}

impl Handler<HandleEvent> for OrderSyncActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: HandleEvent, ctx: &mut Context<Self>) -> Self::Result {
        // Not idle while working; re-armed when this event is done.
        if let Some(handle) = self.idle_timer.take() {
            ctx.cancel_future(handle);
        }
        let deps = self.deps.clone();
        let HandleEvent { event, done } = msg;
        // Every line logged while handling the event (database retries included) carries it.
        let span = tracing::info_span!(
            "sync_event",
            order_id = event.order_id.get(),
            version = event.version,
            kind = event.kind.as_str()
        );
        AtomicResponse::new(Box::pin(
            async move { sync_order(&deps, event).await }
                .instrument(span)
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    act.handled += 1;
                    act.mailbox_depth
                        .set(act.mailbox_depth.get().saturating_sub(1));
                    act.deps.metrics.mailbox_depth.dec();
                    let _ = done.send(outcome);
                    act.arm_idle_timer(ctx);
                }),
        ))
    }
}

impl Handler<StopIdle> for OrderSyncActor {
    type Result = ();

    fn handle(&mut self, _: StopIdle, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
