//! The root file system changes Podman leaves out of its checkpoint
//! archive, put back in on the way to the target.
//!
//! `podman container checkpoint --export` packs the container's file system
//! changes into a `rootfs-diff.tar` member of its archive. Podman 4 decides
//! which changed files go in with `os.Stat(path)` of the path *inside the
//! container* against the *host's* root (containers/common's
//! `CRCreateRootFsDiffTar`): a file of the image that the container changed
//! goes in only if a file of the same path happens to exist on the host. A
//! changed file of an image path the host lacks (a database's data files
//! under /var/lib/postgresql/data, say) is silently dropped, and the
//! restored container sees the image's old copy: data lost, or CRIU
//! refusing a file whose size changed. New files and deletions are not
//! affected.
//!
//! [`completing`] sits between Podman's archive and the sender: it passes
//! the archive through member by member, and when `rootfs-diff.tar` goes
//! by it adds every regular file and symbolic link of the container's
//! overlay upper layer that the member lacks (read after the dump, while
//! the container is stopped), with its parent folders. Where Podman wrote
//! no `rootfs-diff.tar` at all (every change was such a file), it adds one
//! before the archive's end. Podman's restore applies the member as it is.
//!
//! ```text
//!  podman ─FIFO─▶ header, data ──────────────────────────────▶ sender
//!                 rootfs-diff.tar ─▶ spool ─▶ + missing files ─▶ sender (new size)
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tern_proto::tarwalk::{TarHeader, BLOCK};
/// The member of Podman's archive that holds the file system changes.
const MEMBER: &str = "rootfs-diff.tar";
/// Paths Podman's own diff leaves out (libpod's `containerMounts`): they
/// are mount points Podman fills in on every start.
const PODMAN_MOUNTS: [&str; 9] = ["dev", "etc/hostname", "etc/hosts", "etc/resolv.conf", "proc", "run", "run/.containerenv", "run/secrets", "sys"];
/// Trees under which nothing is a file system change.
const SKIPPED_TREES: [&str; 3] = ["proc", "sys", "dev"];
/// Pipe between the rewriter and the sender.
const PIPE: usize = 1 << 20;

/// What [`completing`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Completed {
    /// Files (and links) added, as paths inside the container.
    pub added: Vec<String>,
}

/// Podman's archive from `input`, completed, readable from the returned
/// stream; the task's result says what was added, or why the archive could
/// not be completed (then the migration must not go on: the target would
/// restore old files). `upper`: the container's overlay upper layer (None:
/// pass through unchanged). `spool`: a scratch file for the member.
pub fn completing<R>(
    input: R,
    upper: Option<PathBuf>,
    spool: PathBuf,
) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<std::io::Result<Completed>>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::io::duplex(PIPE);
    let task = tokio::spawn(async move {
        let mut input = input;
        let r = rewrite(&mut input, tx, upper, &spool).await;
        // Podman blocks on a full pipe: whatever went wrong, drain it so the
        // checkpoint command ends and the container can be brought back.
        if r.is_err() {
            let _ = tokio::io::copy(&mut input, &mut tokio::io::sink()).await;
        }
        let _ = std::fs::remove_file(&spool);
        r
    });
    (rx, task)
}

async fn rewrite<R, W>(input: &mut R, mut out: W, upper: Option<PathBuf>, spool: &Path) -> std::io::Result<Completed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(upper) = upper else {
        tokio::io::copy(input, &mut out).await?;
        out.shutdown().await?;
        return Ok(Completed::default());
    };
    let mut done = Completed::default();
    let mut seen = false;
    // A PAX or GNU header before a member renames it: that member is passed
    // through, whatever its plain name says.
    let mut renamed = false;
    loop {
        let mut header = [0u8; BLOCK];
        if !read_block(input, &mut header).await? {
            // Podman stopped short; the sender and the digest see the same
            // short archive and the target refuses it.
            break;
        }
        if header.iter().all(|&b| b == 0) {
            if !seen {
                let upper = upper.clone();
                let member = tokio::task::spawn_blocking({
                    let spool = spool.to_path_buf();
                    move || complete_member(None, &upper, &spool)
                })
                .await
                .map_err(std::io::Error::other)??;
                if !member.1.added.is_empty() {
                    emit_member(&mut out, &new_header(MEMBER, &member.0)?, &member.0).await?;
                    done = member.1;
                }
            }
            out.write_all(&header).await?;
            tokio::io::copy(input, &mut out).await?;
            break;
        }
        let parsed = TarHeader::new(header);
        let size = parsed.size().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "a member of Podman's archive has no size"))?;
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let path = parsed.path();
        let named = !renamed && parsed.is_regular() && path.strip_prefix(b"./").unwrap_or(&path) == MEMBER.as_bytes();
        if named && !seen {
            seen = true;
            let mut file = tokio::fs::File::create(spool).await?;
            let copied = tokio::io::copy(&mut (&mut *input).take(size), &mut file).await?;
            if copied != size {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{MEMBER} cut short in Podman's archive")));
            }
            file.flush().await?;
            drop(file);
            skip(input, padded - size).await?;
            let (path, upper2) = (spool.to_path_buf(), upper.clone());
            let (member, added) =
                tokio::task::spawn_blocking(move || complete_member(Some(&path), &upper2, &path)).await.map_err(std::io::Error::other)??;
            let mut h = header;
            set_size(&mut h, std::fs::metadata(&member)?.len());
            emit_member(&mut out, &h, &member).await?;
            done = added;
        } else {
            out.write_all(&header).await?;
            let copied = tokio::io::copy(&mut (&mut *input).take(padded), &mut out).await?;
            if copied != padded {
                break;
            }
        }
        renamed = parsed.is_extended();
    }
    out.shutdown().await?;
    Ok(done)
}

/// One 512-byte block; false at a clean end of the stream.
async fn read_block<R: AsyncRead + Unpin>(input: &mut R, block: &mut [u8; BLOCK]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < BLOCK {
        let n = input.read(&mut block[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(false) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        got += n;
    }
    Ok(true)
}

async fn skip<R: AsyncRead + Unpin>(input: &mut R, n: u64) -> std::io::Result<()> {
    tokio::io::copy(&mut input.take(n), &mut tokio::io::sink()).await.map(drop)
}

/// Writes `header` (its checksum recomputed), the file and its padding.
async fn emit_member<W: AsyncWrite + Unpin>(out: &mut W, header: &[u8; BLOCK], file: &Path) -> std::io::Result<()> {
    let mut h = *header;
    set_checksum(&mut h);
    out.write_all(&h).await?;
    let mut f = tokio::fs::File::open(file).await?;
    let n = tokio::io::copy(&mut f, out).await?;
    let pad = (BLOCK - (n % BLOCK as u64) as usize) % BLOCK;
    out.write_all(&[0u8; BLOCK][..pad]).await
}

/// A plain header for a new member (a regular file of `file`'s size).
fn new_header(name: &str, file: &Path) -> std::io::Result<[u8; BLOCK]> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(std::fs::metadata(file)?.len());
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mtime(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

fn set_size(h: &mut [u8; BLOCK], size: u64) {
    let text = format!("{size:011o}\0");
    if text.len() == 12 {
        h[124..136].copy_from_slice(text.as_bytes());
    } else {
        // Beyond 8 GiB: base-256.
        h[124..136].fill(0);
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Podman's member (`podman`, None where it wrote none) plus what the
/// upper layer holds that it lacks, written to a file beside `spool`.
fn complete_member(podman: Option<&Path>, upper: &Path, spool: &Path) -> std::io::Result<(PathBuf, Completed)> {
    let (have, end) = match podman {
        Some(p) => members(p)?,
        None => (HashSet::new(), 0),
    };
    let mut missing = Vec::new();
    walk(upper, upper, &have, &mut missing)?;
    let out_path = spool.with_extension("completed");
    let mut out = File::create(&out_path)?;
    if let Some(p) = podman {
        let mut f = File::open(p)?;
        std::io::copy(&mut (&mut f).take(end), &mut out)?;
    }
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut dirs_added: HashSet<PathBuf> = HashSet::new();
    let mut done = Completed::default();
    for rel in &missing {
        // Parent folders the member lacks, so the files land with their
        // folders' owners and modes.
        for parent in rel.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
            if parent.as_os_str().is_empty() || have.contains(parent) || !dirs_added.insert(parent.to_path_buf()) {
                continue;
            }
            builder.append_path_with_name(upper.join(parent), parent)?;
        }
        builder.append_path_with_name(upper.join(rel), rel)?;
        done.added.push(format!("/{}", rel.display()));
    }
    builder.into_inner()?.flush()?;
    Ok((out_path, done))
}

/// The paths Podman's member holds, and where its last member ends.
fn members(path: &Path) -> std::io::Result<(HashSet<PathBuf>, u64)> {
    let mut have = HashSet::new();
    let mut end = 0u64;
    for entry in tar::Archive::new(File::open(path)?).entries()? {
        let entry = entry?;
        let p: PathBuf = entry.path()?.components().filter(|c| matches!(c, std::path::Component::Normal(_))).collect();
        end = entry.raw_file_position() + entry.size().div_ceil(BLOCK as u64) * BLOCK as u64;
        have.insert(p);
    }
    Ok((have, end))
}

/// Regular files and symbolic links under `dir` (relative to `upper`) that
/// `have` lacks. Overlay's whiteouts (deletions), sockets, FIFOs and
/// devices are not file contents; Podman's mount points are its own.
fn walk(upper: &Path, dir: &Path, have: &HashSet<PathBuf>, missing: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(upper).map_err(std::io::Error::other)?.to_path_buf();
        let rel_text = rel.to_string_lossy();
        if PODMAN_MOUNTS.contains(&rel_text.as_ref()) && !e.file_type()?.is_dir() {
            continue;
        }
        if SKIPPED_TREES.iter().any(|t| rel_text == *t) {
            continue;
        }
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(upper, &path, have, missing)?;
        } else if (ft.is_file() || ft.is_symlink()) && !have.contains(&rel) {
            missing.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive shaped like Podman's: a few members, rootfs-diff.tar
    /// among them (holding `inner`), then the end.
    fn podman_archive(inner: Option<&[(&str, &[u8])]>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add(&mut b, "config.dump", b"{}");
        add(&mut b, "checkpoint/pages-1.img", &[7u8; 5000]);
        if let Some(files) = inner {
            let mut ib = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_ustar();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                ib.append_data(&mut h, name, *data).unwrap();
            }
            add(&mut b, MEMBER, &ib.into_inner().unwrap());
        }
        add(&mut b, "spec.dump", b"{\"x\":1}");
        b.into_inner().unwrap()
    }

    fn upper_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, data) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        d
    }

    async fn run(archive: Vec<u8>, upper: Option<PathBuf>) -> (Vec<u8>, Completed) {
        let spool = tempfile::tempdir().unwrap();
        let (mut rx, task) = completing(std::io::Cursor::new(archive), upper, spool.path().join("rootfs.spool"));
        let mut out = Vec::new();
        rx.read_to_end(&mut out).await.unwrap();
        (out, task.await.unwrap().unwrap())
    }

    type Members = Vec<(String, Vec<u8>)>;

    /// name -> bytes of every member, and of rootfs-diff.tar's members.
    fn read(archive: &[u8]) -> (Members, Members) {
        let mut outer = Vec::new();
        let mut inner = Vec::new();
        for e in tar::Archive::new(archive).entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if name == MEMBER {
                for ie in tar::Archive::new(data.as_slice()).entries().unwrap() {
                    let mut ie = ie.unwrap();
                    let mut d = Vec::new();
                    ie.read_to_end(&mut d).unwrap();
                    inner.push((ie.path().unwrap().display().to_string(), d));
                }
            }
            outer.push((name, data));
        }
        (outer, inner)
    }

    #[tokio::test]
    async fn changed_files_podman_left_out_are_added_to_its_member() {
        // Podman packed the new file only; the changed one of the image is
        // in the upper layer too.
        let archive = podman_archive(Some(&[("srv/new", b"new")]));
        let upper = upper_with(&[("srv/new", b"new"), ("srv/data/changed", b"v1v2"), ("etc/hosts", b"mount point")]);
        let (out, done) = run(archive.clone(), Some(upper.path().to_path_buf())).await;
        assert_eq!(done.added, ["/srv/data/changed"]);
        let (outer, inner) = read(&out);
        let names: Vec<_> = outer.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["config.dump", "checkpoint/pages-1.img", MEMBER, "spec.dump"]);
        let inner_names: Vec<_> = inner.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(inner_names, ["srv/new", "srv", "srv/data", "srv/data/changed"]);
        assert_eq!(inner[3].1, b"v1v2");
        // Everything else crossed byte for byte.
        let (before, _) = read(&archive);
        assert_eq!(outer[1], before[1]);
        assert_eq!(outer[3], before[3]);
    }

    #[tokio::test]
    async fn a_member_is_added_where_podman_wrote_none() {
        let archive = podman_archive(None);
        let upper = upper_with(&[("var/lib/db/base", b"rows")]);
        let (out, done) = run(archive, Some(upper.path().to_path_buf())).await;
        assert_eq!(done.added, ["/var/lib/db/base"]);
        let (outer, inner) = read(&out);
        assert_eq!(outer.last().unwrap().0, MEMBER);
        assert_eq!(inner.last().unwrap(), &("var/lib/db/base".to_string(), b"rows".to_vec()));
    }

    #[tokio::test]
    async fn a_complete_archive_or_no_upper_layer_crosses_unchanged() {
        let archive = podman_archive(Some(&[("srv/new", b"new")]));
        let upper = upper_with(&[("srv/new", b"new")]);
        let (out, done) = run(archive.clone(), Some(upper.path().to_path_buf())).await;
        assert!(done.added.is_empty());
        assert_eq!(read(&out), read(&archive));
        let (out, _) = run(archive.clone(), None).await;
        assert_eq!(out, archive);
    }

    #[test]
    fn size_fields_read_and_write_both_encodings() {
        let mut h = [0u8; BLOCK];
        for size in [0u64, 1, 511, 8 << 30, (8 << 30) + 3] {
            set_size(&mut h, size);
            assert_eq!(TarHeader::new(h).size(), Some(size));
        }
    }
}
