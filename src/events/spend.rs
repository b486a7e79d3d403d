//! SpendNotificationHub events, always for one virtual key (`vkey-{id}`).

use schemars::JsonSchema;
use serde::Deserialize;

use super::types::{NonNegative, Timestamp};
use super::{Args, Event, EventKind};

/// One request's spend, with the key's running total and budget.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendUpdate {
    pub amount: f64,
    pub total_spend: f64,
    pub budget: Option<f64>,
    pub budget_remaining: Option<f64>,
    /// Spend over budget as a fraction: 0.785 is 78.5 %, above 1 is over budget.
    pub budget_utilization: Option<NonNegative>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub request_id: Option<String>,
    pub timestamp: Option<Timestamp>,
}

/// A budget threshold was reached (published by a producer, or derived from `SpendUpdate`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetAlert {
    pub alert_type: String,
    pub threshold: Option<f64>,
    pub current_spend: Option<f64>,
    pub budget: Option<f64>,
    pub percentage_used: Option<f64>,
    pub message: Option<String>,
    pub timestamp: Option<Timestamp>,
}

/// Spend over a period.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendSummary {
    pub period: String,
    pub total_spend: Option<f64>,
    pub request_count: Option<u64>,
}

/// Spending that looks unusual; the analysis is forwarded as the producer wrote it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnusualSpendingAlert {
    pub description: Option<String>,
    pub detected_at: Option<Timestamp>,
}

impl Event for SpendUpdate {
    const NAME: &'static str = "SpendUpdate";
    const ARGS: Args = Args::Body;
}

impl Event for BudgetAlert {
    const NAME: &'static str = "BudgetAlert";
    const ARGS: Args = Args::FieldThenRest("alertType");
}

impl Event for SpendSummary {
    const NAME: &'static str = "SpendSummary";
    const ARGS: Args = Args::FieldThenRest("period");
}

impl Event for UnusualSpendingAlert {
    const NAME: &'static str = "UnusualSpendingAlert";
    const ARGS: Args = Args::Body;
}

pub fn kinds() -> Vec<EventKind> {
    const HUB: &str = "spend";
    vec![
        EventKind::of::<SpendUpdate>(HUB),
        EventKind::of::<BudgetAlert>(HUB),
        EventKind::of::<SpendSummary>(HUB),
        EventKind::of::<UnusualSpendingAlert>(HUB),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::find;
    use serde_json::json;

    #[test]
    fn field_then_rest_splits_the_body() {
        let alert = find("spend", "BudgetAlert").unwrap();
        let event =
            alert.parse(&json!({"alertType": "budget_50_percent", "threshold": 0.5, "x": 1})).unwrap();
        assert_eq!(event.arguments, vec![json!("budget_50_percent"), json!({"threshold": 0.5, "x": 1})]);
        assert!(
            find("spend", "SpendUpdate").unwrap().parse(&json!({"amount": 1.0})).is_err(),
            "totalSpend is required"
        );
    }
}
