//! Cron schedules: when they fire, in which time zone, and what happens to instants missed while
//! no server was running (misfire) or while the previous run is still going (overlap).
//!
//! Invariant: a schedule fires at most once per instant. [`CronSchedule::firing`] is pure; the
//! store makes "once" hold across crashes and replicas by deriving each run's idempotency key
//! from the schedule and the instant.

use std::{fmt, str::FromStr};

use chrono::TimeZone;
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use time::OffsetDateTime;

use crate::{FieldError, NewJob, RunId, ScheduleId, ValidationErrors};

/// A missed instant is still fired on time when found at most this late (for `skip`).
pub const ON_TIME: time::Duration = time::Duration::seconds(60);
/// The most missed instants looked at in one pass.
const MAX_INSTANTS: usize = 10_000;

/// What to do with instants missed while no server ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisfirePolicy {
    /// Drop them; fire only instants found on time.
    Skip,
    /// Fire one run for all of them.
    FireOnce,
}

/// What to do when an instant comes while the previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlapPolicy {
    /// Start another run.
    Allow,
    /// Skip this instant.
    Skip,
}

macro_rules! names {
    ($ty:ident, $what:literal, $($variant:ident = $name:literal),+) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(concat!("`{}` is not ", $what, ": expected ", $(concat!("`", $name, "` ")),+), other)),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(
    MisfirePolicy,
    "a misfire policy",
    Skip = "skip",
    FireOnce = "fire_once"
);
names!(
    OverlapPolicy,
    "an overlap policy",
    Allow = "allow",
    Skip = "skip"
);

/// A parsed cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression && self.zone == other.zone
    }
}

fn to_chrono(at: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc
        .timestamp_opt(at.unix_timestamp(), at.nanosecond())
        .single()
        .unwrap_or_default()
}

fn from_chrono<Z: TimeZone>(at: &chrono::DateTime<Z>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(at.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl CronSchedule {
    /// Parses a 5-field (minute precision) or 6-field (with seconds first) expression, or an
    /// `@hourly`-style nickname, in an IANA time zone. Reports both fields' problems.
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let fields = expression.split_whitespace().count();
        let cron = if !expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            errors.push(FieldError::new(
                "cron",
                format!("cron `{expression}` has {fields} fields: use 5 (minute hour day month weekday) or 6 (seconds first)"),
            ));
            None
        } else {
            CronParser::builder()
                .seconds(Seconds::Optional)
                .year(Year::Disallowed)
                .build()
                .parse(expression)
                .map_err(|e| {
                    errors.push(FieldError::new(
                        "cron",
                        format!("cron `{expression}` is invalid: {e}"),
                    ))
                })
                .ok()
        };
        let zone = timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                errors.push(FieldError::new(
                    "timezone",
                    format!("timezone `{timezone}` is not an IANA time zone such as UTC or Europe/Berlin"),
                ))
            })
            .ok();
        match (cron, zone) {
            (Some(cron), Some(zone)) if errors.0.is_empty() => Ok(Self {
                expression: expression.trim().to_owned(),
                cron,
                zone,
            }),
            _ => Err(errors),
        }
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn timezone(&self) -> &str {
        self.zone.name()
    }

    /// The first instant strictly after `after`.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let local = to_chrono(after).with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|next| from_chrono(&next))
    }

    /// What to fire at `now` for a schedule due at `due`: the instants to fire (their runs'
    /// identities) and the next due instant after `now`.
    pub fn firing(
        &self,
        due: OffsetDateTime,
        now: OffsetDateTime,
        misfire: MisfirePolicy,
    ) -> Firing {
        let mut missed = Vec::new();
        let mut at = Some(due);
        while let Some(instant) = at {
            if instant > now || missed.len() >= MAX_INSTANTS {
                break;
            }
            missed.push(instant);
            at = self.next_after(instant);
        }
        let next = if missed.is_empty() {
            Some(due)
        } else {
            self.next_after(now)
        };
        let fire = match (misfire, missed.last()) {
            (_, None) => None,
            (MisfirePolicy::FireOnce, Some(latest)) => Some(*latest),
            (MisfirePolicy::Skip, Some(latest)) => (now - *latest <= ON_TIME).then_some(*latest),
        };
        Firing { fire, next }
    }
}

/// The outcome of [`CronSchedule::firing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The instant to start a run for, if any.
    pub fire: Option<OffsetDateTime>,
    /// When the schedule is next due; `None` if it never fires again.
    pub next: Option<OffsetDateTime>,
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub id: ScheduleId,
    pub name: String,
    pub cron: CronSchedule,
    pub overlap: OverlapPolicy,
    pub misfire: MisfirePolicy,
    /// What each firing runs.
    pub job: NewJob,
    /// When it is next due; `None` when it will never fire again.
    pub next_fire_at: Option<OffsetDateTime>,
    pub last_fire_at: Option<OffsetDateTime>,
    pub last_run_id: Option<RunId>,
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn five_and_six_fields_parse_and_others_are_refused() {
        assert!(CronSchedule::parse("*/5 * * * *", "UTC").is_ok());
        assert!(CronSchedule::parse("*/10 * * * * *", "UTC").is_ok());
        assert!(CronSchedule::parse("@hourly", "UTC").is_ok());
        let err = CronSchedule::parse("* * *", "UTC").unwrap_err();
        assert_eq!(err.0[0].pointer, "/cron");
        assert!(err.0[0].message.contains("3 fields"));
        let err = CronSchedule::parse("61 * * * *", "Mars/Olympus").unwrap_err();
        let pointers: Vec<&str> = err.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/cron", "/timezone"]);
        assert!(
            CronSchedule::parse("* * * * * * 2030", "UTC").is_err(),
            "no year field"
        );
    }

    #[test]
    fn the_next_instant_follows_the_time_zone() {
        // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
        let berlin = CronSchedule::parse("0 9 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            berlin.next_after(datetime!(2026-01-10 00:00 UTC)),
            Some(datetime!(2026-01-10 08:00 UTC))
        );
        assert_eq!(
            berlin.next_after(datetime!(2026-07-10 00:00 UTC)),
            Some(datetime!(2026-07-10 07:00 UTC))
        );
        let every_second = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(datetime!(2026-01-10 00:00:00.5 UTC)),
            Some(datetime!(2026-01-10 00:00:01 UTC))
        );
    }

    #[test]
    fn misfires_fire_once_or_are_skipped() {
        let hourly = CronSchedule::parse("0 * * * *", "UTC").unwrap();
        let due = datetime!(2026-01-10 01:00 UTC);
        // The server was down for three hours.
        let now = datetime!(2026-01-10 03:30 UTC);
        let once = hourly.firing(due, now, MisfirePolicy::FireOnce);
        assert_eq!(once.fire, Some(datetime!(2026-01-10 03:00 UTC)));
        assert_eq!(once.next, Some(datetime!(2026-01-10 04:00 UTC)));
        let skip = hourly.firing(due, now, MisfirePolicy::Skip);
        assert_eq!(skip.fire, None, "03:00 is 30 minutes late");
        assert_eq!(skip.next, Some(datetime!(2026-01-10 04:00 UTC)));
        // On time: both fire.
        let on_time = datetime!(2026-01-10 01:00:02 UTC);
        assert_eq!(
            hourly.firing(due, on_time, MisfirePolicy::Skip).fire,
            Some(due)
        );
        // Not yet due: nothing fires, and the due instant stays next.
        let early = hourly.firing(
            due,
            datetime!(2026-01-10 00:59 UTC),
            MisfirePolicy::FireOnce,
        );
        assert_eq!(
            early,
            Firing {
                fire: None,
                next: Some(due)
            }
        );
    }

    #[test]
    fn policies_parse_by_name() {
        assert_eq!(
            "fire_once".parse::<MisfirePolicy>(),
            Ok(MisfirePolicy::FireOnce)
        );
        assert_eq!("skip".parse::<OverlapPolicy>(), Ok(OverlapPolicy::Skip));
        assert!(
            "sometimes"
                .parse::<OverlapPolicy>()
                .unwrap_err()
                .contains("`sometimes`")
        );
    }
}
