//! File sets ([`tern_proto::fileset`]): the regular files of one folder
//! (a pre-copy round's CRIU images) on one stream, sent and received.

use super::fs::create_new;
use super::stream::{close, digest, open, pump, write_paced, StreamLimits};
use super::{Pace, SendError, StoreError, TransferError, CHUNK};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tern_proto::fileset::{FileEntry, FileEvent, FileSetDecoder, FileSetLimits};
use tern_proto::frame;
use tern_proto::{DataHeader, Digest};
use tokio::io::AsyncReadExt;

/// Sends the regular files `names` of `dir` as a file set
/// ([`tern_proto::fileset`]), as fast as `pace` lets it.
pub async fn send_fileset(
    conn: &quinn::Connection,
    header: &DataHeader,
    dir: &Path,
    names: &[String],
    done: &AtomicU64,
    pace: &Pace<'_>,
) -> Result<Digest, TransferError> {
    let mut stream = open(conn, header).await?;
    let stall = super::send_stall();
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; CHUNK];
    for name in names {
        let mut file = tokio::fs::File::open(dir.join(name)).await.map_err(TransferError::Read)?;
        let len = file.metadata().await.map_err(TransferError::Read)?.len();
        let entry = frame::encode(&FileEntry::File { name: name.clone(), len }).map_err(SendError::from)?;
        hasher.update(&entry);
        write_paced(&mut stream, &entry, stall, pace).await?;
        let mut left = len;
        while left > 0 {
            let want = (left.min(CHUNK as u64)) as usize;
            let n = file.read(&mut buf[..want]).await.map_err(TransferError::Read)?;
            if n == 0 {
                return Err(TransferError::Read(std::io::Error::other(format!("{name} shrank while it was sent"))));
            }
            hasher.update(&buf[..n]);
            write_paced(&mut stream, &buf[..n], stall, pace).await?;
            left -= n as u64;
            total += n as u64;
            done.store(total, Ordering::Relaxed);
        }
    }
    let end = frame::encode(&FileEntry::End).map_err(SendError::from)?;
    hasher.update(&end);
    write_paced(&mut stream, &end, stall, pace).await?;
    close(Ok(stream)).await?;
    Ok(Digest { bytes: total, blake3: *hasher.finalize().as_bytes() })
}

/// Receives a file set ([`tern_proto::fileset`]) into the folder `dir`
/// (created); returns the digest of the stream (what the source hashed as
/// it sent) and the file names in order. `limits` bound the stream
/// ([`StreamLimits`]: its files' bytes too).
pub async fn receive_fileset(
    recv: quinn::RecvStream,
    dir: &Path,
    done: Arc<AtomicU64>,
    limits: StreamLimits,
) -> Result<(Digest, Vec<String>), TransferError> {
    std::fs::create_dir_all(dir).map_err(TransferError::Write)?;
    let dir = dir.to_path_buf();
    pump(recv, limits, move |next| {
        let mut sink = FileSink { dir, file: None };
        let mut hasher = blake3::Hasher::new();
        let mut decoder = FileSetDecoder::with_limits(FileSetLimits::expecting(limits.max_bytes));
        let (mut total, mut names) = (0u64, Vec::new());
        let mut failed = None;
        while let Some(chunk) = next() {
            hasher.update(&chunk);
            let fed = decoder.feed(&chunk, &mut |e| {
                match e {
                    FileEvent::Start { name, .. } => {
                        names.push(name.to_string());
                        sink.start(name)
                    }
                    FileEvent::Data(b) => {
                        total += b.len() as u64;
                        done.store(total, Ordering::Relaxed);
                        sink.data(b)
                    }
                    FileEvent::EndFile => sink.end_file(),
                }
                .map_err(|e| StoreError::keep(&mut failed, e))
            });
            fed.map_err(|e| failed.take().unwrap_or(StoreError::Files(e)))?;
        }
        decoder.finish().map_err(StoreError::Files)?;
        sink.end_file()?;
        Ok((digest(&hasher, total), names))
    })
    .await
}

/// Writes a file set's files into a folder as they arrive. Names were
/// checked by the decoder (single path components); files are created new,
/// never through a link.
struct FileSink {
    dir: std::path::PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl FileSink {
    fn start(&mut self, name: &str) -> std::io::Result<()> {
        self.end_file()?;
        self.file = Some(create_new(&self.dir.join(name), 0o666)?);
        Ok(())
    }

    fn data(&mut self, b: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(b),
            None => Err(std::io::Error::other("file data before its entry")),
        }
    }

    fn end_file(&mut self) -> std::io::Result<()> {
        match self.file.take() {
            Some(f) => f.into_inner().map_err(|e| e.into_error()).map(drop),
            None => Ok(()),
        }
    }
}
