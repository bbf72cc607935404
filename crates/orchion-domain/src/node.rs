//! Nodes: machines running `orchion agent`, their declared resources, and how their liveness
//! changes.
//!
//! A node's status (`ready | draining | unreachable | down`) is derived from two independent
//! facts: its [`Liveness`], which heartbeats and silence drive through [`Liveness::next`], and
//! whether an operator drained it. Keeping them apart means a drained node that goes silent and
//! comes back is still drained.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use time::OffsetDateTime;

use crate::{FieldError, NodeId, ValidationErrors};

/// Most labels a node may carry.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 253;
/// Most CPU a node may declare: 4096 cores, in millicores.
pub const MAX_CPU_MILLIS: u64 = 4096 * 1000;
/// Most memory a node may declare: 64 TiB.
pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
/// Most GPUs a node may declare.
pub const MAX_GPUS: u32 = 256;

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    pub labels: Labels,
    pub capacity: Capacity,
    pub executors: Vec<String>,
    pub version: String,
    pub liveness: Liveness,
    pub draining: bool,
    pub registered_at: OffsetDateTime,
    pub last_heartbeat_at: OffsetDateTime,
}

impl Node {
    /// The status users see.
    pub fn status(&self) -> NodeStatus {
        NodeStatus::of(self.liveness, self.draining)
    }
}

/// What users see of a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Alive and accepting work.
    Ready,
    /// Alive, accepting no new work; running work may finish.
    Draining,
    /// Missed heartbeats past the timeout.
    Unreachable,
    /// Unreachable past the grace period, or left.
    Down,
}

impl NodeStatus {
    /// Every status.
    pub const ALL: [NodeStatus; 4] = [
        NodeStatus::Ready,
        NodeStatus::Draining,
        NodeStatus::Unreachable,
        NodeStatus::Down,
    ];

    /// The status of a node with this liveness and drain flag.
    pub fn of(liveness: Liveness, draining: bool) -> Self {
        match (liveness, draining) {
            (Liveness::Alive, false) => NodeStatus::Ready,
            (Liveness::Alive, true) => NodeStatus::Draining,
            (Liveness::Unreachable, _) => NodeStatus::Unreachable,
            (Liveness::Down, _) => NodeStatus::Down,
        }
    }

    /// The liveness this status implies.
    pub fn liveness(self) -> Liveness {
        match self {
            NodeStatus::Ready | NodeStatus::Draining => Liveness::Alive,
            NodeStatus::Unreachable => Liveness::Unreachable,
            NodeStatus::Down => Liveness::Down,
        }
    }

    /// The status as written on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Draining => "draining",
            NodeStatus::Unreachable => "unreachable",
            NodeStatus::Down => "down",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a node status: expected ready, draining, unreachable or down")
            })
    }
}

/// Whether a node is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    Alive,
    Unreachable,
    Down,
}

/// What happens to a node's liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LivenessEvent {
    /// A heartbeat (or a registration) arrived.
    Heartbeat,
    /// A check found nothing heard for this long.
    Silence(Duration),
    /// The agent said it is leaving.
    Left,
}

/// How long silence may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// Silence beyond this makes an alive node unreachable.
    pub timeout: Duration,
    /// Silence beyond `timeout + down_after` makes an unreachable node down.
    pub down_after: Duration,
}

impl Liveness {
    /// The liveness after `event`. One step at a time: an alive node becomes unreachable before
    /// it can become down, so the event log always shows both changes.
    pub fn next(self, event: LivenessEvent, policy: LivenessPolicy) -> Liveness {
        match (self, event) {
            (_, LivenessEvent::Heartbeat) => Liveness::Alive,
            (_, LivenessEvent::Left) => Liveness::Down,
            (Liveness::Alive, LivenessEvent::Silence(silence)) if silence > policy.timeout => {
                Liveness::Unreachable
            }
            (Liveness::Unreachable, LivenessEvent::Silence(silence))
                if silence > policy.timeout + policy.down_after =>
            {
                Liveness::Down
            }
            (liveness, LivenessEvent::Silence(_)) => liveness,
        }
    }
}

/// A node's labels: keys of `[a-z0-9./-]`, values of printable text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Validates every label, reporting every problem.
    pub fn new(labels: BTreeMap<String, String>) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if labels.len() > MAX_LABELS {
            errors.push(FieldError::new(
                "labels",
                format!(
                    "at most {MAX_LABELS} labels are allowed, got {}",
                    labels.len()
                ),
            ));
        }
        for (key, value) in &labels {
            let key_ok = !key.is_empty()
                && key.len() <= MAX_LABEL_KEY
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-/".contains(&b));
            if !key_ok {
                errors.push(FieldError {
                    pointer: format!("/labels/{}", crate::pointer_escape(key)),
                    message: format!(
                        "label key `{}` is invalid: use 1 to {MAX_LABEL_KEY} characters of a-z, 0-9, `.`, `/` and `-`",
                        key.escape_debug()
                    ),
                });
            }
            if value.chars().count() > MAX_LABEL_VALUE || value.chars().any(char::is_control) {
                errors.push(FieldError {
                    pointer: format!("/labels/{}", crate::pointer_escape(key)),
                    message: format!(
                        "label `{}` has an invalid value: at most {MAX_LABEL_VALUE} characters, no control characters",
                        key.escape_debug()
                    ),
                });
            }
        }
        errors.into_result(Labels(labels))
    }

    /// The labels, sorted by key.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether every `(key, value)` in `selector` is among these labels.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }
}

/// What a node can run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// CPU in thousandths of a core.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Capacity {
    /// Checks the values are within what any machine has.
    pub fn new(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if cpu_millis > MAX_CPU_MILLIS {
            errors.push(FieldError::new(
                "capacity",
                format!(
                    "capacity.cpu_millis {cpu_millis} is more than {MAX_CPU_MILLIS} (4096 cores)"
                ),
            ));
        }
        if memory_bytes > MAX_MEMORY_BYTES {
            errors.push(FieldError::new(
                "capacity",
                format!(
                    "capacity.memory_bytes {memory_bytes} is more than {MAX_MEMORY_BYTES} (64 TiB)"
                ),
            ));
        }
        if gpus > MAX_GPUS {
            errors.push(FieldError::new(
                "capacity",
                format!("capacity.gpus {gpus} is more than {MAX_GPUS}"),
            ));
        }
        errors.into_result(Capacity {
            cpu_millis,
            memory_bytes,
            gpus,
        })
    }
}

/// A valid registration: what an agent says about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    pub name: String,
    pub address: String,
    pub labels: Labels,
    pub capacity: Capacity,
    pub executors: Vec<String>,
    pub version: String,
}

impl NodeRegistration {
    /// Validates every field, reporting every problem.
    pub fn new(
        name: String,
        address: String,
        labels: BTreeMap<String, String>,
        capacity: (u64, u64, u32),
        executors: Vec<String>,
        version: String,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "name",
                "name must be 1 to 253 characters with no control characters",
            ));
        }
        if address.len() > 255 || address.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "address",
                "address must be at most 255 characters with no control characters",
            ));
        }
        if version.len() > 64 || version.chars().any(char::is_control) {
            errors.push(FieldError::new(
                "version",
                "version must be at most 64 characters",
            ));
        }
        if executors.len() > 32 {
            errors.push(FieldError::new("executors", "at most 32 executors"));
        }
        for executor in &executors {
            let ok = !executor.is_empty()
                && executor.len() <= 32
                && executor
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                errors.push(FieldError::new(
                    "executors",
                    format!(
                        "executor `{}` is invalid: use 1 to 32 characters of a-z, 0-9 and `-`",
                        executor.escape_debug()
                    ),
                ));
            }
        }
        let labels = Labels::new(labels).map_err(|e| errors.0.extend(e.0));
        let capacity =
            Capacity::new(capacity.0, capacity.1, capacity.2).map_err(|e| errors.0.extend(e.0));
        match (labels, capacity) {
            (Ok(labels), Ok(capacity)) => errors.into_result(NodeRegistration {
                name,
                address,
                labels,
                capacity,
                executors,
                version,
            }),
            _ => Err(errors),
        }
    }
}

/// Which nodes a listing returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeFilter {
    /// Only nodes with this status.
    pub status: Option<NodeStatus>,
    /// Only nodes carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
}

impl NodeFilter {
    /// Whether `node` passes the filter.
    pub fn matches(&self, node: &Node) -> bool {
        self.status.is_none_or(|s| s == node.status()) && node.labels.matches(&self.labels)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const POLICY: LivenessPolicy = LivenessPolicy {
        timeout: Duration::from_secs(30),
        down_after: Duration::from_secs(60),
    };

    fn liveness() -> impl Strategy<Value = Liveness> {
        prop::sample::select(vec![Liveness::Alive, Liveness::Unreachable, Liveness::Down])
    }

    #[test]
    fn silence_makes_a_node_unreachable_then_down() {
        let secs = |s| LivenessEvent::Silence(Duration::from_secs(s));
        let mut l = Liveness::Alive;
        l = l.next(secs(30), POLICY);
        assert_eq!(
            l,
            Liveness::Alive,
            "exactly the timeout is not yet too long"
        );
        l = l.next(secs(31), POLICY);
        assert_eq!(l, Liveness::Unreachable);
        l = l.next(secs(90), POLICY);
        assert_eq!(l, Liveness::Unreachable);
        l = l.next(secs(91), POLICY);
        assert_eq!(l, Liveness::Down);
        assert_eq!(l.next(LivenessEvent::Heartbeat, POLICY), Liveness::Alive);
    }

    #[test]
    fn an_alive_node_is_never_down_without_being_unreachable_first() {
        let l = Liveness::Alive.next(LivenessEvent::Silence(Duration::from_secs(3600)), POLICY);
        assert_eq!(l, Liveness::Unreachable);
    }

    #[test]
    fn status_combines_liveness_and_drain() {
        assert_eq!(NodeStatus::of(Liveness::Alive, true), NodeStatus::Draining);
        assert_eq!(
            NodeStatus::of(Liveness::Unreachable, true),
            NodeStatus::Unreachable
        );
        for status in NodeStatus::ALL {
            assert_eq!(status.as_str().parse::<NodeStatus>(), Ok(status));
            let draining = status == NodeStatus::Draining;
            assert_eq!(NodeStatus::of(status.liveness(), draining), status);
        }
    }

    #[test]
    fn bad_labels_are_each_reported() {
        let labels: BTreeMap<String, String> = [
            ("Zone".to_owned(), "a".to_owned()),
            ("ok/key.1-x".to_owned(), "fine".to_owned()),
            ("bad key".to_owned(), "x".to_owned()),
            ("ctl".to_owned(), "a\nb".to_owned()),
        ]
        .into();
        let err = Labels::new(labels).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err:?}");
        assert!(err.0.iter().any(|e| e.message.contains("`Zone`")));
        assert!(err.0.iter().any(|e| e.message.contains("`bad key`")));
        assert!(
            err.0
                .iter()
                .any(|e| e.message.contains("`ctl` has an invalid value"))
        );
    }

    #[test]
    fn absurd_capacity_is_refused() {
        let err = Capacity::new(u64::MAX, u64::MAX, u32::MAX).unwrap_err();
        assert_eq!(err.0.len(), 3);
        assert!(Capacity::new(2000, 8 << 30, 1).is_ok());
    }

    #[test]
    fn registration_reports_every_problem() {
        let err = NodeRegistration::new(
            String::new(),
            "10.0.0.1".into(),
            [("UPPER".to_owned(), "x".to_owned())].into(),
            (u64::MAX, 0, 0),
            vec!["Shell".into()],
            "0.1.0".into(),
        )
        .unwrap_err();
        let pointers: Vec<&str> = err.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["/name", "/executors", "/labels/UPPER", "/capacity"]
        );
    }

    proptest! {
        #[test]
        fn a_heartbeat_always_revives(l in liveness()) {
            prop_assert_eq!(l.next(LivenessEvent::Heartbeat, POLICY), Liveness::Alive);
        }

        #[test]
        fn short_silence_changes_nothing(l in liveness(), secs in 0u64..=30) {
            prop_assert_eq!(l.next(LivenessEvent::Silence(Duration::from_secs(secs)), POLICY), l);
        }

        #[test]
        fn silence_never_revives(l in liveness(), secs in 0u64..100_000) {
            let rank = |l: Liveness| match l { Liveness::Alive => 0, Liveness::Unreachable => 1, Liveness::Down => 2 };
            let next = l.next(LivenessEvent::Silence(Duration::from_secs(secs)), POLICY);
            prop_assert!(rank(next) >= rank(l));
            prop_assert!(rank(next) <= rank(l) + 1, "one step at a time");
        }

        #[test]
        fn valid_label_keys_are_accepted(key in "[a-z0-9./-]{1,63}", value in "[ -~]{0,100}") {
            prop_assert!(Labels::new([(key, value)].into()).is_ok());
        }
    }
}
