// SPDX-License-Identifier: GPL-2.0

//! `--textfile`: the exposition as a file in node_exporter's textfile directory, which the
//! collector reads whenever node_exporter is scraped.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Replaces `path` with `contents` whole: they are written to a temporary file in the same
/// directory, which is then renamed over `path`, so that a reader sees the old contents or the
/// new ones, never part of either. The temporary file's name starts with a dot and does not
/// end in `.prom`, so node_exporter never reads it.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let temporary = temporary_path(path)?;
    let written = File::create(&temporary).and_then(|mut file| {
        // node_exporter runs as a user of its own: readable by all, whatever the umask.
        file.set_permissions(Permissions::from_mode(0o644))?;
        file.write_all(contents)
    });
    let replaced = written.and_then(|()| fs::rename(&temporary, path));
    if replaced.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    replaced
}

/// `.<name>.<pid>.tmp` next to `path`: one per process, so that two writers never share one.
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(temporary))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for a test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "kvm-shadow-top-textfile-{}-{test}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir creatable");
            Self(dir)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("readable")
                .map(|entry| {
                    entry
                        .expect("an entry")
                        .file_name()
                        .to_string_lossy()
                        .into()
                })
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_nothing_else() {
        let dir = TempDir::new("replace");
        let path = dir.0.join("kvm_shadow_mmu.prom");
        replace(&path, b"first 1\n").expect("written");
        replace(&path, b"second 2\n").expect("replaced");
        assert_eq!(fs::read(&path).expect("readable"), b"second 2\n");
        assert_eq!(dir.names(), ["kvm_shadow_mmu.prom"]);
        let mode = fs::metadata(&path).expect("there").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn the_file_is_replaced_not_rewritten() {
        let dir = TempDir::new("rename");
        let path = dir.0.join("kvm_shadow_mmu.prom");
        replace(&path, b"old 1\n").expect("written");
        // A reader that opened the old file keeps reading the old contents.
        let mut reader = File::open(&path).expect("readable");
        replace(&path, b"new 2\n").expect("replaced");
        let mut old = String::new();
        io::Read::read_to_string(&mut reader, &mut old).expect("readable");
        assert_eq!(old, "old 1\n");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = TempDir::new("fail");
        // A directory in the way of the rename.
        let path = dir.0.join("kvm_shadow_mmu.prom");
        fs::create_dir(&path).expect("creatable");
        fs::write(path.join("inside"), "x").expect("writable");
        assert!(replace(&path, b"x 1\n").is_err());
        assert_eq!(dir.names(), ["kvm_shadow_mmu.prom"]);
        let missing = dir.0.join("no-such-dir/kvm_shadow_mmu.prom");
        assert_eq!(
            replace(&missing, b"x 1\n").map_err(|error| error.kind()),
            Err(io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn the_temporary_file_is_hidden_from_node_exporter() {
        let temporary = temporary_path(Path::new("/d/kvm.prom")).expect("a name");
        let name = temporary.file_name().expect("a name").to_string_lossy();
        assert_eq!(temporary.parent(), Some(Path::new("/d")));
        assert!(
            name.starts_with(".kvm.prom.") && !name.ends_with(".prom"),
            "{name}"
        );
    }
}
