//! Smoke tests on the real single-node cluster of `scripts/cluster` (real API server, admission
//! chain, controllers, scheduler, kubelet, containerd and runc, kube-proxy, CoreDNS, Jaeger):
//! the proof that the harness works, and what the Kubernetes issues build on. They run as a
//! test binary of their own, so the rest of the suite runs without the cluster; the first test
//! to need it starts it (`Cluster::get`).

#![allow(clippy::unwrap_used)]

mod jaeger;
mod tokens;
mod webhook;
mod workloads;
