//! The device actor: folds sightings and silence checks into [`DeviceState`] and answers
//! with the patient event to store, if any; the registry routes that event.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::DeviceMsg;
use super::state::{DeviceConfig, DeviceState};
use crate::model::DeviceId;

/// The device actor. Stateless itself; everything lives in [`DeviceState`].
#[derive(Debug, Default)]
pub struct DeviceActor;

/// What a device actor starts with.
pub struct DeviceArgs {
    /// The device.
    pub id: DeviceId,
    /// How silence is judged.
    pub config: DeviceConfig,
}

impl Actor for DeviceActor {
    type Msg = DeviceMsg;
    type State = DeviceState;
    type Arguments = DeviceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DeviceMsg>,
        args: DeviceArgs,
    ) -> Result<DeviceState, ActorProcessingErr> {
        Ok(DeviceState::new(args.id, args.config))
    }

    async fn handle(
        &self,
        _myself: ActorRef<DeviceMsg>,
        msg: DeviceMsg,
        state: &mut DeviceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DeviceMsg::Seen { at, attachment, report, reply } => {
                let mut events: Vec<_> = state.seen(at, attachment.map(|a| *a)).into_iter().collect();
                if let Some(report) = report {
                    events.extend(state.technical.report(&state.id, at, &report, state.attachment.as_ref()));
                }
                let _ = reply.send(events);
            }
            DeviceMsg::Check { now, reply } => {
                let _ = reply.send(state.check(now));
            }
            DeviceMsg::Attach { attachment } => state.attach(attachment.map(|a| *a)),
        }
        Ok(())
    }
}
