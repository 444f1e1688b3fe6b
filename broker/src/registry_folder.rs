//! The registry on disk: its file, read within its size bound, and the folder that holds the
//! files it references (datasets, JWKS, credential files), each resolved inside that folder with
//! every symbolic link followed. The domain validates what this reads ([`Registry::parse`]).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::registry::{MAX_REGISTRY_BYTES, Referenced, Registry, RegistryError};

/// Reads, parses and validates the registry at `path`; the files it references are read from
/// its folder.
pub fn load(path: &Path) -> Result<Registry, RegistryError> {
    let at_file = |message: String| RegistryError {
        file: path.to_path_buf(),
        key: "(file)".into(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| at_file(format!("cannot read: {e}")))?;
    if meta.len() > MAX_REGISTRY_BYTES {
        return Err(at_file(format!(
            "{} bytes, more than the {MAX_REGISTRY_BYTES} allowed",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| at_file(format!("cannot read: {e}")))?;
    Registry::parse(path, &Folder::new(folder_of(path)), &bytes)
}

/// The folder of the registry file `path`, where the files it names are: `registry.toml` alone
/// has the empty path for parent, which names no folder: the current one.
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A registry's folder on disk.
#[derive(Clone, Debug)]
pub struct Folder {
    base: PathBuf,
}

impl Folder {
    /// The folder `base` (the registry file's).
    pub fn new(base: &Path) -> Folder {
        Folder {
            base: base.to_path_buf(),
        }
    }
}

impl Referenced for Folder {
    fn resolve(&self, declared: &Path) -> Result<PathBuf, String> {
        let full = self.base.join(declared);
        let resolved = match (self.base.canonicalize(), full.canonicalize()) {
            (Ok(folder), Ok(real)) if real.starts_with(&folder) => real,
            (Ok(folder), Ok(real)) => {
                return Err(format!(
                    "{} resolves to {}, outside the registry's folder {}: a symbolic link leads \
                     out of it",
                    declared.display(),
                    real.display(),
                    folder.display()
                ));
            }
            (Err(e), _) => {
                return Err(format!(
                    "the registry's folder {}: {e}",
                    self.base.display()
                ));
            }
            (_, Err(e)) => {
                return Err(format!("{} is not a readable file: {e}", full.display()));
            }
        };
        if !resolved.is_file() {
            return Err(format!("{} is not a readable file", full.display()));
        }
        Ok(resolved)
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn sha256(&self, path: &Path) -> std::io::Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
        Ok(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_named_alone_is_in_the_current_folder() {
        for (file, folder) in [
            ("registry.toml", "."),
            ("examples/registry.toml", "examples"),
            ("/etc/unefois/registry.toml", "/etc/unefois"),
            ("./registry.toml", "."),
        ] {
            assert_eq!(folder_of(Path::new(file)), Path::new(folder), "{file}");
        }
    }
}
