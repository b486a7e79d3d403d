//! TaskHub (`/hubs/tasks`): follow one task, or every task of a type, of the caller's own virtual key.

use futures_util::future::BoxFuture;

use super::{bind_id, Arguments, Audience, Caller, Hub, HubError, HubResult};
use crate::events::tasks::{task_group, task_type_group};

pub struct TasksHub;

impl Hub for TasksHub {
    fn name(&self) -> &'static str {
        "tasks"
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        &["SubscribeToTask", "UnsubscribeFromTask", "SubscribeToTaskType", "UnsubscribeFromTaskType"]
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            match method {
                "SubscribeToTask" => caller.join(&task_group(&bind_id(args, "Invalid task ID")?))?,
                "UnsubscribeFromTask" => caller.leave(&task_group(&bind_id(args, "Invalid task ID")?)),
                "SubscribeToTaskType" => {
                    caller.join(&task_type_group(&bind_id(args, "Invalid task type")?))?
                }
                "UnsubscribeFromTaskType" => {
                    caller.leave(&task_type_group(&bind_id(args, "Invalid task type")?))
                }
                _ => return Err(HubError::MethodNotFound),
            }
            Ok(None)
        })
    }
}
