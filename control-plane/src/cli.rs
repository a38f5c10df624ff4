//! The operator CLI's side of weft: talking to a control plane's API (`client`) and the
//! commands that do (`get`, `apply`, `admin_cert`). The server itself is the rest of the crate;
//! this module only calls it over HTTP.

pub mod admin_cert;
pub mod apply;
pub mod client;
pub mod get;
