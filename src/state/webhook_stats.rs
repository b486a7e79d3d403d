//! Webhook delivery statistics over a rolling window, the answer to `RequestStatistics(url)` (contract
//! section 3, Webhooks).
//!
//! Events are folded into fixed time buckets instead of being kept one by one: the memory of a (key, url) then
//! depends on the window, not on how many deliveries producers report. The price is the edge of the window:
//! only buckets that lie wholly inside it count, so an event stops counting up to one bucket width (a 288th of
//! the window, at least a second) before it is a full window old, but nothing older than the window ever
//! counts and every time reported lies within `[since, now]`.
//!
//! Nothing here reads the clock: callers pass the times, which keeps it testable. `record`'s `at` should be
//! when hubcast saw the event rather than a producer's timestamp, because an entry's newest event defines
//! what is too old to record.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::auth::KeyId;
use crate::delivery::DeliveryOutcome;

/// The contract's default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Buckets per window: five minutes for the default day.
const BUCKETS_PER_WINDOW: u64 = 288;

const MIN_BUCKET_MS: u64 = 1000;

/// Delivery statistics per (virtual key, url).
pub struct WebhookStats {
    window: Duration,
    window_ms: u64,
    bucket_ms: u64,
    /// Nested rather than keyed by (KeyId, String) so that reads look up by `&str` without allocating.
    keys: Mutex<HashMap<KeyId, HashMap<String, UrlStats>>>,
}

#[derive(Default)]
struct UrlStats {
    /// The newest event time recorded, in ms since the epoch: what "too old to record" is measured from.
    newest_ms: u64,
    /// Ascending by `index`, one per index at most.
    buckets: VecDeque<Bucket>,
}

#[derive(Default, Clone, Copy)]
struct Bucket {
    /// Start of the bucket in bucket widths since the epoch.
    index: u64,
    attempts: u64,
    successes: u64,
    failures: u64,
    retries_scheduled: u64,
    response_time_sum_ms: f64,
    response_times: u64,
    last_success: Option<SystemTime>,
    last_failure: Option<SystemTime>,
}

impl Bucket {
    fn add(&mut self, outcome: DeliveryOutcome, at: SystemTime) {
        match outcome {
            DeliveryOutcome::Attempted => self.attempts += 1,
            DeliveryOutcome::Succeeded { response_time_ms } => {
                self.successes += 1;
                self.last_success = self.last_success.max(Some(at));
                // A negative or infinite time is a producer's bug; it must not poison the average.
                if let Some(ms) = response_time_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                    self.response_time_sum_ms += ms;
                    self.response_times += 1;
                }
            }
            DeliveryOutcome::Failed => {
                self.failures += 1;
                self.last_failure = self.last_failure.max(Some(at));
            }
            DeliveryOutcome::RetryScheduled => self.retries_scheduled += 1,
        }
    }

    fn merge(&mut self, other: &Bucket) {
        self.attempts += other.attempts;
        self.successes += other.successes;
        self.failures += other.failures;
        self.retries_scheduled += other.retries_scheduled;
        self.response_time_sum_ms += other.response_time_sum_ms;
        self.response_times += other.response_times;
        self.last_success = self.last_success.max(other.last_success);
        self.last_failure = self.last_failure.max(other.last_failure);
    }
}

impl UrlStats {
    fn drop_before(&mut self, first_index: u64) {
        while self.buckets.front().is_some_and(|b| b.index < first_index) {
            self.buckets.pop_front();
        }
    }

    fn bucket_mut(&mut self, index: u64) -> &mut Bucket {
        // Events mostly arrive in order, so the search usually ends at the back.
        let position = match self.buckets.binary_search_by_key(&index, |b| b.index) {
            Ok(position) => position,
            Err(position) => {
                self.buckets.insert(position, Bucket { index, ..Bucket::default() });
                position
            }
        };
        &mut self.buckets[position]
    }
}

impl Default for WebhookStats {
    fn default() -> Self {
        WebhookStats::new(DEFAULT_WINDOW)
    }
}

impl WebhookStats {
    pub fn new(window: Duration) -> Self {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let bucket_ms = (window_ms / BUCKETS_PER_WINDOW).max(MIN_BUCKET_MS);
        WebhookStats { window, window_ms, bucket_ms, keys: Mutex::new(HashMap::new()) }
    }

    /// Counts one webhook event. Events older than the window, measured from the newest event of the same
    /// (key, url), are ignored; they could not count in any answer that also counts that newest one.
    pub fn record(&self, key: &KeyId, url: &str, outcome: DeliveryOutcome, at: SystemTime) {
        // Before the epoch is older than any window an answer can be asked for.
        let Some(at_ms) = millis(at) else { return };
        let index = at_ms / self.bucket_ms;
        let mut keys = self.lock();
        let newest_ms = keys.get(key).and_then(|urls| urls.get(url)).map_or(0, |stats| stats.newest_ms);
        let newest_ms = newest_ms.max(at_ms);
        let first_index = self.first_index(newest_ms);
        if index < first_index {
            return;
        }
        let add = |stats: &mut UrlStats| {
            stats.newest_ms = newest_ms;
            stats.drop_before(first_index);
            stats.bucket_mut(index).add(outcome, at);
        };
        // Allocates the owned key and url only for a new entry, not on every event.
        match keys.get_mut(key).and_then(|urls| urls.get_mut(url)) {
            Some(stats) => add(stats),
            None => add(keys.entry(key.clone()).or_default().entry(url.to_owned()).or_default()),
        }
    }

    /// The contract's RequestStatistics answer for (key, url) at `now`, as a JSON object:
    /// {url, attempts, successes, failures, retriesScheduled, successRate, averageResponseTimeMs, lastSuccessAt,
    /// lastFailureAt, since}. Events timestamped after `now` count (another thread may have taken its clock a
    /// moment later); a (key, url) without events answers zeros, and is not remembered for having been asked.
    pub fn statistics(&self, key: &KeyId, url: &str, now: SystemTime) -> Value {
        let first_index = self.first_index(millis(now).unwrap_or(0));
        let mut total = Bucket::default();
        {
            let mut keys = self.lock();
            if let Some(urls) = keys.get_mut(key) {
                if let Some(stats) = urls.get_mut(url) {
                    stats.drop_before(first_index);
                    for bucket in &stats.buckets {
                        total.merge(bucket);
                    }
                    if stats.buckets.is_empty() {
                        urls.remove(url);
                    }
                }
                if urls.is_empty() {
                    keys.remove(key);
                }
            }
        }
        let decided = total.successes + total.failures;
        let success_rate = (decided > 0).then(|| total.successes as f64 / decided as f64);
        let average_response_time_ms =
            (total.response_times > 0).then(|| total.response_time_sum_ms / total.response_times as f64);
        let since =
            now.checked_sub(self.window).unwrap_or(SystemTime::UNIX_EPOCH).max(SystemTime::UNIX_EPOCH);
        json!({
            "url": url,
            "attempts": total.attempts,
            "successes": total.successes,
            "failures": total.failures,
            "retriesScheduled": total.retries_scheduled,
            "successRate": success_rate,
            "averageResponseTimeMs": average_response_time_ms,
            "lastSuccessAt": total.last_success.and_then(rfc3339),
            "lastFailureAt": total.last_failure.and_then(rfc3339),
            "since": rfc3339(since),
        })
    }

    /// Drops every bucket older than the window at `now`, and the (key, url) entries left without any, so that
    /// urls that stopped receiving events do not stay in memory.
    pub fn prune(&self, now: SystemTime) {
        let first_index = self.first_index(millis(now).unwrap_or(0));
        self.lock().retain(|_, urls| {
            urls.retain(|_, stats| {
                stats.drop_before(first_index);
                !stats.buckets.is_empty()
            });
            !urls.is_empty()
        });
    }

    /// How many (key, url) entries are held, for metrics.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The first bucket that lies wholly within the window ending at `end_ms`.
    fn first_index(&self, end_ms: u64) -> u64 {
        end_ms.saturating_sub(self.window_ms).div_ceil(self.bucket_ms)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<KeyId, HashMap<String, UrlStats>>> {
        // Every update leaves the map consistent, so a panic elsewhere while holding the lock loses nothing.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn millis(at: SystemTime) -> Option<u64> {
    let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}

/// `null` for times RFC 3339 cannot show (after year 9999): humantime reports those as a formatting error,
/// which `to_string` would turn into a panic.
fn rfc3339(at: SystemTime) -> Option<String> {
    let mut text = String::new();
    write!(text, "{}", humantime::format_rfc3339_millis(at.max(SystemTime::UNIX_EPOCH))).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const URL: &str = "https://api.example.com/hook";

    fn now() -> SystemTime {
        // 2023-11-14T22:13:20Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn key(id: &str) -> KeyId {
        KeyId::parse(id).unwrap()
    }

    fn succeeded(ms: f64) -> DeliveryOutcome {
        DeliveryOutcome::Succeeded { response_time_ms: Some(ms) }
    }

    #[test]
    fn counts_each_outcome_and_the_success_rate() {
        let stats = WebhookStats::default();
        let k = key("7");
        let at = now() - HOUR;
        for outcome in [
            DeliveryOutcome::Attempted,
            DeliveryOutcome::Attempted,
            DeliveryOutcome::Attempted,
            DeliveryOutcome::Attempted,
            succeeded(100.0),
            succeeded(200.0),
            succeeded(300.0),
            DeliveryOutcome::Failed,
            DeliveryOutcome::RetryScheduled,
        ] {
            stats.record(&k, URL, outcome, at);
        }
        assert_eq!(
            stats.statistics(&k, URL, now()),
            json!({
                "url": URL,
                "attempts": 4,
                "successes": 3,
                "failures": 1,
                "retriesScheduled": 1,
                "successRate": 0.75,
                "averageResponseTimeMs": 200.0,
                "lastSuccessAt": "2023-11-14T21:13:20.000Z",
                "lastFailureAt": "2023-11-14T21:13:20.000Z",
                "since": "2023-11-13T22:13:20.000Z",
            })
        );
    }

    #[test]
    fn success_rate_is_null_with_only_attempts_and_retries() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Attempted, now());
        stats.record(&k, URL, DeliveryOutcome::RetryScheduled, now());
        let answer = stats.statistics(&k, URL, now());
        assert_eq!(answer["attempts"], 1);
        assert_eq!(answer["retriesScheduled"], 1);
        assert_eq!(answer["successRate"], Value::Null);
        assert_eq!(answer["averageResponseTimeMs"], Value::Null);
        assert_eq!(answer["lastSuccessAt"], Value::Null);
        assert_eq!(answer["lastFailureAt"], Value::Null);
    }

    #[test]
    fn success_rate_with_only_failures_is_zero() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Failed, now());
        assert_eq!(stats.statistics(&k, URL, now())["successRate"], 0.0);
    }

    #[test]
    fn average_response_time_skips_successes_without_one() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, succeeded(10.0), now() - HOUR * 3);
        stats.record(&k, URL, succeeded(25.0), now() - HOUR);
        stats.record(&k, URL, DeliveryOutcome::Succeeded { response_time_ms: None }, now());
        for bogus in [f64::NAN, -5.0, f64::INFINITY] {
            stats.record(&k, URL, succeeded(bogus), now());
        }
        let answer = stats.statistics(&k, URL, now());
        assert_eq!(answer["successes"], 6);
        assert_eq!(answer["averageResponseTimeMs"], 17.5);
        assert_eq!(answer["successRate"], 1.0);
    }

    #[test]
    fn events_older_than_the_window_stop_counting() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Failed, now() - HOUR * 25);
        stats.record(&k, URL, succeeded(50.0), now() - HOUR * 25);
        stats.record(&k, URL, succeeded(80.0), now() - HOUR);
        let answer = stats.statistics(&k, URL, now());
        assert_eq!(answer["successes"], 1);
        assert_eq!(answer["failures"], 0);
        assert_eq!(answer["averageResponseTimeMs"], 80.0);
        assert_eq!(answer["lastFailureAt"], Value::Null);
    }

    #[test]
    fn events_expire_as_time_passes() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Attempted, now());
        assert_eq!(stats.statistics(&k, URL, now() + HOUR * 23)["attempts"], 1);
        assert_eq!(stats.statistics(&k, URL, now() + HOUR * 24 + Duration::from_secs(1))["attempts"], 0);
        assert!(stats.is_empty(), "reading an expired entry removes it");
    }

    #[test]
    fn nothing_older_than_the_window_ever_counts() {
        let stats = WebhookStats::new(Duration::from_secs(10));
        let k = key("7");
        for ms in (0..20_000).step_by(250) {
            stats.record(&k, URL, DeliveryOutcome::Failed, now() + Duration::from_millis(ms));
        }
        let end = now() + Duration::from_secs(20);
        let answer = stats.statistics(&k, URL, end);
        let since: SystemTime = humantime::parse_rfc3339(answer["since"].as_str().unwrap()).unwrap();
        let last: SystemTime = humantime::parse_rfc3339(answer["lastFailureAt"].as_str().unwrap()).unwrap();
        assert!(since <= last && last <= end);
        // 40 events fall in the last 10 s; bucket granularity may drop up to one second of them.
        let failures = answer["failures"].as_u64().unwrap();
        assert!((36..=40).contains(&failures), "{failures}");
    }

    #[test]
    fn last_success_and_failure_are_the_latest_in_the_window() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Failed, now() - HOUR * 2);
        stats.record(&k, URL, succeeded(1.0), now() - Duration::from_millis(1500));
        stats.record(&k, URL, succeeded(1.0), now() - HOUR * 5);
        stats.record(&k, URL, DeliveryOutcome::Failed, now() - HOUR * 3);
        let answer = stats.statistics(&k, URL, now());
        assert_eq!(answer["lastSuccessAt"], "2023-11-14T22:13:18.500Z");
        assert_eq!(answer["lastFailureAt"], "2023-11-14T20:13:20.000Z");
    }

    #[test]
    fn statistics_are_per_key() {
        let stats = WebhookStats::default();
        stats.record(&key("7"), URL, succeeded(5.0), now());
        stats.record(&key("7"), URL, DeliveryOutcome::Attempted, now());
        stats.record(&key("9"), URL, DeliveryOutcome::Failed, now());
        let seven = stats.statistics(&key("7"), URL, now());
        let nine = stats.statistics(&key("9"), URL, now());
        assert_eq!((seven["attempts"].as_u64(), seven["successes"].as_u64()), (Some(1), Some(1)));
        assert_eq!(seven["failures"], 0);
        assert_eq!((nine["attempts"].as_u64(), nine["successes"].as_u64()), (Some(0), Some(0)));
        assert_eq!(nine["failures"], 1);
        assert_eq!(stats.statistics(&key("8"), URL, now())["failures"], 0);
    }

    #[test]
    fn statistics_are_per_exact_url() {
        let stats = WebhookStats::default();
        let k = key("7");
        // These two sanitize alike but are different webhooks.
        stats.record(&k, "https://a.example/x-y", DeliveryOutcome::Failed, now());
        stats.record(&k, "https://a.example/x_y", DeliveryOutcome::Attempted, now());
        assert_eq!(stats.statistics(&k, "https://a.example/x-y", now())["attempts"], 0);
        assert_eq!(stats.statistics(&k, "https://a.example/x_y", now())["failures"], 0);
        assert_eq!(stats.len(), 2);
    }

    #[test]
    fn unknown_url_answers_zeros_and_is_not_remembered() {
        let stats = WebhookStats::default();
        let answer = stats.statistics(&key("7"), "https://nowhere.example/", now());
        assert_eq!(
            answer,
            json!({
                "url": "https://nowhere.example/",
                "attempts": 0,
                "successes": 0,
                "failures": 0,
                "retriesScheduled": 0,
                "successRate": null,
                "averageResponseTimeMs": null,
                "lastSuccessAt": null,
                "lastFailureAt": null,
                "since": "2023-11-13T22:13:20.000Z",
            })
        );
        assert!(stats.is_empty());
    }

    #[test]
    fn prune_empties_the_map() {
        let stats = WebhookStats::default();
        stats.record(&key("7"), URL, DeliveryOutcome::Attempted, now() - HOUR * 2);
        stats.record(&key("7"), "https://other.example/", DeliveryOutcome::Attempted, now());
        stats.record(&key("9"), URL, DeliveryOutcome::Failed, now());
        stats.prune(now() + HOUR * 23);
        assert_eq!(stats.len(), 2, "the entry last touched 25 h before goes first");
        stats.prune(now() + HOUR * 25);
        assert_eq!(stats.len(), 0);
        assert!(stats.is_empty());
    }

    #[test]
    fn future_events_count_and_too_old_events_are_ignored() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Attempted, now() + Duration::from_secs(2));
        assert_eq!(stats.statistics(&k, URL, now())["attempts"], 1);
        // More than a window older than the newest event of the entry: dropped, nothing created.
        stats.record(&k, URL, DeliveryOutcome::Failed, now() - HOUR * 30);
        stats.record(&key("9"), URL, DeliveryOutcome::Failed, SystemTime::UNIX_EPOCH - HOUR);
        assert_eq!(stats.statistics(&k, URL, now())["failures"], 0);
        assert_eq!(stats.len(), 1);
    }

    #[test]
    fn out_of_order_events_within_the_window_count() {
        let stats = WebhookStats::default();
        let k = key("7");
        stats.record(&k, URL, DeliveryOutcome::Attempted, now());
        stats.record(&k, URL, DeliveryOutcome::Attempted, now() - HOUR * 10);
        stats.record(&k, URL, DeliveryOutcome::Attempted, now() - HOUR * 5);
        stats.record(&k, URL, DeliveryOutcome::Attempted, now() - HOUR * 10);
        assert_eq!(stats.statistics(&k, URL, now())["attempts"], 4);
        let keys = stats.lock();
        let indexes: Vec<u64> = keys[&k][URL].buckets.iter().map(|b| b.index).collect();
        assert!(indexes.windows(2).all(|pair| pair[0] < pair[1]), "{indexes:?}");
    }

    #[test]
    fn memory_per_url_is_bounded_by_the_bucket_count() {
        let stats = WebhookStats::default();
        let k = key("7");
        // Three days of an event every 30 s.
        for second in (0..3 * 24 * 3600).step_by(30) {
            stats.record(&k, URL, DeliveryOutcome::Attempted, now() + Duration::from_secs(second));
        }
        let buckets = stats.lock()[&k][URL].buckets.len();
        assert!(buckets <= BUCKETS_PER_WINDOW as usize + 1, "{buckets}");
    }

    #[test]
    fn tiny_windows_use_one_second_buckets() {
        let stats = WebhookStats::new(Duration::from_millis(10));
        assert_eq!(stats.bucket_ms, 1000);
        let stats = WebhookStats::new(DEFAULT_WINDOW);
        assert_eq!(stats.bucket_ms, 300_000);
    }

    #[test]
    fn odd_clocks_do_not_panic() {
        let stats = WebhookStats::default();
        let k = key("7");
        let far_future = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        stats.record(&k, URL, DeliveryOutcome::Failed, far_future);
        let answer = stats.statistics(&k, URL, SystemTime::UNIX_EPOCH - HOUR);
        assert_eq!(answer["failures"], 1);
        assert_eq!(answer["lastFailureAt"], Value::Null, "beyond year 9999");
        assert_eq!(answer["since"], "1970-01-01T00:00:00.000Z");
        stats.prune(SystemTime::UNIX_EPOCH);
        let _ = stats.statistics(&k, URL, far_future);
    }
}
