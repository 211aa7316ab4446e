//! Files created for what a peer sends: a file set's files ([`super::fileset`])
//! and the checkpoint members unpacked in place
//! ([`crate::target::unpack::TarSplit`]), all through [`create_new`].

use super::CHUNK;
use std::path::Path;

/// Creates the file `path` for writing, buffered: new (never an existing
/// file), never through a link, with `mode` (less the umask). Received
/// files go through here: a name from the source can neither overwrite nor
/// escape.
pub(crate) fn create_new(path: &Path, mode: u32) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
    Ok(std::io::BufWriter::with_capacity(CHUNK, f))
}
