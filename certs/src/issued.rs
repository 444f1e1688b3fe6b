//! The PKI's record of every certificate it issued (`issued.log`): revoking a name must reach
//! every certificate that name was given, not only the one its `.crt` file holds now. A
//! participant's certificate is reissued when its key was handed over and the file removed,
//! an agent's when it is issued again after a lost laptop: the earlier certificates stay valid
//! until they expire, and only this record still knows their serials.
//!
//! One line per certificate, `<name> <serial, hex> <not after, Unix seconds>`, appended and
//! synced before the certificate's files are written: a certificate on disk is always on
//! record. A last line without its newline is an append a crash cut short (its certificate
//! was never written) and is ignored.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use time::OffsetDateTime;

use crate::CertError;
use crate::pem::PUBLIC_MODE;

/// The record's file name in the PKI directory.
pub(crate) const ISSUED_LOG: &str = "issued.log";

/// One certificate this PKI issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Issued {
    /// "caf", "caf/a.martin", "broker".
    pub(crate) name: String,
    /// Its normalised serial.
    pub(crate) serial: Vec<u8>,
    /// Its end of validity, in Unix seconds.
    pub(crate) not_after: i64,
}

/// Appends `name`'s new certificate to the record and syncs it, first cutting away a last
/// line a crash cut short (its certificate was never written).
pub(crate) fn record(
    dir: &Path,
    name: &str,
    serial: &[u8],
    not_after: OffsetDateTime,
) -> Result<(), CertError> {
    let path = dir.join(ISSUED_LOG);
    let line = format!(
        "{name} {} {}\n",
        hex::encode(serial),
        not_after.unix_timestamp()
    );
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(PUBLIC_MODE)
        .open(&path)
        .map_err(|e| CertError::io("cannot open", &path, e))?;
    cut_a_torn_line(&mut file).map_err(|e| CertError::io("cannot repair", &path, e))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| CertError::io("cannot write", &path, e))
}

/// Every certificate on record (none when the PKI predates the record).
pub(crate) fn read(dir: &Path) -> Result<Vec<Issued>, CertError> {
    let path = dir.join(ISSUED_LOG);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CertError::io("cannot read", &path, e)),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .enumerate()
        .map(|(i, line)| {
            parse(line).ok_or_else(|| {
                CertError::invalid(
                    path.display().to_string(),
                    format!("line {} is not `name serial not-after`", i + 1),
                )
            })
        })
        .collect()
}

/// Truncates the file after its last newline (to nothing if it has none).
fn cut_a_torn_line(file: &mut std::fs::File) -> std::io::Result<()> {
    use std::io::Read;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let whole = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    if whole < text.len() {
        file.set_len(whole as u64)?;
    }
    Ok(())
}

fn parse(line: &str) -> Option<Issued> {
    let mut parts = line.split(' ');
    let (name, serial, not_after) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || name.is_empty() || serial.is_empty() {
        return None;
    }
    Some(Issued {
        name: name.to_owned(),
        serial: hex::decode(serial).ok()?,
        not_after: not_after.parse().ok()?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_a_cut_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        record(dir.path(), "caf", &[0x41, 0x02], at).unwrap();
        record(dir.path(), "fs/a.martin", &[0x7f], at).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(ISSUED_LOG))
            .unwrap();
        f.write_all(b"caf 41").unwrap();
        assert_eq!(
            read(dir.path()).unwrap(),
            vec![
                Issued {
                    name: "caf".into(),
                    serial: vec![0x41, 0x02],
                    not_after: 1_800_000_000
                },
                Issued {
                    name: "fs/a.martin".into(),
                    serial: vec![0x7f],
                    not_after: 1_800_000_000
                },
            ]
        );
        // The next certificate goes on a line of its own.
        record(dir.path(), "broker", &[0x0a], at).unwrap();
        let read_back = read(dir.path()).unwrap();
        assert_eq!(read_back.len(), 3, "{read_back:?}");
        assert_eq!(read_back[2].name, "broker");
        f.write_all(b"caf x\n").unwrap();
        assert!(read(dir.path()).is_err(), "a damaged line is an error");
    }
}
