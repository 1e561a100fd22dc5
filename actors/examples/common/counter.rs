//! The actor the runtime measurements share (`examples/actor_memory.rs`,
//! `examples/actor_messages.rs`, `tests/actor_footprint.rs`): a `u64` for state, messages that
//! add to it or ask for it. What is measured is ractor's part, not the actor's.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub enum Msg {
    Add(u64),
    #[allow(dead_code, reason = "each user compiles this module; actor_memory only adds")]
    Total(RpcReplyPort<u64>),
}

pub struct Counter;

impl Actor for Counter {
    type Msg = Msg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(&self, _: ActorRef<Msg>, message: Msg, state: &mut u64) -> Result<(), ActorProcessingErr> {
        match message {
            Msg::Add(n) => *state += n,
            Msg::Total(reply) => {
                let _ = reply.send(*state);
            }
        }
        Ok(())
    }
}
