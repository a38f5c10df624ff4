//! Files written whole or not at all, with exactly the mode asked for: the control plane's keys,
//! certificates and token store.
//!
//! The data goes to a new temporary file beside the target — created exclusively (`O_EXCL`) under
//! a random name, so that no leftover file, and no file planted by someone else, is reused with
//! its own mode — then is synced and renamed over the target. Folders for such files are created
//! for their owner only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Writes `data` to `path` atomically, the file's mode `mode` (less the umask, which can only
/// narrow it).
pub fn write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp); // best effort: the error that matters is the first one
    }
    result
}

/// Creates `dir` (and its parents) if missing, each folder created here with mode `mode` from
/// the start; a folder that exists keeps its mode (the operator's choice).
pub fn create_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// `.NAME.RANDOM.tmp` beside `path`: hidden (the config watcher skips dot files) and unique.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_replace_whole_files_and_leave_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("weft-atomic-{:x}", rand::random::<u64>()));
        create_dir(&dir, 0o700).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let path = dir.join("key.pem");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
