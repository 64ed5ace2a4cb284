//! The demo model used when no `-m` is given: a tiny random model generated into the
//! user's cache on first use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{DummyError, DummySpec, ModelSize, generate};
use crate::model::Model;

pub const DEMO_FILE_NAME: &str = "demo-tiny-i2_s.gguf";

/// `$XDG_CACHE_HOME/bitnetd` when set to an absolute path (the XDG spec ignores relative
/// ones), else `$HOME/.cache/bitnetd`.
fn cache_dir(xdg: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let xdg = xdg.map(PathBuf::from).filter(|p| p.is_absolute());
    let root = xdg.or_else(|| {
        home.filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    })?;
    Some(root.join("bitnetd"))
}

/// bitnetd's cache directory for this user (see `cache_dir`), if there is a home.
pub fn user_cache_dir() -> Option<PathBuf> {
    cache_dir(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// The demo model's path, generating it (tiny, seed 1, built-in tokenizer) on first use.
pub fn demo_model_path() -> Result<PathBuf, DummyError> {
    let dir = user_cache_dir().ok_or(DummyError::NoCacheDir)?;
    demo_model_in(&dir)
}

/// The demo model in `dir`: reused when it exists and loads, (re)generated otherwise.
/// Concurrent callers each write a temporary file and rename it into place; the files
/// are identical, so whichever rename wins leaves a valid model.
pub fn demo_model_in(dir: &Path) -> Result<PathBuf, DummyError> {
    let path = dir.join(DEMO_FILE_NAME);
    log::warn!(
        "no model given: using the built-in demo model {}. Its weights are random, so its output is \
         gibberish. For real text, download microsoft/BitNet-b1.58-2B-4T-gguf \
         (ggml-model-i2_s.gguf) and pass it with -m.",
        path.display()
    );
    if path.exists() {
        match Model::load(&path) {
            Ok(_) => return Ok(path),
            Err(e) => log::warn!("{}: {e}; generating it again", path.display()),
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| DummyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    generate(&DummySpec::new(ModelSize::Tiny), &path)?;
    Model::load(&path).map_err(|source| DummyError::Invalid {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_xdg_then_home() {
        let some = |s: &str| Some(OsString::from(s));
        assert_eq!(
            cache_dir(some("/x/cache"), some("/home/u")),
            Some(PathBuf::from("/x/cache/bitnetd"))
        );
        assert_eq!(
            cache_dir(some("relative"), some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/bitnetd"))
        );
        assert_eq!(
            cache_dir(None, some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/bitnetd"))
        );
        assert_eq!(cache_dir(some(""), some("")), None);
        assert_eq!(cache_dir(None, None), None);
    }
}
