//! The end-to-end harness: real control planes, real proxies and real upstream apps on loopback,
//! every listener on port 0, every file in a fresh temp folder that is removed afterwards.
//!
//! A test builds its mesh in two steps because standalone Service endpoints are proxy
//! addresses: [`Sidecar::builder`] binds a proxy's listeners first, the test writes config naming
//! those addresses, then [`Mesh::builder`] starts the control plane and [`Sidecar::start`] the
//! proxies.
//!
//! From the bottom up:
//!
//! | module | owns |
//! |---|---|
//! | [`apps`] | upstream apps: HTTP, gRPC, TCP echo, one that fails on command |
//! | [`temp_dir`] | a temp folder removed on drop |
//! | [`eventually`](mod@eventually) | waiting for a condition instead of sleeping |
//! | [`data_dirs`] | the data dir (and admin token) of every control plane started here |
//! | [`mesh`] | a control plane in this process ([`Mesh`]), and how a proxy joins it ([`Access`]) |
//! | [`sidecar`] | a proxy in this process ([`Sidecar`]) |
//! | [`pair`](mod@pair) | the most common mesh: one caller, one callee, each behind its sidecar |
//! | [`client`] | HTTP clients as apps use them, one request read whole, the admin API |
//! | [`load`] | callers sending back to back until stopped ([`Load`]) |
//! | [`process`] | the built binaries as processes: `weft serve` ([`ServeProcess`]), the CLI |
//! | [`netns`] | network namespaces of a test's own ([`Netns`]), removed on drop |
//! | [`pods`] | a node namespace with a bridge and pods on it ([`Node`], [`Pod`]), each with its own `weft-proxy` under the proxy's UID, for transparent interception |
//! | [`cluster`] | the real Kubernetes cluster of `scripts/cluster` ([`Cluster`]), a namespace per test ([`TestNamespace`]) |
//!
//! Every item is re-exported here, so a suite needs only `use weft_tests::*;`.

#![allow(clippy::unwrap_used)] // test harness: a failed setup should panic loudly

pub mod apps;
pub mod client;
pub mod cluster;
pub mod data_dirs;
pub mod eventually;
pub mod load;
pub mod mesh;
pub mod netns;
pub mod pair;
pub mod pods;
pub mod process;
pub mod sidecar;
pub mod temp_dir;

pub mod grpc {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weft.test.v1");
}

pub use client::{
    api_call, api_call_as, create_token, get, http1_client, http2_client, metric, send, send_body,
    websocket_echoes, HttpClient, Reply,
};
pub use cluster::{Cluster, TestNamespace, TEST_APP_IMAGE, WEFT_IMAGE};
pub use data_dirs::{admin_token, data_dir_of};
pub use eventually::eventually;
pub use load::Load;
pub use mesh::{csr, init_logging, service_yaml, Access, Mesh, MeshBuilder};
pub use netns::Netns;
pub use pair::pair;
pub use pods::{ControlPlane, Node, Pod, PROXY_UID};
pub use process::{binary, run_weft, ServeProcess, ServeProcessBuilder};
pub use sidecar::{Sidecar, SidecarBuilder, Upstream, NO_APP};
pub use temp_dir::TempDir;
