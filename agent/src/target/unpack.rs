//! Unpacking a checkpoint archive as it arrives, straight into place.
//!
//! Podman's export archive holds the container's CRIU images under
//! `checkpoint/` (hundreds of MiB of memory, for a large container) and a
//! few small files beside them (`config.dump`, `spec.dump`,
//! `network.status`, `rootfs-diff.tar`, ...). `podman container restore
//! --import` would read the whole archive twice and write every byte again
//! into the container's folder during the downtime. [`TarSplit`] instead
//! writes each `checkpoint/` member into the folder the restore reads it
//! from, as its bytes arrive, and passes everything else, byte for byte,
//! into a small archive that Podman imports:
//!
//! ```text
//!  stream ─▶ checkpoint/pages-1.img ─▶ <bundle>/checkpoint/pages-1.img   (in place)
//!         ─▶ checkpoint/parent (link)─▶ <bundle>/checkpoint/parent        (in place)
//!         ─▶ config.dump, spec.dump, ─▶ rest.tar ─▶ podman restore --import rest.tar
//!            rootfs-diff.tar, ...
//! ```
//!
//! With [`TarSplit::annotating`], `spec.dump` is rewritten on its way to the
//! small archive so that runc reads the container's CRIU options from its
//! own folder (`lazy.rs`): the digest of the stream still covers the bytes
//! as they arrived.
//!
//! Only plain members are placed: a regular file or symbolic link whose
//! path is `checkpoint/<name>`, `<name>` a single path component, with no
//! extended (PAX or GNU long name) header before it. Anything else goes to
//! the small archive, where Podman unpacks it with its own checks, so an
//! unusual archive costs speed, never correctness. Files are created with
//! `O_EXCL | O_NOFOLLOW`: a member can never write through a link an
//! earlier member made.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tern_proto::tarwalk::{Step, TarHeader, TarWalker, BLOCK};

/// Buffer of each file written in place: CRIU's page images are large.
const WRITE_BUF: usize = 1 << 20;

/// What was written where, for the logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SplitStats {
    /// Members written into the checkpoint folder, and their bytes.
    pub placed_files: u32,
    pub placed_bytes: u64,
    /// Members passed to the small archive, and its size.
    pub rest_members: u32,
    pub rest_bytes: u64,
    /// `spec.dump` now names the container's own CRIU options file.
    pub annotated: bool,
}

/// The largest `spec.dump` rewritten (they are a few tens of KiB).
const MAX_SPEC: u64 = 16 << 20;

enum Sink {
    /// Into the small archive, as it came.
    Rest,
    /// Into a file of the checkpoint folder.
    File(BufWriter<File>),
    /// Dropped (the data of a member that needs none, such as a directory).
    Skip,
    /// Held whole (`spec.dump`, to annotate), with its header.
    Hold(Vec<u8>, Vec<u8>),
}

/// A tar stream, unpacked as it arrives (module docs). The tar framing is
/// the shared walker's ([`TarWalker`]); what goes where is decided here.
pub struct TarSplit {
    dir: PathBuf,
    rest: BufWriter<File>,
    walker: TarWalker,
    /// Where the current member's data goes.
    sink: Sink,
    /// The current member's padding goes to the small archive (its header
    /// and data went there as they came).
    pad_to_rest: bool,
    /// Point `spec.dump` at this CRIU options file (and add the annotation
    /// when it has none, with `true`).
    annotate: Option<(PathBuf, bool)>,
    pub stats: SplitStats,
}

/// Where a member goes.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Rest,
    PlaceFile {
        name: String,
        mode: u32,
    },
    PlaceLink {
        name: String,
        target: PathBuf,
    },
    /// The `checkpoint/` directory entry itself: the folder exists.
    SkipDir,
}

/// The name under `checkpoint/` when `path` is `checkpoint/<one component>`.
fn placed_name(path: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(path.strip_prefix(b"checkpoint/")?).ok()?;
    tern_proto::fileset::check_name(name).ok()?;
    Some(name.to_string())
}

/// `extended`: the header is, or follows, an extended (PAX or GNU long
/// name) header, whose name would override the one seen here.
fn route(header: &TarHeader, extended: bool) -> Route {
    let path = header.path();
    if extended {
        return Route::Rest;
    }
    if header.is_dir() && (&*path == b"checkpoint/" || &*path == b"checkpoint") {
        return Route::SkipDir;
    }
    let Some(name) = placed_name(&path) else { return Route::Rest };
    if header.is_regular() {
        let mode = header.mode().unwrap_or(0o644) & 0o777;
        return Route::PlaceFile { name, mode };
    }
    if header.is_symlink() {
        if let Some(target) = header.link_name() {
            return Route::PlaceLink { name, target: PathBuf::from(std::ffi::OsStr::from_bytes(target)) };
        }
    }
    Route::Rest
}

impl TarSplit {
    /// Unpacks into `dir` (which must exist) and the small archive `rest`
    /// (created).
    pub fn new(dir: &Path, rest: &Path) -> std::io::Result<TarSplit> {
        let rest = BufWriter::with_capacity(WRITE_BUF, File::create(rest)?);
        Ok(TarSplit {
            dir: dir.to_path_buf(),
            rest,
            walker: TarWalker::default(),
            sink: Sink::Skip,
            pad_to_rest: false,
            annotate: None,
            stats: SplitStats::default(),
        })
    }

    /// Rewrites `spec.dump` so that runc reads CRIU's options from `conf`
    /// ([`super::lazy::annotate`]; `add`: also when it names no file).
    pub fn annotating(mut self, conf: PathBuf, add: bool) -> Self {
        self.annotate = Some((conf, add));
        self
    }

    /// A held `spec.dump` is complete: into the small archive, annotated
    /// when it can be.
    fn release_held(&mut self, header: Vec<u8>, data: Vec<u8>) -> std::io::Result<()> {
        let annotated = self.annotate.as_ref().and_then(|(conf, add)| super::lazy::annotate(&data, conf, *add));
        let (mut header, data) = match annotated {
            Some(new) => {
                self.stats.annotated = true;
                // The tar crate writes the new size and checksum (reading
                // headers is the walker's; this is the one header written).
                let mut h = tar::Header::from_byte_slice(&header).clone();
                h.set_size(new.len() as u64);
                h.set_cksum();
                (h.as_bytes().to_vec(), new)
            }
            None => (header, data),
        };
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        header.extend_from_slice(&data);
        header.extend(std::iter::repeat_n(0u8, pad));
        self.stats.rest_members += 1;
        self.write_rest(&header)
    }

    fn write_rest(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stats.rest_bytes += bytes.len() as u64;
        self.rest.write_all(bytes)
    }

    fn open_placed(&self, name: &str, mode: u32) -> std::io::Result<BufWriter<File>> {
        crate::transfer::create_new(&self.dir.join(name), mode.max(0o400))
    }

    /// A member's header: where its data goes.
    fn header(&mut self, header: TarHeader, size: u64, follows_extended: bool) -> std::io::Result<()> {
        let extended = follows_extended || header.is_extended();
        let hold = self.annotate.is_some() && !extended && header.is_regular() && &*header.path() == b"spec.dump" && size <= MAX_SPEC;
        self.sink = match route(&header, extended) {
            Route::Rest if hold => Sink::Hold(header.as_bytes().to_vec(), Vec::with_capacity(size as usize)),
            Route::Rest => {
                self.stats.rest_members += 1;
                self.write_rest(header.as_bytes())?;
                Sink::Rest
            }
            Route::PlaceFile { name, mode } => {
                self.stats.placed_files += 1;
                Sink::File(self.open_placed(&name, mode)?)
            }
            Route::PlaceLink { name, target } => {
                std::os::unix::fs::symlink(&target, self.dir.join(&name))?;
                self.stats.placed_files += 1;
                Sink::Skip
            }
            Route::SkipDir => Sink::Skip,
        };
        if size == 0 {
            self.end_of_data()?;
        }
        Ok(())
    }

    /// The current member's data is complete: its file closed, or the held
    /// `spec.dump` released.
    fn end_of_data(&mut self) -> std::io::Result<()> {
        let sink = std::mem::replace(&mut self.sink, Sink::Skip);
        self.pad_to_rest = matches!(sink, Sink::Rest);
        match sink {
            Sink::File(mut f) => f.flush(),
            Sink::Hold(header, data) => self.release_held(header, data),
            Sink::Rest | Sink::Skip => Ok(()),
        }
    }

    /// Everything still to come ends with [`TarSplit::finish`].
    pub fn finish(mut self) -> std::io::Result<SplitStats> {
        if !self.walker.at_boundary() {
            return Err(std::io::Error::other("the archive ended in the middle of a member"));
        }
        self.rest.write_all(&[0u8; 2 * BLOCK])?;
        self.stats.rest_bytes += 2 * BLOCK as u64;
        self.rest.flush()?;
        Ok(self.stats)
    }
}

impl Write for TarSplit {
    fn write(&mut self, input: &[u8]) -> std::io::Result<usize> {
        self.write_all(input)?;
        Ok(input.len())
    }

    fn write_all(&mut self, mut input: &[u8]) -> std::io::Result<()> {
        while let Some(step) = self.walker.next(&mut input) {
            match step {
                Step::Header { header, size, follows_extended } => self.header(header, size, follows_extended)?,
                // End-of-archive blocks: the small archive gets its own.
                Step::Zeros => {}
                Step::Unparsed(_) | Step::Opaque(_) => return Err(std::io::Error::other("a tar header does not parse: its size is not a number")),
                Step::Data { bytes, left } => {
                    match &mut self.sink {
                        Sink::Rest => {
                            self.stats.rest_bytes += bytes.len() as u64;
                            self.rest.write_all(bytes)?;
                        }
                        Sink::File(f) => {
                            self.stats.placed_bytes += bytes.len() as u64;
                            f.write_all(bytes)?;
                        }
                        Sink::Hold(_, data) => data.extend_from_slice(bytes),
                        Sink::Skip => {}
                    }
                    if left == 0 {
                        self.end_of_data()?;
                    }
                }
                Step::Pad(bytes) => {
                    if self.pad_to_rest {
                        self.write_rest(bytes)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.rest.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive like Podman's export: small files, the checkpoint folder,
    /// a link, an extended header, a long name, a nested path.
    fn podman_like() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("config.dump", b"{\"id\":1}");
        add("spec.dump", &[7u8; 700]);
        add("checkpoint/pages-1.img", &(0..3 * 4096 + 5).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        add("checkpoint/inventory.img", b"inv");
        add("checkpoint/empty.img", b"");
        add("checkpoint/sub/deep.img", b"nested");
        add("rootfs-diff.tar", &[1u8; 1024]);
        let mut d = tar::Header::new_ustar();
        d.set_entry_type(tar::EntryType::Directory);
        d.set_mode(0o700);
        d.set_size(0);
        b.append_data(&mut d, "checkpoint/", &[][..]).unwrap();
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "checkpoint/parent", "../pre-checkpoint").unwrap();
        // A name too long for ustar: the tar crate writes a GNU long-name header.
        let long = format!("checkpoint/{}", "x".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"long"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn split(archive: &[u8], piece: usize) -> (tempfile::TempDir, SplitStats) {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        std::fs::create_dir(&ck).unwrap();
        let mut s = TarSplit::new(&ck, &dir.path().join("rest.tar")).unwrap();
        for part in archive.chunks(piece) {
            s.write_all(part).unwrap();
        }
        let stats = s.finish().unwrap();
        (dir, stats)
    }

    fn members(tar_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn places_checkpoint_files_and_passes_the_rest_through_whatever_the_slicing() {
        let archive = podman_like();
        let whole = members(&archive);
        for piece in [1, 7, 511, 512, 513, 4096, 1 << 20] {
            let (dir, stats) = split(&archive, piece);
            let ck = dir.path().join("checkpoint");
            let pages = std::fs::read(ck.join("pages-1.img")).unwrap();
            assert_eq!(pages, whole.iter().find(|m| m.0 == "checkpoint/pages-1.img").unwrap().1, "slices of {piece}");
            assert_eq!(std::fs::read(ck.join("inventory.img")).unwrap(), b"inv");
            assert_eq!(std::fs::read(ck.join("empty.img")).unwrap(), b"");
            assert_eq!(std::fs::read_link(ck.join("parent")).unwrap(), Path::new("../pre-checkpoint"));
            assert_eq!(stats.placed_files, 4);
            assert_eq!(stats.placed_bytes, 3 * 4096 + 5 + 3);
            let rest = std::fs::read(dir.path().join("rest.tar")).unwrap();
            assert_eq!(stats.rest_bytes, rest.len() as u64);
            let names: Vec<String> = members(&rest).into_iter().map(|m| m.0).collect();
            let long = format!("checkpoint/{}", "x".repeat(150));
            assert_eq!(names, ["config.dump", "spec.dump", "checkpoint/sub/deep.img", "rootfs-diff.tar", long.as_str()]);
            // Members passed through are byte-identical.
            for (name, data) in members(&rest) {
                assert_eq!(&whole.iter().find(|m| m.0 == name).unwrap().1, &data, "{name}");
            }
        }
    }

    #[test]
    fn annotates_spec_dump_on_its_way_through() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in [("config.dump", &b"{}"[..]), ("spec.dump", &br#"{"process":{"args":["sh"]}}"#[..]), ("checkpoint/x.img", &b"img"[..])] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            b.append_data(&mut h, name, data).unwrap();
        }
        let archive = b.into_inner().unwrap();
        for piece in [1, 100, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("tern-criu.conf");
            let mut s = TarSplit::new(dir.path(), &dir.path().join("rest.tar")).unwrap().annotating(conf.clone(), true);
            for part in archive.chunks(piece) {
                s.write_all(part).unwrap();
            }
            let stats = s.finish().unwrap();
            assert!(stats.annotated);
            let rest = members(&std::fs::read(dir.path().join("rest.tar")).unwrap());
            assert_eq!(rest.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), ["config.dump", "spec.dump"]);
            let spec: serde_json::Value = serde_json::from_slice(&rest[1].1).unwrap();
            assert_eq!(spec["annotations"]["org.criu.config"], conf.to_str().unwrap());
            assert_eq!(spec["process"]["args"][0], "sh");
            assert_eq!(std::fs::read(dir.path().join("x.img")).unwrap(), b"img");
        }
    }

    #[test]
    fn refuses_to_write_through_a_link_or_over_a_file() {
        let mut b = tar::Builder::new(Vec::new());
        let mut l = tar::Header::new_ustar();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "checkpoint/pages-1.img", "/etc/passwd").unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        b.append_data(&mut h, "checkpoint/pages-1.img", &b"bad"[..]).unwrap();
        let archive = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut s = TarSplit::new(dir.path(), &dir.path().join("rest.tar")).unwrap();
        let err = s.write_all(&archive).unwrap_err();
        assert!(err.to_string().contains("pages-1.img"), "{err}");
    }

    #[test]
    fn an_archive_cut_short_is_an_error() {
        let archive = podman_like();
        let dir = tempfile::tempdir().unwrap();
        let mut s = TarSplit::new(dir.path(), &dir.path().join("rest.tar")).unwrap();
        s.write_all(&archive[..512 * 3 + 100]).unwrap();
        assert!(s.finish().is_err());
    }

    #[test]
    fn names_outside_the_checkpoint_folder_are_never_placed() {
        for bad in ["checkpoint/../x", "checkpoint/a/b", "checkpoint/", "checkpoint/.", "checkpointx/a", "other/a"] {
            assert_eq!(placed_name(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(placed_name(b"checkpoint/pages-1.img").as_deref(), Some("pages-1.img"));
    }
}
