//! Budget threshold alerts (contract section 3, `BudgetAlert`).
//!
//! Producers report spend, not alerts, so hubcast derives `BudgetAlert`s from the `budgetUtilization` of
//! `SpendUpdate`s. A tenant near a threshold would otherwise get an alert on every request, hence the two
//! brakes: a threshold fires once until utilization falls below the lowest threshold (a new budget period, or
//! a raised budget), and a cooldown per (key, alertType) that also covers the alerts producers publish
//! themselves, so a producer and hubcast cannot both alert on the same crossing.
//!
//! The state here is per process. With several router replicas the cooldown must also be shared between them;
//! this type is the single-process decision that such a shared clock would feed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::auth::KeyId;

/// The contract's default thresholds, as fractions of the budget.
pub const DEFAULT_THRESHOLDS: [f64; 4] = [0.50, 0.75, 0.90, 1.00];

/// The contract's default cooldown per (virtual key, alertType).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60 * 60);

/// Producers choose the `alertType` of the alerts they publish, so the number of cooldown clocks per key must
/// not be theirs to choose: past this many live clocks, the oldest one is forgotten.
const MAX_ALERT_TYPES_PER_KEY: usize = 16;

/// Threshold alerts and their cooldown for every virtual key.
pub struct BudgetAlerts {
    /// Finite, positive, ascending, without duplicates.
    thresholds: Vec<f64>,
    cooldown: Duration,
    keys: Mutex<HashMap<KeyId, KeyState>>,
}

/// An alert derived from a `SpendUpdate`, for the caller to turn into the `BudgetAlert` event.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedAlert {
    pub alert_type: String,
    /// The threshold crossed, a fraction such as 0.75.
    pub threshold: f64,
    pub severity: &'static str,
}

struct KeyState {
    /// `armed[i]` belongs to `thresholds[i]`.
    armed: Vec<bool>,
    /// When each alertType was last sent for this key, derived or published.
    last_sent: HashMap<String, SystemTime>,
}

impl KeyState {
    fn new(thresholds: usize) -> Self {
        KeyState { armed: vec![true; thresholds], last_sent: HashMap::new() }
    }

    fn in_cooldown(&self, alert_type: &str, now: SystemTime, cooldown: Duration) -> bool {
        // A clock that went backwards (or events handled out of order) counts as no time elapsed: better one
        // alert too few than a burst.
        self.last_sent
            .get(alert_type)
            .is_some_and(|&last| now.duration_since(last).unwrap_or(Duration::ZERO) < cooldown)
    }

    fn forget_expired(&mut self, now: SystemTime, cooldown: Duration) {
        self.last_sent.retain(|_, &mut last| now.duration_since(last).unwrap_or(Duration::ZERO) < cooldown);
    }

    /// Call after `forget_expired`, so that only live clocks compete for the slots.
    fn record(&mut self, alert_type: &str, now: SystemTime) {
        if !self.last_sent.contains_key(alert_type) && self.last_sent.len() >= MAX_ALERT_TYPES_PER_KEY {
            let oldest = self.last_sent.iter().min_by_key(|(_, &at)| at).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.last_sent.remove(&oldest);
            }
        }
        self.last_sent.insert(alert_type.to_owned(), now);
    }

    /// Nothing here that a fresh state would not also say, so the entry can go.
    fn is_idle(&self) -> bool {
        self.last_sent.is_empty() && self.armed.iter().all(|&armed| armed)
    }
}

impl Default for BudgetAlerts {
    fn default() -> Self {
        BudgetAlerts::new(DEFAULT_THRESHOLDS.to_vec(), DEFAULT_COOLDOWN)
    }
}

impl BudgetAlerts {
    /// Thresholds that are not finite and positive are dropped: a threshold at or below zero would be crossed
    /// by every update and never re-armed.
    pub fn new(mut thresholds: Vec<f64>, cooldown: Duration) -> Self {
        thresholds.retain(|t| t.is_finite() && *t > 0.0);
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        BudgetAlerts { thresholds, cooldown, keys: Mutex::new(HashMap::new()) }
    }

    /// A SpendUpdate with `budgetUtilization` (a fraction; 0.785 = 78.5 %) for `key`: the alert to send, if any.
    pub fn on_spend_update(&self, key: &KeyId, utilization: f64, now: SystemTime) -> Option<DerivedAlert> {
        if utilization.is_nan() || utilization < 0.0 {
            return None;
        }
        let lowest = *self.thresholds.first()?;
        let mut keys = self.lock();
        if utilization < lowest {
            if let Some(state) = keys.get_mut(key) {
                state.armed.fill(true);
                state.forget_expired(now, self.cooldown);
                if state.is_idle() {
                    keys.remove(key);
                }
            }
            return None;
        }
        let state = keys.entry(key.clone()).or_insert_with(|| KeyState::new(self.thresholds.len()));
        state.forget_expired(now, self.cooldown);
        let reached = self.thresholds.partition_point(|&t| t <= utilization);
        let highest = (0..reached).rev().find(|&i| state.armed[i])?;
        // Lower thresholds count as sent, and so do the crossed ones when the cooldown holds the alert back:
        // the tenant has been told about this level, or is about to be told by whoever holds the cooldown.
        state.armed[..reached].fill(false);
        let threshold = self.thresholds[highest];
        let alert_type = Self::alert_type(threshold);
        if state.in_cooldown(&alert_type, now, self.cooldown) {
            return None;
        }
        state.record(&alert_type, now);
        Some(DerivedAlert { alert_type, threshold, severity: Self::severity(threshold) })
    }

    /// A producer published a BudgetAlert of `alert_type` itself: may it be delivered? (records it when yes)
    pub fn allow_published(&self, key: &KeyId, alert_type: &str, now: SystemTime) -> bool {
        let mut keys = self.lock();
        let state = keys.entry(key.clone()).or_insert_with(|| KeyState::new(self.thresholds.len()));
        state.forget_expired(now, self.cooldown);
        if state.in_cooldown(alert_type, now, self.cooldown) {
            return false;
        }
        state.record(alert_type, now);
        true
    }

    /// Forgets keys whose state says nothing a fresh one would not, so that keys which alerted once do not
    /// stay in memory forever. Entries are also dropped when touched; this catches the untouched ones.
    pub fn prune(&self, now: SystemTime) {
        self.lock().retain(|_, state| {
            state.forget_expired(now, self.cooldown);
            !state.is_idle()
        });
    }

    /// How many keys hold state, for metrics.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// `budget_50_percent`, `budget_75_percent`, `budget_90_percent`, and `budget_exceeded` from 1.0 up;
    /// custom thresholds keep up to two decimals of their percent (0.333 -> `budget_33.3_percent`) so that
    /// nearby thresholds do not share a cooldown.
    pub fn alert_type(threshold: f64) -> String {
        if threshold >= 1.0 {
            return "budget_exceeded".to_owned();
        }
        let percent = (threshold * 10_000.0).round() / 100.0;
        format!("budget_{percent}_percent")
    }

    /// The contract's severities for the default thresholds, extended to custom ones by range.
    pub fn severity(threshold: f64) -> &'static str {
        if threshold < 0.75 {
            "info"
        } else if threshold < 0.9 {
            "warning"
        } else if threshold < 1.0 {
            "error"
        } else {
            "critical"
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<KeyId, KeyState>> {
        // Every update leaves the map consistent, so a panic elsewhere while holding the lock loses nothing.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn key(id: &str) -> KeyId {
        KeyId::parse(id).unwrap()
    }

    fn sent(alert: Option<DerivedAlert>) -> Option<String> {
        alert.map(|a| a.alert_type)
    }

    #[test]
    fn alert_types_and_severities_follow_the_contract() {
        assert_eq!(BudgetAlerts::alert_type(0.5), "budget_50_percent");
        assert_eq!(BudgetAlerts::alert_type(0.75), "budget_75_percent");
        assert_eq!(BudgetAlerts::alert_type(0.9), "budget_90_percent");
        assert_eq!(BudgetAlerts::alert_type(1.0), "budget_exceeded");
        assert_eq!(BudgetAlerts::alert_type(1.5), "budget_exceeded");
        assert_eq!(BudgetAlerts::alert_type(0.07), "budget_7_percent");
        assert_eq!(BudgetAlerts::alert_type(0.333), "budget_33.3_percent");
        assert_eq!(BudgetAlerts::severity(0.5), "info");
        assert_eq!(BudgetAlerts::severity(0.75), "warning");
        assert_eq!(BudgetAlerts::severity(0.9), "error");
        assert_eq!(BudgetAlerts::severity(1.0), "critical");
    }

    #[test]
    fn single_crossing_sends_one_alert_and_then_nothing() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert_eq!(alerts.on_spend_update(&k, 0.3, t0()), None);
        assert_eq!(
            alerts.on_spend_update(&k, 0.785, t0()),
            Some(DerivedAlert {
                alert_type: "budget_75_percent".into(),
                threshold: 0.75,
                severity: "warning"
            })
        );
        assert_eq!(alerts.on_spend_update(&k, 0.8, t0() + Duration::from_secs(1)), None);
        // Still armed above: the next threshold fires on its own.
        let next = alerts.on_spend_update(&k, 0.91, t0() + Duration::from_secs(2)).unwrap();
        assert_eq!((next.alert_type.as_str(), next.severity), ("budget_90_percent", "error"));
    }

    #[test]
    fn threshold_is_crossed_when_reached_exactly() {
        let alerts = BudgetAlerts::default();
        let alert = alerts.on_spend_update(&key("7"), 0.5, t0()).unwrap();
        assert_eq!((alert.alert_type.as_str(), alert.severity), ("budget_50_percent", "info"));
    }

    #[test]
    fn jump_over_several_thresholds_sends_only_the_highest() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert_eq!(alerts.on_spend_update(&k, 0.0, t0()), None);
        assert_eq!(sent(alerts.on_spend_update(&k, 0.95, t0())).as_deref(), Some("budget_90_percent"));
        assert_eq!(alerts.on_spend_update(&k, 0.97, t0() + Duration::from_secs(1)), None);
        // The lower ones count as sent: falling back without re-arming sends them never.
        assert_eq!(alerts.on_spend_update(&k, 0.6, t0() + Duration::from_secs(2)), None);
        assert_eq!(alerts.on_spend_update(&k, 0.8, t0() + Duration::from_secs(3)), None);
    }

    #[test]
    fn rearm_below_lowest_then_cooldown_then_alert_again() {
        let alerts = BudgetAlerts::new(DEFAULT_THRESHOLDS.to_vec(), HOUR);
        let k = key("7");
        assert_eq!(sent(alerts.on_spend_update(&k, 0.55, t0())).as_deref(), Some("budget_50_percent"));
        assert_eq!(alerts.on_spend_update(&k, 0.1, t0() + Duration::from_secs(60)), None);
        // Re-armed, but the same alertType within the cooldown stays quiet.
        assert_eq!(alerts.on_spend_update(&k, 0.6, t0() + Duration::from_secs(120)), None);
        // That suppressed crossing disarmed the threshold: no alert as soon as the cooldown ends.
        assert_eq!(alerts.on_spend_update(&k, 0.6, t0() + HOUR + Duration::from_secs(1)), None);
        assert_eq!(alerts.on_spend_update(&k, 0.2, t0() + HOUR + Duration::from_secs(2)), None);
        assert_eq!(
            sent(alerts.on_spend_update(&k, 0.52, t0() + HOUR + Duration::from_secs(3))).as_deref(),
            Some("budget_50_percent")
        );
    }

    #[test]
    fn cooldown_ends_exactly_after_the_window() {
        let alerts = BudgetAlerts::new(DEFAULT_THRESHOLDS.to_vec(), HOUR);
        let k = key("7");
        assert!(alerts.on_spend_update(&k, 0.5, t0()).is_some());
        alerts.on_spend_update(&k, 0.0, t0());
        assert_eq!(alerts.on_spend_update(&k, 0.5, t0() + HOUR - Duration::from_millis(1)), None);
        alerts.on_spend_update(&k, 0.0, t0() + HOUR);
        assert!(alerts.on_spend_update(&k, 0.5, t0() + HOUR).is_some());
    }

    #[test]
    fn published_alert_within_cooldown_after_derived_is_refused() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert_eq!(sent(alerts.on_spend_update(&k, 0.92, t0())).as_deref(), Some("budget_90_percent"));
        assert!(!alerts.allow_published(&k, "budget_90_percent", t0() + Duration::from_secs(30)));
        // Other alertTypes have their own clocks.
        assert!(alerts.allow_published(&k, "budget_75_percent", t0() + Duration::from_secs(30)));
        assert!(alerts.allow_published(&k, "budget_90_percent", t0() + HOUR));
    }

    #[test]
    fn derived_alert_within_cooldown_after_published_is_suppressed() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert!(alerts.allow_published(&k, "budget_exceeded", t0()));
        assert!(!alerts.allow_published(&k, "budget_exceeded", t0() + Duration::from_secs(1)));
        assert_eq!(alerts.on_spend_update(&k, 1.2, t0() + Duration::from_secs(10)), None);
        // The suppressed crossing disarmed every threshold up to 1.0.
        assert_eq!(alerts.on_spend_update(&k, 1.3, t0() + HOUR + Duration::from_secs(10)), None);
    }

    #[test]
    fn published_alerts_do_not_disarm_thresholds() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert!(alerts.allow_published(&k, "budget_50_percent", t0()));
        assert_eq!(
            sent(alerts.on_spend_update(&k, 0.8, t0() + Duration::from_secs(1))).as_deref(),
            Some("budget_75_percent")
        );
    }

    #[test]
    fn different_keys_are_independent() {
        let alerts = BudgetAlerts::default();
        let (a, b) = (key("7"), key("9"));
        assert_eq!(sent(alerts.on_spend_update(&a, 0.8, t0())).as_deref(), Some("budget_75_percent"));
        assert_eq!(sent(alerts.on_spend_update(&b, 0.8, t0())).as_deref(), Some("budget_75_percent"));
        assert!(alerts.allow_published(&b, "budget_90_percent", t0()));
        assert!(alerts.allow_published(&a, "budget_90_percent", t0()));
        assert_eq!(alerts.on_spend_update(&a, 0.1, t0()), None);
        assert_eq!(alerts.on_spend_update(&b, 0.8, t0()), None, "re-arming key 7 leaves key 9 disarmed");
    }

    #[test]
    fn exceeded_at_one_and_above() {
        let alerts = BudgetAlerts::default();
        let at_one = alerts.on_spend_update(&key("1"), 1.0, t0()).unwrap();
        assert_eq!(
            at_one,
            DerivedAlert { alert_type: "budget_exceeded".into(), threshold: 1.0, severity: "critical" }
        );
        let above = alerts.on_spend_update(&key("2"), 3.5, t0()).unwrap();
        assert_eq!(above.alert_type, "budget_exceeded");
        let infinite = alerts.on_spend_update(&key("3"), f64::INFINITY, t0()).unwrap();
        assert_eq!(infinite.alert_type, "budget_exceeded");
        assert_eq!(alerts.on_spend_update(&key("1"), 1.5, t0() + Duration::from_secs(5)), None);
    }

    #[test]
    fn custom_thresholds_are_sorted_and_cleaned() {
        let alerts = BudgetAlerts::new(vec![0.8, 0.25, f64::NAN, -0.5, 0.0, 0.25, 1.2], HOUR);
        assert_eq!(alerts.thresholds, vec![0.25, 0.8, 1.2]);
        let k = key("7");
        let low = alerts.on_spend_update(&k, 0.3, t0()).unwrap();
        assert_eq!(
            low,
            DerivedAlert { alert_type: "budget_25_percent".into(), threshold: 0.25, severity: "info" }
        );
        let mid = alerts.on_spend_update(&k, 0.85, t0()).unwrap();
        assert_eq!((mid.alert_type.as_str(), mid.severity), ("budget_80_percent", "warning"));
        // 1.0 is not a threshold here: 1.1 crosses nothing new.
        assert_eq!(alerts.on_spend_update(&k, 1.1, t0()), None);
        let over = alerts.on_spend_update(&k, 1.2, t0()).unwrap();
        assert_eq!(
            (over.alert_type.as_str(), over.threshold, over.severity),
            ("budget_exceeded", 1.2, "critical")
        );
        // Re-arming needs a value below 0.25, not below 0.5.
        assert_eq!(alerts.on_spend_update(&k, 0.3, t0() + HOUR), None);
        assert_eq!(alerts.on_spend_update(&k, 0.2, t0() + HOUR), None);
        assert!(alerts.on_spend_update(&k, 0.3, t0() + HOUR).is_some());
    }

    #[test]
    fn no_thresholds_means_no_alerts() {
        let alerts = BudgetAlerts::new(vec![f64::NAN], HOUR);
        assert_eq!(alerts.on_spend_update(&key("7"), 5.0, t0()), None);
        assert!(alerts.is_empty());
    }

    #[test]
    fn nan_and_negative_utilization_change_nothing() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert!(alerts.on_spend_update(&k, 0.6, t0()).is_some());
        for bad in [f64::NAN, -0.1, f64::NEG_INFINITY] {
            assert_eq!(alerts.on_spend_update(&k, bad, t0()), None);
        }
        // Had a negative value re-armed, this would alert after the cooldown.
        assert_eq!(alerts.on_spend_update(&k, 0.6, t0() + HOUR * 2), None);
        assert_eq!(alerts.on_spend_update(&key("8"), f64::NAN, t0()), None);
        assert_eq!(alerts.len(), 1);
    }

    #[test]
    fn clock_going_backwards_counts_as_within_cooldown() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        assert!(alerts.allow_published(&k, "budget_50_percent", t0()));
        assert!(!alerts.allow_published(&k, "budget_50_percent", t0() - Duration::from_secs(10)));
    }

    #[test]
    fn zero_cooldown_only_uses_arming() {
        let alerts = BudgetAlerts::new(DEFAULT_THRESHOLDS.to_vec(), Duration::ZERO);
        let k = key("7");
        assert!(alerts.on_spend_update(&k, 0.5, t0()).is_some());
        assert!(alerts.on_spend_update(&k, 0.1, t0()).is_none());
        assert!(alerts.on_spend_update(&k, 0.5, t0()).is_some());
        assert!(alerts.allow_published(&k, "budget_50_percent", t0()));
        assert!(alerts.allow_published(&k, "budget_50_percent", t0()));
    }

    #[test]
    fn rearmed_keys_without_live_cooldowns_are_forgotten() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        alerts.on_spend_update(&k, 0.2, t0());
        assert!(alerts.is_empty(), "below every threshold there is nothing to remember");
        alerts.on_spend_update(&k, 0.6, t0());
        alerts.on_spend_update(&k, 0.1, t0() + Duration::from_secs(1));
        assert_eq!(alerts.len(), 1, "the cooldown of budget_50_percent is still running");
        alerts.on_spend_update(&k, 0.1, t0() + HOUR);
        assert!(alerts.is_empty());
    }

    #[test]
    fn prune_drops_idle_keys_and_keeps_disarmed_ones() {
        let alerts = BudgetAlerts::default();
        assert!(alerts.allow_published(&key("1"), "budget_90_percent", t0()));
        alerts.on_spend_update(&key("2"), 0.8, t0());
        alerts.prune(t0() + Duration::from_secs(5));
        assert_eq!(alerts.len(), 2);
        alerts.prune(t0() + HOUR);
        // Key 2 is still disarmed above 0.5 and must stay so; key 1 had only a cooldown.
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts.on_spend_update(&key("2"), 0.8, t0() + HOUR), None);
    }

    #[test]
    fn published_alert_types_per_key_are_capped() {
        let alerts = BudgetAlerts::default();
        let k = key("7");
        for i in 0..100 {
            assert!(alerts.allow_published(&k, &format!("custom_{i}"), t0() + Duration::from_secs(i)));
        }
        let keys = alerts.lock();
        assert_eq!(keys[&k].last_sent.len(), MAX_ALERT_TYPES_PER_KEY);
        assert!(keys[&k].last_sent.contains_key("custom_99"));
        assert!(!keys[&k].last_sent.contains_key("custom_0"), "the oldest clock goes first");
    }
}
