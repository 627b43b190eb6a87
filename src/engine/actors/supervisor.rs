//! `SupervisorActor`: spawns or reuses one `OrderSyncActor` per order id. An actor because the
//! map from order id to actor is state that only one party may change: spawning, forwarding and
//! forgetting happen in its mailbox, one after another, so two actors can never exist for one
//! order.
//!
//! Idle actors stop: an actor whose idle timer ran out reports how many events it handled; if
//! the supervisor has sent it no more than that, nothing is on its way to it, so it is forgotten
//! and told to stop. A failed actor (its mailbox closed) is replaced on the next event; the
//! events it held were never acknowledged and are delivered again by the dispatcher.

use crate::domain::OrderId;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::deps::SyncDeps;
use super::messages::{GetMailboxStats, HandleEvent, MailboxStats, OrderActorIdle, StopIdle};
use super::order_sync::OrderSyncActor;
use crate::metrics::SyncMetrics;

struct Child {
    addr: Addr<OrderSyncActor>,
    child_id: u64,
    /// Events forwarded to this actor.
    sent: u64,
    /// Events forwarded and not yet handled (the actor takes them off).
    mailbox_depth: Rc<Cell<u64>>,
}

pub struct SupervisorActor {
    deps: Rc<SyncDeps>,
    idle_after: Duration,
    children: HashMap<OrderId, Child>,
    next_child_id: u64,
    metrics: Arc<SyncMetrics>,
}

impl SupervisorActor {
    pub fn new(deps: Rc<SyncDeps>, idle_after: Duration) -> Self {
        let metrics = deps.metrics.clone();
        Self {
            deps,
            idle_after,
            children: HashMap::new(),
            next_child_id: 0,
            metrics,
        }
    }

    fn spawn_child(&mut self, order_id: OrderId, ctx: &mut Context<Self>) -> Child {
        self.next_child_id += 1;
        let child_id = self.next_child_id;
        let mailbox_depth = Rc::new(Cell::new(0));
        let actor = OrderSyncActor::new(
            order_id,
            child_id,
            self.deps.clone(),
            ctx.address().recipient(),
            self.idle_after,
            mailbox_depth.clone(),
        );
        self.metrics.actors_spawned.inc();
        Child {
            addr: actor.start(),
            child_id,
            sent: 0,
            mailbox_depth,
        }
    }
}

/// Events arrive by `do_send`, which no mailbox bound refuses: the dispatcher already bounds the
/// events in flight, and an order's events must never be refused out of order.
impl Actor for SupervisorActor {
    type Context = Context<Self>;
}

impl Handler<HandleEvent> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: HandleEvent, ctx: &mut Context<Self>) {
        let order_id = msg.event.order_id;
        let replace = match self.children.get(&order_id) {
            Some(child) if !child.addr.connected() => {
                tracing::warn!(
                    order_id = order_id.get(),
                    "order actor failed; starting a new one"
                );
                self.metrics.actors_restarted.inc();
                self.metrics.actors_stopped.inc();
                true
            }
            Some(_) => false,
            None => true,
        };
        if replace {
            let child = self.spawn_child(order_id, ctx);
            self.children.insert(order_id, child);
        }
        if let Some(child) = self.children.get_mut(&order_id) {
            child.sent += 1;
            child.mailbox_depth.set(child.mailbox_depth.get() + 1);
            self.metrics.mailbox_depth.inc();
            // do_send: an order's events must keep their order, and the dispatcher already bounds
            // how many are in memory, so the child's mailbox needs no bound of its own.
            child.addr.do_send(msg);
        }
        self.metrics.live_actors.set(self.children.len() as i64);
    }
}

impl Handler<OrderActorIdle> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: OrderActorIdle, _: &mut Context<Self>) {
        let idle = self
            .children
            .get(&msg.order_id)
            .is_some_and(|child| child.child_id == msg.child_id && child.sent == msg.handled);
        if idle {
            if let Some(child) = self.children.remove(&msg.order_id) {
                child.addr.do_send(StopIdle);
                self.metrics.actors_stopped.inc();
            }
        }
        self.metrics.live_actors.set(self.children.len() as i64);
    }
}

impl Handler<GetMailboxStats> for SupervisorActor {
    type Result = MessageResult<GetMailboxStats>;

    fn handle(&mut self, _: GetMailboxStats, _: &mut Context<Self>) -> Self::Result {
        let depths = self
            .children
            .values()
            .map(|child| child.mailbox_depth.get());
        let (sum, max) = depths.fold((0, 0), |(sum, max), depth| (sum + depth, max.max(depth)));
        MessageResult(MailboxStats {
            depth_sum: sum,
            depth_max: max,
        })
    }
}
