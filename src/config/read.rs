//! Reading the files a config names (the config itself, `token_file`, `ca_file`) without ever
//! blocking on something that is not a file: a FIFO, a device or a directory is refused with a
//! clear error (opening a FIFO for reading waits for a writer forever), and a size cap bounds
//! the memory and the parse time a reload can cost.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest config file accepted. A pool of 20,000 backends written in the long form
/// (`{ address = "10.0.0.13:443", weight = 2 },`, ~45 bytes each) is under 1 MiB, so 4 MiB fits
/// the largest real deployment several times over, while a runaway (generated, concatenated)
/// file is refused before it costs seconds of parsing.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
/// Largest `ca_file`: a full system bundle is ~250 KiB.
pub const MAX_CA_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest `token_file`: a token is one line.
pub const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Why a file named by the config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    /// Opening, inspecting or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The path is not a regular file (reading it could block forever or never end).
    #[error("it is a {kind}, not a regular file")]
    NotRegular {
        /// What it is instead (`FIFO`, `directory`, ...).
        kind: &'static str,
    },
    /// The file is larger than the limit for its kind.
    #[error("it is larger than the limit of {limit} bytes ({size} bytes)")]
    TooLarge {
        /// Its size (or how much was read before giving up).
        size: u64,
        /// The limit.
        limit: u64,
    },
}

/// Reads the regular file at `path` (symlinks followed), at most `limit` bytes.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadFileError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; on a regular
    // file the flag changes nothing. O_NOCTTY: a terminal device never becomes ours.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // fstat on the opened descriptor, so what is checked is what is read.
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_block_device() {
            "block device"
        } else {
            "special file"
        };
        return Err(ReadFileError::NotRegular { kind });
    }
    if meta.len() > limit {
        return Err(ReadFileError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow between fstat and read: read one byte past the limit to notice.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > limit {
        return Err(ReadFileError::TooLarge { size, limit });
    }
    Ok(bytes)
}

/// [`read_regular_file`] as UTF-8 text.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, ReadFileError> {
    let bytes = read_regular_file(path, limit)?;
    String::from_utf8(bytes)
        .map_err(|e| ReadFileError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without a writer, a blocking open would hang here: the test finishing is the proof.
        assert!(matches!(
            read_regular_file(&fifo, 10),
            Err(ReadFileError::NotRegular { kind: "FIFO" })
        ));
        assert!(matches!(
            read_regular_file(dir.path(), 10),
            Err(ReadFileError::NotRegular { kind: "directory" })
        ));
        assert!(matches!(
            read_regular_file(Path::new("/dev/zero"), 10),
            Err(ReadFileError::NotRegular {
                kind: "character device"
            })
        ));
    }

    #[test]
    fn caps_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular_file(&path, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular_file(&path, 9),
            Err(ReadFileError::TooLarge { size: 10, limit: 9 })
        ));
        assert!(matches!(
            read_regular_file(&dir.path().join("missing"), 9),
            Err(ReadFileError::Io(_))
        ));
    }
}
