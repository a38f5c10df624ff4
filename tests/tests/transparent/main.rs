//! Transparent interception end to end, in network namespaces the tests create (needs root):
//! a node with a bridge, pods on it, each pod's app unchanged and talking to plain addresses,
//! `weft-proxy init` run in each meshed pod, and each pod's own `weft-proxy` process running as
//! the proxy UID. Everything (namespaces, processes, iptables rules) is removed afterwards, also
//! when a test fails: the namespaces hold all of it.
//!
//! - `world.rs`: the pods, their apps and the mesh's config;
//! - `protocols.rs`: what the proxies carry, and how they tell (HTTP/1.1, HTTP/2, WebSocket, gRPC,
//!   TCP, servers that speak first, detection timing out);
//! - `destinations.rs`: where connections go (cluster IPs, pod IPs, passthrough, plaintext from
//!   outside the mesh under strict and permissive, no control plane);
//! - `rules.rs`: `init` twice, `--uninstall`, skipped ports and CIDRs.

#![allow(clippy::unwrap_used)]

mod destinations;
mod protocols;
mod rules;
mod world;
