//! The data dir of every control plane the harness starts, in this process ([`crate::Mesh`]) or
//! as a process of its own ([`crate::ServeProcess`]), by API address: [`crate::api_call`] reads
//! the admin token there and [`crate::run_weft`] points the CLI at it, as a user on the control
//! plane's host would. Starting control planes is not this module's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;

/// The data dir of each control plane started here, by its API address.
static DATA_DIRS: Mutex<Option<HashMap<SocketAddr, PathBuf>>> = Mutex::new(None);

/// Notes that the control plane whose API is `api` keeps its data in `dir`.
pub(crate) fn remember_data_dir(api: SocketAddr, dir: PathBuf) {
    DATA_DIRS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(api, dir);
}

/// The data dir of the control plane whose API is `api`, if the harness started it.
pub fn data_dir_of(api: SocketAddr) -> Option<PathBuf> {
    DATA_DIRS.lock().unwrap().as_ref()?.get(&api).cloned()
}

/// The admin token of the control plane whose API is `api` (`DATA_DIR/admin-token`).
pub fn admin_token(api: SocketAddr) -> Option<String> {
    let dir = data_dir_of(api)?;
    weft::cli::client::read_admin_token(&dir).ok()
}
