//! A file written under a temporary name beside its destination and renamed into place
//! when complete, so readers never see half a model and racing writers do not collide.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub struct PartialFile {
    temp: PathBuf,
    dest: PathBuf,
    file: File,
    done: bool,
}

impl PartialFile {
    /// A new, empty temporary file in `dest`'s directory (normal permissions, unlike
    /// typical temp files, since it becomes the model).
    pub fn create(dest: &Path) -> io::Result<Self> {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dest
            .file_name()
            .unwrap_or(dest.as_os_str())
            .to_string_lossy();
        let mut attempt = 0u32;
        loop {
            let temp = dir.join(format!(".{name}.{}-{attempt}.partial", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(PartialFile {
                        temp,
                        dest: dest.to_owned(),
                        file,
                        done: false,
                    });
                }
                // Another thread of this process is writing the same model.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes to disk and renames over the destination.
    pub fn persist(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.temp, &self.dest)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: an error while cleaning up must not hide the original one.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_a_persisted_file_appears_at_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let mut a = PartialFile::create(&dest).unwrap();
        let b = PartialFile::create(&dest).unwrap();
        a.file().write_all(b"done").unwrap();
        assert_eq!(names(dir.path()).len(), 2, "two distinct temporary files");
        assert!(!dest.exists());
        drop(b);
        a.persist().unwrap();
        assert_eq!(names(dir.path()), ["m.gguf"]);
        assert_eq!(fs::read(&dest).unwrap(), b"done");
    }
}
