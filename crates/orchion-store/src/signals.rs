//! Changes that other replicas should hear of at once, over PostgreSQL's `LISTEN/NOTIFY` on the
//! channel `orchion`. A replica sends what it changed after the commit ([`Store::signal`]);
//! every replica listens ([`Store::listen`]) and wakes what waits for that change (claims, the
//! event hub). Events appended are announced by a trigger in the same transaction. A finished
//! workflow step needs no signal: the replica that records the result moves the run on, and
//! the tasks it enqueues then are `Work`. SQLite is one server's store: it has nobody to tell.
//!
//! A notification may be lost while a listener reconnects; it then hears [`Heard::Missed`] and
//! wakes everything once. Nothing depends on a notification arriving: every waiter still looks
//! again on its own period, only later.

use crate::StoreError;

/// The notification channel.
pub(crate) const CHANNEL: &str = "orchion";

/// A change another replica should hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Work appeared or capacity was freed: waiting claims look again.
    Work,
    /// A schedule was created or changed: the scheduler looks again.
    Schedules,
    /// Events were appended to the log.
    Events,
    /// A token was revoked (or its project deleted): replicas forget the tokens they checked.
    Tokens,
    /// A secret was set or deleted: replicas forget the secrets they read.
    Secrets,
}

/// What a listener heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    Signal(Signal),
    /// The listener lost its connection and may have missed signals: wake everything.
    Missed,
}

impl Signal {
    /// The payload: `<sender>:<what>`, so a replica can skip what it sent itself.
    pub(crate) fn payload(self, sender: u64) -> String {
        match self {
            Signal::Work => format!("{sender:x}:work"),
            Signal::Schedules => format!("{sender:x}:schedules"),
            Signal::Tokens => format!("{sender:x}:tokens"),
            Signal::Secrets => format!("{sender:x}:secrets"),
            Signal::Events => "events".to_owned(),
        }
    }

    /// The signal in `payload`, unless `sender` sent it; `None` for what is not a signal.
    pub(crate) fn parse(payload: &str, sender: u64) -> Option<Signal> {
        if payload == "events" {
            return Some(Signal::Events);
        }
        let (from, what) = payload.split_once(':')?;
        if u64::from_str_radix(from, 16).ok()? == sender {
            return None;
        }
        match what {
            "work" => Some(Signal::Work),
            "schedules" => Some(Signal::Schedules),
            "tokens" => Some(Signal::Tokens),
            "secrets" => Some(Signal::Secrets),
            _ => None,
        }
    }
}

/// Signals from the other replicas.
#[async_trait::async_trait]
pub trait Listener: Send {
    /// The next thing heard; an error when listening cannot go on (the store closed).
    async fn recv(&mut self) -> Result<Heard, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_skips_its_own_signals_and_reads_the_others() {
        let payload = Signal::Work.payload(7);
        assert_eq!(Signal::parse(&payload, 7), None, "{payload}");
        assert_eq!(Signal::parse(&payload, 8), Some(Signal::Work), "{payload}");
        let payload = Signal::Schedules.payload(7);
        assert_eq!(Signal::parse(&payload, 7), None, "{payload}");
        assert_eq!(
            Signal::parse(&payload, 8),
            Some(Signal::Schedules),
            "{payload}"
        );
        for signal in [Signal::Tokens, Signal::Secrets] {
            let payload = signal.payload(7);
            assert_eq!(Signal::parse(&payload, 7), None, "{payload}");
            assert_eq!(Signal::parse(&payload, 8), Some(signal), "{payload}");
        }
        // Events come from a trigger, with no sender: everyone hears them.
        assert_eq!(Signal::parse("events", 7), Some(Signal::Events));
        for junk in ["", "work", "zz:work", "7:work:more", "7:other"] {
            assert_eq!(Signal::parse(junk, 8), None, "{junk}");
        }
    }
}
