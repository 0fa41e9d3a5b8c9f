//! Writing files that hold secrets: created 0600, replaced atomically.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `data` to `path` with mode 0600 via a temporary file and rename, so a
/// crash never leaves a half-written key or token behind. The file is synced
/// before the rename and the directory after it, so once this returns the new
/// content survives a power loss too.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // `<name>.<pid>.tmp`, not `with_extension`: node.key and node.crt must
    // not share one, nor two processes writing the same file at once.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Creates a directory (and parents) readable only by its owner.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Gives `files` in `dir` to the directory's owner when they are someone
/// else's. Root running `postern-bastion init` or `audit verify` on a data
/// directory the service user owns would otherwise leave a database (or its
/// WAL files) the service cannot write. Only root can; others change nothing.
pub fn match_dir_owner(dir: &Path, files: &[&str]) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let d = std::fs::metadata(dir)?;
    for name in files {
        let path = dir.join(name);
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.file_type().is_file() && (m.uid() != d.uid() || m.gid() != d.gid()) {
            std::os::unix::fs::chown(&path, Some(d.uid()), Some(d.gid()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Root's `init` in a directory the service user owns leaves the
    /// database to that user. Needs root (the suite runs as root in CI).
    #[test]
    fn store_files_go_to_the_data_directory_owner() {
        let dir = tempfile::tempdir().unwrap();
        // nobody, as the service user would be.
        if let Err(e) = std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)) {
            eprintln!("skipped: changing owners needs root ({e})");
            return;
        }
        std::fs::write(dir.path().join("postern.db"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("postern.db-wal")).unwrap();
        match_dir_owner(
            dir.path(),
            &["postern.db", "postern.db-wal", "postern.db-shm"],
        )
        .unwrap();
        let m = std::fs::metadata(dir.path().join("postern.db")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        // A link is never followed: what it points at keeps its owner.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
