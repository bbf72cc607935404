//! How values are kept in columns both backends share: times that queries compare as integer
//! microseconds, durations as milliseconds, retry policies and schedule templates as JSON, and
//! listings as pages of `limit + 1` rows. Pure; round trips are unit-tested below.

use orchion_domain::{
    Capacity, Concurrency, NewJob, Page, PageRequest, Placement, RetryPolicy, Timeouts,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// The longest output kept for a task; longer output is cut and marked.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// The most log text kept per task; past it one marker line is kept and the rest dropped.
pub const MAX_LOG_BYTES: i64 = 16 * 1024 * 1024;
/// The marker that ends truncated output.
pub const TRUNCATED: &str = "\n[… truncated by orchion]";

/// Microseconds since the Unix epoch.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn ms_duration(ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A count as a SQL integer.
pub(crate) fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A retry policy as stored (JSON).
pub(crate) fn retry_json(policy: &RetryPolicy) -> serde_json::Value {
    serde_json::json!({
        "max_attempts": policy.max_attempts,
        "initial_interval_ms": duration_ms(policy.initial_interval),
        "max_interval_ms": duration_ms(policy.max_interval),
        "backoff_coefficient": policy.backoff_coefficient,
        "jitter": policy.jitter,
        "non_retryable_exit_codes": policy.non_retryable_exit_codes,
    })
}

pub(crate) fn retry_from_json(value: &serde_json::Value) -> Result<RetryPolicy, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("retry policy {value}"));
    let int = |key: &str| value[key].as_i64().ok_or_else(corrupt);
    Ok(RetryPolicy {
        max_attempts: u32::try_from(int("max_attempts")?).map_err(|_| corrupt())?,
        initial_interval: ms_duration(int("initial_interval_ms")?),
        max_interval: ms_duration(int("max_interval_ms")?),
        backoff_coefficient: value["backoff_coefficient"].as_f64().ok_or_else(corrupt)?,
        jitter: value["jitter"].as_f64().ok_or_else(corrupt)?,
        non_retryable_exit_codes: value["non_retryable_exit_codes"]
            .as_array()
            .ok_or_else(corrupt)?
            .iter()
            .filter_map(|c| c.as_i64().and_then(|c| i32::try_from(c).ok()))
            .collect(),
    })
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(TRUNCATED);
    text
}

/// A job template as stored in a schedule (JSON).
pub(crate) fn job_json(job: &NewJob) -> String {
    serde_json::json!({
        "name": job.name,
        "project_id": job.project_id.map(|p| p.to_string()),
        "executor": job.executor,
        "spec": job.spec,
        "priority": job.priority,
        "retry": retry_json(&job.retry),
        "schedule_to_start_ms": job.timeouts.schedule_to_start.map(duration_ms),
        "start_to_close_ms": job.timeouts.start_to_close.map(duration_ms),
        "heartbeat_ms": duration_ms(job.timeouts.heartbeat),
        "labels": job.placement.labels,
        "cpu_millis": job.placement.resources.cpu_millis,
        "memory_bytes": job.placement.resources.memory_bytes,
        "gpus": job.placement.resources.gpus,
        "concurrency": job.concurrency.as_ref().map(|c| serde_json::json!({"key": c.key, "limit": c.limit})),
    })
    .to_string()
}

pub(crate) fn job_from_json(text: &str) -> Result<NewJob, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("schedule job {text}"));
    let v: serde_json::Value = serde_json::from_str(text).map_err(|_| corrupt())?;
    let str_of = |key: &str| v[key].as_str().map(str::to_owned).ok_or_else(corrupt);
    let ms = |key: &str| v[key].as_i64().map(ms_duration);
    Ok(NewJob {
        name: str_of("name")?,
        project_id: v["project_id"].as_str().and_then(|p| p.parse().ok()),
        executor: str_of("executor")?,
        spec: str_of("spec")?,
        priority: v["priority"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0),
        retry: retry_from_json(&v["retry"])?,
        timeouts: Timeouts {
            schedule_to_start: ms("schedule_to_start_ms"),
            start_to_close: ms("start_to_close_ms"),
            heartbeat: ms("heartbeat_ms").ok_or_else(corrupt)?,
        },
        placement: Placement {
            labels: serde_json::from_value(v["labels"].clone()).map_err(|_| corrupt())?,
            resources: Capacity {
                cpu_millis: v["cpu_millis"].as_u64().unwrap_or(0),
                memory_bytes: v["memory_bytes"].as_u64().unwrap_or(0),
                gpus: v["gpus"]
                    .as_u64()
                    .and_then(|g| u32::try_from(g).ok())
                    .unwrap_or(0),
            },
        },
        concurrency: match &v["concurrency"] {
            serde_json::Value::Null => None,
            c => Some(Concurrency {
                key: c["key"].as_str().ok_or_else(corrupt)?.to_owned(),
                limit: c["limit"]
                    .as_u64()
                    .and_then(|l| u32::try_from(l).ok())
                    .ok_or_else(corrupt)?,
            }),
        },
        run_at: None,
        trace_parent: None,
    })
}

/// The `LIMIT` a page reads: one row more than it shows, to know whether there is a next page.
pub(crate) fn page_limit(page: PageRequest) -> i64 {
    i64::from(page.limit) + 1
}

/// Turns `limit + 1` rows fetched for a page into the page and its continuation cursor.
pub(crate) fn page_of<R, T>(
    rows: Vec<R>,
    page: PageRequest,
    id: impl Fn(&T) -> Uuid,
) -> Result<Page<T>, StoreError>
where
    T: TryFrom<R>,
    StoreError: From<T::Error>,
{
    let limit = page.limit as usize;
    let more = rows.len() > limit;
    let items = rows
        .into_iter()
        .take(limit)
        .map(|row| T::try_from(row).map_err(StoreError::from))
        .collect::<Result<Vec<T>, _>>()?;
    let next = if more {
        items.last().map(|last| orchion_domain::Cursor(id(last)))
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The cursor comparison and the order of a listing by id: oldest first, or newest first.
pub(crate) fn direction(newest_first: bool) -> (&'static str, &'static str) {
    if newest_first {
        ("<", "DESC")
    } else {
        (">", "ASC")
    }
}

/// A `LIKE` pattern (with `\` as the escape) for names containing `text`, ignoring case.
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_on_a_character_boundary_and_marked() {
        assert_eq!(truncate("short".into(), 100), "short");
        let cut = truncate("é".repeat(100), 50);
        assert!(cut.len() <= 50, "{}", cut.len());
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.starts_with('é'));
    }

    #[test]
    fn microseconds_round_trip() {
        let now = crate::now();
        assert_eq!(from_micros(micros(now)), now);
    }

    #[test]
    fn retry_policies_round_trip_through_json() {
        let policy = RetryPolicy {
            non_retryable_exit_codes: vec![2, 126],
            ..RetryPolicy::default()
        };
        assert_eq!(retry_from_json(&retry_json(&policy)).unwrap(), policy);
    }

    #[test]
    fn like_patterns_match_wildcards_literally() {
        assert_eq!(contains_pattern("Build"), "%build%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
