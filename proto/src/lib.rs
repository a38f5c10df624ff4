//! The control-plane protocol between `weft` and `weft-proxy`, generated from `weft/**/*.proto`.
//!
//! This crate owns only the wire types. Conversion into domain types, and every check on them,
//! happens at the boundary in each consumer (`weft_proxy::discovery` for the proxy side).

pub mod discovery {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weft.discovery.v1");
}

pub mod identity {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("weft.identity.v1");
}
