//! TaskHub events: every body carries `taskId` and `taskType`; delivery goes to `task-{taskId}` and
//! `task-type-{taskType}` of the event's virtual key.

use serde::Deserialize;
use serde_json::Value;

use super::{check_id, invalid, parse_body, EventError};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskStarted {
    task_id: String,
    task_type: String,
    #[serde(default)]
    metadata: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskProgress {
    task_id: String,
    task_type: String,
    percent_complete: u64,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskCompleted {
    task_id: String,
    task_type: String,
    #[serde(default)]
    result: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskFailed {
    task_id: String,
    task_type: String,
    error: String,
    #[serde(default)]
    details: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskCancelled {
    task_id: String,
    task_type: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskTimedOut {
    task_id: String,
    task_type: String,
}

/// A validated task event: its SignalR target and arguments, and the groups it goes to.
#[derive(Debug, PartialEq)]
pub struct TaskEvent {
    pub target: &'static str,
    pub arguments: Vec<Value>,
    pub groups: Vec<String>,
}

pub const EVENTS: [&str; 6] =
    ["TaskStarted", "TaskProgress", "TaskCompleted", "TaskFailed", "TaskCancelled", "TaskTimedOut"];

pub fn parse(event: &str, body: &Value) -> Result<TaskEvent, EventError> {
    let target = EVENTS
        .into_iter()
        .find(|name| *name == event)
        .ok_or_else(|| EventError::UnknownEvent { hub: "tasks", event: event.to_owned() })?;
    let (task_id, task_type, arguments) = match target {
        "TaskStarted" => {
            let e: TaskStarted = parse_body(event, body)?;
            (e.task_id.clone(), e.task_type.clone(), vec![e.task_id.into(), e.task_type.into(), e.metadata])
        }
        "TaskProgress" => {
            let e: TaskProgress = parse_body(event, body)?;
            if e.percent_complete > 100 {
                return Err(invalid(event, "percentComplete must be an integer from 0 to 100"));
            }
            (
                e.task_id.clone(),
                e.task_type,
                vec![e.task_id.into(), e.percent_complete.into(), e.message.into()],
            )
        }
        "TaskCompleted" => {
            let e: TaskCompleted = parse_body(event, body)?;
            (e.task_id.clone(), e.task_type, vec![e.task_id.into(), e.result])
        }
        "TaskFailed" => {
            let e: TaskFailed = parse_body(event, body)?;
            (e.task_id.clone(), e.task_type, vec![e.task_id.into(), e.error.into(), e.details.into()])
        }
        "TaskCancelled" => {
            let e: TaskCancelled = parse_body(event, body)?;
            (e.task_id.clone(), e.task_type, vec![e.task_id.into(), e.reason.into()])
        }
        _ => {
            let e: TaskTimedOut = parse_body(event, body)?;
            (e.task_id.clone(), e.task_type, vec![e.task_id.into()])
        }
    };
    check_id(event, "taskId", &task_id)?;
    check_id(event, "taskType", &task_type)?;
    Ok(TaskEvent {
        target,
        arguments,
        groups: vec![format!("task-{task_id}"), format!("task-type-{task_type}")],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn arguments_follow_the_contract_with_null_for_absent_optionals() {
        let event =
            parse("TaskProgress", &json!({"taskId": "abc", "taskType": "video", "percentComplete": 50}))
                .unwrap();
        assert_eq!(event.arguments, vec![json!("abc"), json!(50), Value::Null]);
        assert_eq!(event.groups, vec!["task-abc", "task-type-video"]);
        let event = parse(
            "TaskStarted",
            &json!({"taskId": "t", "taskType": "x", "metadata": {"a": 1}, "extra": true}),
        )
        .unwrap();
        assert_eq!(event.arguments, vec![json!("t"), json!("x"), json!({"a": 1})]);
        let event = parse("TaskTimedOut", &json!({"taskId": "t", "taskType": "x"})).unwrap();
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
        ];
        for (event, body) in cases {
            assert!(matches!(parse(event, &body), Err(EventError::InvalidBody { .. })), "{event} {body}");
        }
        assert!(matches!(parse("TaskExploded", &json!({})), Err(EventError::UnknownEvent { .. })));
    }
}
