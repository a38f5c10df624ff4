//! The services (and addresses) this proxy asks the control plane for, and when it stops asking.
//!
//! The `upstream` mappings are pinned. Any other name comes from a request (the app's `Host`,
//! or where a redirected connection was going), so a caller chooses it: it is pending until the control plane answers, then resolved (a
//! Service of the mesh) or unknown. Two bounds hold whatever names callers send:
//!
//! - at most [`MAX_UNRESOLVED`] names are pending or unknown at once; a new name takes the place
//!   of the oldest unknown one (only when every one of them is still pending is it refused);
//! - a resolved service, which only the mesh's config can add, is dropped once
//!   [`IDLE_SWEEPS`] sweeps have passed without a request for it, and unknown names at every
//!   sweep. A dropped name is asked for again on its next request.
//!
//! Owned by [`super::Discovery`]; which names are in the snapshot is decided by the control
//! plane, not here.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// The most services one proxy subscribes to.
pub const MAX_SUBSCRIPTIONS: usize = 4096;
/// The most names that may be pending or unknown at once.
pub const MAX_UNRESOLVED: usize = 256;
/// How often unused subscriptions are dropped.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(60);
/// A resolved service unused for this many sweeps is dropped (4–5 minutes).
pub const IDLE_SWEEPS: u64 = 5;

/// What the control plane must be told.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<K> {
    Subscribe(K),
    Unsubscribe(K),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pinned,
    Pending,
    Resolved,
    Unknown,
}

/// Why a name was not subscribed to.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("this proxy already tracks {MAX_SUBSCRIPTIONS} services")]
    Full,
    #[error("{MAX_UNRESOLVED} other new names are waiting for the control plane's answer")]
    TooManyPending,
}

/// Subscriptions keyed by `K`: what is subscribed to (a service name or an address).
#[derive(Debug)]
pub struct Subscriptions<K> {
    states: BTreeMap<K, State>,
    /// The pending and unknown names, oldest first.
    unresolved: VecDeque<K>,
}

impl<K: Ord + Clone> Subscriptions<K> {
    pub fn pinned(keys: impl IntoIterator<Item = K>) -> Self {
        Self {
            states: keys.into_iter().map(|k| (k, State::Pinned)).collect(),
            unresolved: VecDeque::new(),
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.states.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.states.keys()
    }

    /// Subscribes to `key` (new: the caller has checked); returns what to tell the control
    /// plane, in order.
    pub fn add(&mut self, key: &K) -> Result<Vec<Change<K>>, Refused> {
        let mut changes = Vec::with_capacity(2);
        if self.unresolved.len() >= MAX_UNRESOLVED {
            let states = &self.states;
            let oldest_unknown = self
                .unresolved
                .iter()
                .position(|k| states.get(k) == Some(&State::Unknown))
                .ok_or(Refused::TooManyPending)?;
            if let Some(evicted) = self.unresolved.remove(oldest_unknown) {
                self.states.remove(&evicted);
                changes.push(Change::Unsubscribe(evicted));
            }
        }
        if self.states.len() >= MAX_SUBSCRIPTIONS {
            return Err(Refused::Full);
        }
        self.states.insert(key.clone(), State::Pending);
        self.unresolved.push_back(key.clone());
        changes.push(Change::Subscribe(key.clone()));
        Ok(changes)
    }

    /// Takes the control plane's answers from a new snapshot: which names are services and
    /// which are unknown.
    pub fn settle(&mut self, is_service: impl Fn(&K) -> bool, is_unknown: impl Fn(&K) -> bool) {
        for (key, state) in &mut self.states {
            match *state {
                State::Pinned => {}
                State::Pending | State::Unknown if is_service(key) => *state = State::Resolved,
                State::Pending if is_unknown(key) => *state = State::Unknown,
                State::Resolved if is_unknown(key) => {
                    // Deleted from the mesh: it may be bounded like any unknown name now.
                    *state = State::Unknown;
                    self.unresolved.push_back(key.clone());
                }
                _ => {}
            }
        }
        let states = &self.states;
        self.unresolved
            .retain(|k| matches!(states.get(k), Some(State::Pending | State::Unknown)));
    }

    /// Drops the unknown names and the resolved services `idle` says were not used lately;
    /// returns them, to unsubscribe.
    pub fn sweep(&mut self, idle: impl Fn(&K) -> bool) -> Vec<K> {
        let dropped: Vec<K> = self
            .states
            .iter()
            .filter(|(k, s)| match s {
                State::Unknown => true,
                State::Resolved => idle(k),
                State::Pinned | State::Pending => false,
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dropped {
            self.states.remove(k);
        }
        let states = &self.states;
        self.unresolved.retain(|k| states.contains_key(k));
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ServiceKey;

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new(name, "shop")
    }

    #[test]
    fn unknown_names_make_room_for_new_ones_and_pending_ones_are_kept() {
        let mut subs = Subscriptions::pinned([key("pinned")]);
        for i in 0..MAX_UNRESOLVED {
            subs.add(&key(&format!("n{i}"))).unwrap();
        }
        // All pending: a new name has to wait its turn.
        assert!(matches!(
            subs.add(&key("real")),
            Err(Refused::TooManyPending)
        ));
        // The control plane answers: all unknown. Each new name now evicts the oldest.
        subs.settle(|_| false, |k| k.name.starts_with('n'));
        assert_eq!(
            subs.add(&key("real")).unwrap(),
            [
                Change::Unsubscribe(key("n0")),
                Change::Subscribe(key("real"))
            ]
        );
        subs.settle(|k| k.name == "real", |k| k.name.starts_with('n'));
        for i in 0..10 * MAX_UNRESOLVED {
            subs.add(&key(&format!("m{i}"))).unwrap();
            subs.settle(|k| k.name == "real", |k| k.name != "real");
        }
        assert_eq!(
            subs.len(),
            MAX_UNRESOLVED + 2,
            "pinned, real, and the unresolved"
        );
        assert!(subs.contains(&key("real")) && subs.contains(&key("pinned")));
    }

    #[test]
    fn sweeps_drop_unknown_names_and_idle_services_never_pinned_ones() {
        let mut subs = Subscriptions::pinned([key("pinned")]);
        for name in ["busy", "idle", "ghost", "waiting"] {
            subs.add(&key(name)).unwrap();
        }
        subs.settle(
            |k| ["busy", "idle"].contains(&k.name.as_str()),
            |k| k.name == "ghost",
        );
        let mut dropped = subs.sweep(|k| k.name != "busy");
        dropped.sort();
        assert_eq!(dropped, [key("ghost"), key("idle")]);
        let left: Vec<_> = subs.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(left, ["busy", "pinned", "waiting"]);
        // A service deleted from the mesh becomes unknown and goes at the next sweep.
        subs.settle(|_| false, |k| k.name == "busy");
        assert_eq!(subs.sweep(|_| false), [key("busy")]);
    }
}
