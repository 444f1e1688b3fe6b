//! Reading PEM files for rustls, and writing the PKI's files safely.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::CertError;

/// File mode of private keys.
pub(crate) const KEY_MODE: u32 = 0o600;
/// File mode of certificates and CRLs.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Every certificate of a PEM file, in order (leaf first for a chain); an error if there is none.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(path, source))?;
    if certs.is_empty() {
        return Err(CertError::Empty {
            what: "certificate",
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => CertError::Empty {
            what: "private key",
            path: path.to_owned(),
        },
        source => pem_error(path, source),
    })
}

/// Every CRL of a PEM file; an error if there is none.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, CertError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(path, source))?;
    if crls.is_empty() {
        return Err(CertError::Empty {
            what: "CRL",
            path: path.to_owned(),
        });
    }
    Ok(crls)
}

fn pem_error(path: &Path, source: rustls_pki_types::pem::Error) -> CertError {
    match source {
        rustls_pki_types::pem::Error::Io(e) => CertError::io("cannot read", path, e),
        source => CertError::Pem {
            path: path.to_owned(),
            source,
        },
    }
}

/// Distinguishes the temporary files of concurrent writers within this process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `contents` to `path` atomically: a temporary file in the same directory, created with
/// `mode` (so a key is never readable by others, even briefly), synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| CertError::invalid(path.display().to_string(), "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A file of that name can only be left over by a crashed process that had our pid: stale.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(CertError::io("cannot write", path, e));
    }
    // Make the rename durable; a failure here does not lose the new contents already written.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a whole text file, naming it in the error.
pub(crate) fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|e| CertError::io("cannot read", path, e))
}

/// Creates a directory and its parents, naming it in the error.
pub(crate) fn create_dir_all(path: &Path) -> Result<(), CertError> {
    fs::create_dir_all(path).map_err(|e| CertError::io("cannot create directory", path, e))
}
