//! What the domain's unit tests read from the repository (the only file reads of this crate,
//! compiled for its tests alone): the sample registry and the development identity
//! provider's committed key, both under `examples/`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::idp::dev::DevKey;
use crate::registry::{Referenced, Registry};

/// The sample registry of `examples/`, for the domain's tests: its referenced files read from
/// that folder as the validation asks for them (no symbolic link there to follow).
pub(crate) fn sample_registry() -> Registry {
    struct Examples(PathBuf);
    impl Referenced for Examples {
        fn resolve(&self, declared: &Path) -> Result<PathBuf, String> {
            let path = self.0.join(declared);
            match path.is_file() {
                true => Ok(path),
                false => Err(format!("{} is not a readable file", path.display())),
            }
        }
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            std::fs::read(path)
        }
        fn sha256(&self, path: &Path) -> std::io::Result<[u8; 32]> {
            Ok(Sha256::digest(std::fs::read(path)?).into())
        }
    }
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let file = examples.join("registry.toml");
    let bytes = std::fs::read(&file).expect("examples/registry.toml");
    Registry::parse(&file, &Examples(examples), &bytes).expect("the sample registry loads")
}

/// The committed key of examples/dev-idp.
pub(crate) fn committed_dev_key() -> DevKey {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dev-idp/dev-signing-key.json");
    let bytes = std::fs::read(&path).expect("examples/dev-idp/dev-signing-key.json");
    DevKey::parse(&path, &bytes).expect("the committed development key parses")
}

/// The value of a future that needs nothing to wait for (the policy over a table of facts):
/// polled once; pending would mean a test waits on I/O, which the domain never does.
pub(crate) fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut context) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => panic!("a pure rule waited"),
    }
}
