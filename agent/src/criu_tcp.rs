//! The established TCP connections of a CRIU checkpoint folder, read from
//! its images with [`tern_proto::criu_image`]: `files.img` (or the
//! `inetsk.img` of dumps older than CRIU 3.3) for the sockets and one
//! `tcp-stream-<ino hex>.img` per established connection for its sequences.

use std::io::Read;
use std::path::{Path, PathBuf};

use tern_proto::criu_image::{inet_sockets, parse_tcp_stream, tcp_stream_file_name, ImageError, TcpImage};

/// A `files.img` larger than this is refused rather than read into memory
/// (one entry per open file of the container; a few KiB is usual).
pub const MAX_FILES_IMG: u64 = 64 << 20;
/// How much of a `tcp-stream` image is read: its one entry (under 100
/// bytes) comes first, the queued bytes after it are not needed.
pub const STREAM_HEAD: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CriuTcpError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: larger than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}: neither files.img nor inetsk.img is there: not a CRIU checkpoint folder", dir.display())]
    NoSocketImage { dir: PathBuf },
    #[error("{}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("{}: missing, but socket ino {ino:#x} was established ({local} -> {remote}) and dumped", path.display())]
    MissingStream { path: PathBuf, ino: u32, local: std::net::SocketAddr, remote: std::net::SocketAddr },
}

/// Every established TCP connection CRIU dumped into `dir`, in the order of
/// `files.img`; empty when the dump holds none (or was made without
/// `--tcp-established`, in which case it could not hold one).
pub fn read_dir_connections(dir: &Path) -> Result<Vec<TcpImage>, CriuTcpError> {
    let files = ["files.img", "inetsk.img"]
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.exists())
        .ok_or_else(|| CriuTcpError::NoSocketImage { dir: dir.to_path_buf() })?;
    let bytes = read_bounded(&files, MAX_FILES_IMG, true)?;
    let sockets = inet_sockets(&bytes).map_err(|source| CriuTcpError::Image { path: files.clone(), source })?;
    let mut out = Vec::new();
    for sk in sockets.iter().filter(|s| s.is_established_tcp()) {
        let path = dir.join(tcp_stream_file_name(sk.ino));
        let head = match read_bounded(&path, STREAM_HEAD, false) {
            Err(CriuTcpError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(CriuTcpError::MissingStream { path, ino: sk.ino, local: sk.local, remote: sk.remote })
            }
            other => other?,
        };
        let stream = parse_tcp_stream(&head).map_err(|source| CriuTcpError::Image { path, source })?;
        out.push(TcpImage::from_parts(sk, &stream));
    }
    Ok(out)
}

/// At most `limit` bytes of `path`; with `whole`, a longer file is an error.
fn read_bounded(path: &Path, limit: u64, whole: bool) -> Result<Vec<u8>, CriuTcpError> {
    let io = |source| CriuTcpError::Io { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    file.take(limit + u64::from(whole)).read_to_end(&mut buf).map_err(io)?;
    if whole && buf.len() as u64 > limit {
        return Err(CriuTcpError::TooLarge { path: path.to_path_buf(), limit });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/tests/fixtures/criu-tcp");

    fn copy_dump(which: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(Path::new(FIXTURES).join(which)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        dir
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn reads_a_real_dump() {
        let dir = copy_dump("server");
        let c = read_dir_connections(dir.path()).unwrap();
        let ends: Vec<_> = c.iter().map(|c| (c.ino, c.local.to_string(), c.remote.to_string(), c.inq_seq, c.outq_seq)).collect();
        assert_eq!(
            ends,
            vec![
                (0x9372, "203.0.113.1:7000".into(), "203.0.113.2:42938".into(), 1504121986, 70720931),
                (0x9702, "[2001:db8::1]:7001".into(), "[2001:db8::2]:41196".into(), 3052898237, 1010715291),
            ]
        );
    }

    #[test]
    fn a_missing_stream_and_a_folder_that_is_not_a_dump() {
        let dir = copy_dump("server");
        std::fs::remove_file(dir.path().join("tcp-stream-9702.img")).unwrap();
        let e = read_dir_connections(dir.path()).unwrap_err();
        assert!(matches!(e, CriuTcpError::MissingStream { ino: 0x9702, .. }), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(read_dir_connections(empty.path()), Err(CriuTcpError::NoSocketImage { .. })));
        std::fs::write(empty.path().join("files.img"), b"\x19\x43\x56\x54").unwrap();
        let e = read_dir_connections(empty.path()).unwrap_err();
        assert!(e.to_string().contains("files.img: files.img: truncated at byte 4"), "{e}");
    }
}
