//! TaskHub events: every body carries `taskId` and `taskType`; each goes to `task-{taskId}` and
//! `task-type-{taskType}` of its virtual key.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::types::{Id, Percent};
use super::{Args, Event, EventKind};

/// The group of one task, `task-{taskId}` as the seed names it.
pub fn task_group(task_id: &str) -> String {
    format!("task-{task_id}")
}

/// The group of every task of a type. The seed names it `task-type-{taskType}`, a name that the task
/// `type-{taskType}` would have too; inside the server it is `task-type/{taskType}`, which no task id can
/// spell (ids have no `/`), so subscribing to a task never reaches a task type's events.
pub fn task_type_group(task_type: &str) -> String {
    format!("task-type/{task_type}")
}

fn task_groups(task_id: &Id, task_type: &Id) -> Option<Vec<String>> {
    Some(vec![task_group(&task_id.0), task_type_group(&task_type.0)])
}

/// A task began.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStarted {
    pub task_id: Id,
    pub task_type: Id,
    pub metadata: Option<Value>,
}

/// A task's progress.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    pub task_id: Id,
    pub task_type: Id,
    pub percent_complete: Percent,
    pub message: Option<String>,
}

/// A task finished successfully.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCompleted {
    pub task_id: Id,
    pub task_type: Id,
    pub result: Option<Value>,
}

/// A task failed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailed {
    pub task_id: Id,
    pub task_type: Id,
    pub error: String,
    pub details: Option<String>,
}

/// A task was cancelled.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskCancelled {
    pub task_id: Id,
    pub task_type: Id,
    pub reason: Option<String>,
}

/// A task ran out of time.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskTimedOut {
    pub task_id: Id,
    pub task_type: Id,
}

macro_rules! task_event {
    ($type:ty, $name:literal, [$($field:literal),*]) => {
        impl Event for $type {
            const NAME: &'static str = $name;
            const ARGS: Args = Args::Fields(&[$($field),*]);
            fn groups(&self) -> Option<Vec<String>> {
                task_groups(&self.task_id, &self.task_type)
            }
        }
    };
}

task_event!(TaskStarted, "TaskStarted", ["taskId", "taskType", "metadata"]);
task_event!(TaskProgress, "TaskProgress", ["taskId", "percentComplete", "message"]);
task_event!(TaskCompleted, "TaskCompleted", ["taskId", "result"]);
task_event!(TaskFailed, "TaskFailed", ["taskId", "error", "details"]);
task_event!(TaskCancelled, "TaskCancelled", ["taskId", "reason"]);
task_event!(TaskTimedOut, "TaskTimedOut", ["taskId"]);

pub fn kinds() -> Vec<EventKind> {
    const HUB: &str = "tasks";
    vec![
        EventKind::of::<TaskStarted>(HUB),
        EventKind::of::<TaskProgress>(HUB),
        EventKind::of::<TaskCompleted>(HUB),
        EventKind::of::<TaskFailed>(HUB),
        EventKind::of::<TaskCancelled>(HUB),
        EventKind::of::<TaskTimedOut>(HUB),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::{find, EventError};
    use serde_json::{json, Value};

    #[test]
    fn arguments_follow_the_contract_with_null_for_absent_optionals() {
        let progress = find("tasks", "TaskProgress").unwrap();
        let event =
            progress.parse(&json!({"taskId": "abc", "taskType": "video", "percentComplete": 50})).unwrap();
        assert_eq!(event.arguments, vec![json!("abc"), json!(50), Value::Null]);
        assert_eq!(event.groups.unwrap(), vec!["task-abc", "task-type/video"]);
        let started = find("tasks", "TaskStarted").unwrap();
        let event = started
            .parse(&json!({"taskId": "t", "taskType": "x", "metadata": {"a": 1}, "extra": true}))
            .unwrap();
        assert_eq!(event.arguments, vec![json!("t"), json!("x"), json!({"a": 1})]);
        let event =
            find("tasks", "TaskTimedOut").unwrap().parse(&json!({"taskId": "t", "taskType": "x"})).unwrap();
        assert_eq!(event.arguments, vec![json!("t")]);
    }

    #[test]
    fn refuses_bad_bodies_with_reasons() {
        let cases = [
            ("TaskProgress", json!({"taskId": "abc", "taskType": "v", "percentComplete": 101})),
            ("TaskProgress", json!({"taskId": "abc", "taskType": "v", "percentComplete": 5.5})),
            ("TaskProgress", json!({"taskId": "abc", "percentComplete": 5})),
            ("TaskFailed", json!({"taskId": "abc", "taskType": "v"})),
            ("TaskCompleted", json!({"taskId": "a b", "taskType": "v"})),
            ("TaskCompleted", json!("not an object")),
            ("TaskCompleted", json!(["abc", "v"])),
        ];
        for (event, body) in cases {
            let result = find("tasks", event).unwrap().parse(&body);
            assert!(matches!(result, Err(EventError::InvalidBody { .. })), "{event} {body}: {result:?}");
        }
        assert!(matches!(find("tasks", "TaskExploded"), Err(EventError::UnknownEvent { .. })));
    }
}
