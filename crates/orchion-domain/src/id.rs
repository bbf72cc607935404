//! Typed identifiers. Ids are UUIDv7, so they sort by creation time, which cursor pagination
//! relies on.

use std::{fmt, str::FromStr};

use uuid::Uuid;

/// The reason a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a valid {kind} id: expected a UUID such as 0190b2c4-7d3e-7a51-9f0e-3c2d1b0a9f8e"
)]
pub struct IdParseError {
    /// What kind of id was expected.
    pub kind: &'static str,
    /// The text that was given (cut to 64 characters).
    pub input: String,
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps a UUID read from a trusted place (the store).
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self).map_err(|_| IdParseError {
                    kind: $kind,
                    input: s.chars().take(64).collect(),
                })
            }
        }
    };
}

uuid_id!(
    /// Identifies a project.
    ProjectId,
    "project"
);

impl ProjectId {
    /// The `default` project: where work goes when no project is named. It always exists.
    pub const DEFAULT: ProjectId =
        ProjectId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001));
}

uuid_id!(
    /// Identifies an API token (and a dashboard session, which is a token the sign-in made).
    TokenId,
    "token"
);

uuid_id!(
    /// Identifies a join token: a secret an agent presents to join the cluster as a new node.
    JoinTokenId,
    "join token"
);

uuid_id!(
    /// Identifies a run: one execution of a workflow; a job is a run of one task.
    RunId,
    "run"
);

uuid_id!(
    /// Identifies a task: one step of one run.
    TaskId,
    "task"
);

uuid_id!(
    /// Identifies a cron schedule.
    ScheduleId,
    "schedule"
);

uuid_id!(
    /// Identifies a node; stable across agent restarts (the agent keeps it in its state dir).
    NodeId,
    "node"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = ProjectId::new();
        assert_eq!(id.to_string().parse::<ProjectId>(), Ok(id));
    }

    #[test]
    fn malformed_ids_name_the_kind_and_input() {
        let err = "not-a-uuid".parse::<ProjectId>().unwrap_err();
        assert_eq!(err.kind, "project");
        assert!(
            err.to_string()
                .contains("`not-a-uuid` is not a valid project id")
        );
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let ids: Vec<ProjectId> = (0..1000).map(|_| ProjectId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
