//! The config in force, as the request path reads it: a [`Snapshot`] of services, the mesh's
//! settings and this proxy's own inbound side. Immutable once built; `convert` builds one from
//! each accepted update and [`super::Discovery`] swaps it in.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::routes::{Port, ServiceKey, ServiceMap};

/// The config in force: immutable once built.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    /// The mesh generation this view came from; empty before the first update.
    pub version: String,
    pub mesh: MeshSettings,
    #[serde(serialize_with = "ser_services")]
    pub services: ServiceMap,
    pub unknown: HashSet<ServiceKey>,
    pub inbound: Option<Inbound>,
    /// Subscribed addresses the mesh knows: a Service's cluster IP and port, or an endpoint.
    pub addresses: HashMap<SocketAddr, AddressTarget>,
    /// Subscribed addresses the mesh does not know: passed through.
    #[serde(rename = "unknownAddresses")]
    pub unknown_addresses: HashSet<SocketAddr>,
}

/// What a redirected connection's original destination reaches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressTarget {
    pub service: ServiceKey,
    /// The Service port.
    pub port: u16,
    /// The address is one endpoint of the Service, and its traffic goes to that endpoint alone.
    pub endpoint: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSettings {
    pub trust_domain: String,
    #[serde(serialize_with = "weft_runtime::duration::ser_duration")]
    pub certificate_ttl: Duration,
    pub mtls_permissive: bool,
    pub otlp_endpoint: String,
    pub sampling_ratio: f64,
    pub access_log_json: bool,
    /// PEM roots the mesh trusts now (empty from a control plane that sends none).
    #[serde(skip)]
    pub trust_anchors: String,
    /// Fingerprint of the CA's current issuer.
    pub issuer: String,
    /// Ports whose redirected connections are opaque TCP, undetected (MeshConfig `opaquePorts`).
    pub opaque_ports: Vec<u16>,
}

/// This proxy's own service, as the control plane knows it.
#[derive(Clone, Debug, Serialize)]
pub struct Inbound {
    pub service: ServiceKey,
    pub ports: Vec<Port>,
    /// `Some` when any AuthorizationPolicy targets this service.
    pub authorization: Option<crate::authz::Policy>,
    /// TrafficPolicy `rateLimit` for this service.
    pub rate_limit: Option<crate::policy::RateLimit>,
}

fn ser_services<S: serde::Serializer>(m: &ServiceMap, s: S) -> Result<S::Ok, S::Error> {
    let mut v: Vec<_> = m.values().collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    s.collect_seq(v)
}
