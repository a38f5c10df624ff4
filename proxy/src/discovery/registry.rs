//! The state that outlives a snapshot: each endpoint's connection, latency estimate and breaker,
//! each service's retry budget and fault sequences, each backend's concurrency counters. A new
//! snapshot reuses what it still names; what no snapshot holds is forgotten.
//!
//! Only `discovery` writes here (while converting an update, on the discovery task); the request
//! path holds the `Arc`s it hands out, never the registry.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use crate::balance::Endpoint;
use crate::breaker::BackendState;
use crate::routes::{ServiceKey, ServiceState};

/// State that outlives one snapshot, shared by every snapshot that still has its owner: each
/// endpoint (by address and the identity it must present) keeps its connection, latency
/// estimate and breaker; each service keeps its retry budget and fault sequences; each backend
/// its concurrency counters.
#[derive(Default)]
pub struct EndpointRegistry {
    endpoints: Mutex<HashMap<(SocketAddr, String), Weak<Endpoint>>>,
    services: Mutex<HashMap<ServiceKey, Weak<ServiceState>>>,
    backends: Mutex<HashMap<ServiceKey, Weak<BackendState>>>,
}

fn shared<T: Default>(map: &Mutex<HashMap<ServiceKey, Weak<T>>>, key: &ServiceKey) -> Arc<T> {
    let Ok(mut map) = map.lock() else {
        return Arc::default();
    };
    if let Some(found) = map.get(key).and_then(Weak::upgrade) {
        return found;
    }
    let made = Arc::new(T::default());
    map.insert(key.clone(), Arc::downgrade(&made));
    made
}

impl EndpointRegistry {
    /// The endpoint at `addr` that must present `identity`: the one already known, unless its
    /// labels changed (then a new one, with a fresh connection and breaker).
    pub(super) fn endpoint(
        &self,
        addr: SocketAddr,
        identity: &str,
        labels: BTreeMap<String, String>,
    ) -> Arc<Endpoint> {
        let Ok(mut map) = self.endpoints.lock() else {
            return Arc::new(Endpoint::new(addr, identity.to_string(), labels));
        };
        let key = (addr, identity.to_string());
        if let Some(ep) = map.get(&key).and_then(Weak::upgrade) {
            if ep.labels == labels {
                return ep;
            }
        }
        let ep = Arc::new(Endpoint::new(addr, identity.to_string(), labels));
        map.insert(key, Arc::downgrade(&ep));
        ep
    }

    /// A service's state (retry budget, fault sequences), shared by every snapshot that names it.
    pub(super) fn service(&self, key: &ServiceKey) -> Arc<ServiceState> {
        shared(&self.services, key)
    }

    /// A backend's state (concurrency counters), shared by every snapshot that names it.
    pub(super) fn backend(&self, key: &ServiceKey) -> Arc<BackendState> {
        shared(&self.backends, key)
    }

    /// Forgets what no snapshot holds any more (called after each conversion).
    pub(super) fn prune(&self) {
        if let Ok(mut map) = self.endpoints.lock() {
            map.retain(|_, ep| ep.strong_count() > 0);
        }
        if let Ok(mut map) = self.services.lock() {
            map.retain(|_, s| s.strong_count() > 0);
        }
        if let Ok(mut map) = self.backends.lock() {
            map.retain(|_, s| s.strong_count() > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_kept_while_held_and_renewed_when_its_labels_change() {
        let reg = EndpointRegistry::default();
        let addr: SocketAddr = "127.0.0.1:4143".parse().unwrap();
        let labels = |v: &str| BTreeMap::from([("version".to_string(), v.to_string())]);
        let a = reg.endpoint(addr, "id", labels("v1"));
        assert!(Arc::ptr_eq(&a, &reg.endpoint(addr, "id", labels("v1"))));
        assert!(!Arc::ptr_eq(&a, &reg.endpoint(addr, "other", labels("v1"))));
        let b = reg.endpoint(addr, "id", labels("v2"));
        assert!(!Arc::ptr_eq(&a, &b));
        drop((a, b));
        reg.prune();
        assert!(reg.endpoints.lock().unwrap().is_empty());
    }
}
