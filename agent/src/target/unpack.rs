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
//! Only plain members are placed: a regular file whose path is
//! `checkpoint/<name>`, `<name>` a single path component, with no extended
//! (PAX or GNU long name) header before it, and CRIU's one link (below).
//! Anything else goes to the small archive, where Podman unpacks it, so an
//! unusual archive costs speed, never correctness. Files are created with
//! `O_EXCL | O_NOFOLLOW`: a member can never write through a link an
//! earlier member made.
//!
//! Whatever CRIU reads as root comes from here, so every member is checked
//! as it comes ([`check_member`]), wherever it would go, and the stream
//! fails with an [`UnpackError`] on the first that is not one Podman's
//! export makes: a name that is absolute, has a `..` in it or is one of
//! tern's own files in the container's folder (`tern-*`,
//! `pre-checkpoint`); a hard link, a device node, a FIFO; any symbolic
//! link but `checkpoint/parent -> ../pre-checkpoint` (Podman's, in a
//! `--with-previous` dump: it reaches the rounds through the
//! `pre-checkpoint` link the target itself makes, `inplace.rs`; the
//! rounds' own `parent` links are the target's too, never received). A
//! member's real name may be in an extended header the walker does not
//! apply: the header's own name and type are checked here, and
//! `admission.rs` checks the small archive again by real names before
//! Podman reads it.

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

/// The one link a checkpoint archive may hold (module docs).
pub const PARENT_LINK: (&str, &str) = ("checkpoint/parent", "../pre-checkpoint");

/// Names in the container's folder that are tern's own (`tern-criu.conf`,
/// `tern-precopy/`, `tern-criu-action.sh`, ...) or the target's
/// (`pre-checkpoint`, `lazy-pages.socket`): never from the peer.
const RESERVED: &[&str] = &["pre-checkpoint", crate::criu::SOCKET];
const RESERVED_PREFIX: &str = "tern-";

/// What a tar member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    Regular,
    Directory,
    Symlink,
    HardLink,
    /// Anything else, by its type flag (devices, FIFOs, ...).
    Other(u8),
}

impl MemberKind {
    fn of(header: &TarHeader) -> MemberKind {
        if header.is_regular() {
            MemberKind::Regular
        } else if header.is_dir() {
            MemberKind::Directory
        } else if header.is_symlink() {
            MemberKind::Symlink
        } else {
            match header.typeflag() {
                b'1' => MemberKind::HardLink,
                t => MemberKind::Other(t),
            }
        }
    }
}

/// Why an archive is not unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnpackError {
    #[error("the checkpoint archive holds a member with an empty name")]
    EmptyName,
    #[error("the checkpoint archive holds {0:?}: an absolute path")]
    AbsoluteName(String),
    #[error("the checkpoint archive holds {0:?}: a path with `..` in it")]
    ParentName(String),
    #[error("the checkpoint archive holds {0:?}: a name of tern's own files")]
    Reserved(String),
    #[error("the checkpoint archive holds a hard link, {name:?} -> {target:?}")]
    HardLink { name: String, target: String },
    #[error("the checkpoint archive holds a link tern does not accept, {name:?} -> {target:?} (only checkpoint/parent -> ../pre-checkpoint)")]
    Link { name: String, target: String },
    #[error("the checkpoint archive holds {name:?}, {what}: only files, folders and CRIU's parent link are accepted")]
    Special { name: String, what: &'static str },
    #[error("the checkpoint archive's sizes overflow")]
    Overflow,
    #[error("the checkpoint archive ended in the middle of a member")]
    Truncated,
    #[error("a tar header of the checkpoint archive does not parse: its size is not a number")]
    BadHeader,
}

impl From<UnpackError> for std::io::Error {
    fn from(e: UnpackError) -> Self {
        std::io::Error::other(e)
    }
}

/// Whether a member may be in a checkpoint archive at all (module docs).
/// `path` and `link` are as the archive has them.
pub fn check_member(path: &[u8], kind: MemberKind, link: Option<&[u8]>) -> Result<(), UnpackError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let name = text(path);
    if path.is_empty() {
        return Err(UnpackError::EmptyName);
    }
    if path.starts_with(b"/") {
        return Err(UnpackError::AbsoluteName(name));
    }
    let parts: Vec<&[u8]> = path.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
    if parts.iter().any(|c| *c == b"..") {
        return Err(UnpackError::ParentName(name));
    }
    if let Some(first) = parts.first() {
        if first.starts_with(RESERVED_PREFIX.as_bytes()) || RESERVED.iter().any(|r| r.as_bytes() == *first) {
            return Err(UnpackError::Reserved(name));
        }
    }
    let target = || text(link.unwrap_or_default());
    match kind {
        MemberKind::Regular | MemberKind::Directory => Ok(()),
        MemberKind::HardLink => Err(UnpackError::HardLink { name, target: target() }),
        MemberKind::Symlink => {
            let plain = parts.join(&b'/');
            if plain == PARENT_LINK.0.as_bytes() && link == Some(PARENT_LINK.1.as_bytes()) {
                Ok(())
            } else {
                Err(UnpackError::Link { name, target: target() })
            }
        }
        MemberKind::Other(t) => {
            let what = match t {
                b'3' => "a character device",
                b'4' => "a block device",
                b'6' => "a FIFO",
                _ => "a member of an unknown type",
            };
            Err(UnpackError::Special { name, what })
        }
    }
}

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

/// A count of bytes, grown without overflow.
fn add(total: u64, n: usize) -> Result<u64, UnpackError> {
    u64::try_from(n).ok().and_then(|n| total.checked_add(n)).ok_or(UnpackError::Overflow)
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
        header.try_reserve(data.len().checked_add(pad).ok_or(UnpackError::Overflow)?).map_err(|_| UnpackError::Overflow)?;
        header.extend_from_slice(&data);
        header.extend(std::iter::repeat_n(0u8, pad));
        self.stats.rest_members += 1;
        self.write_rest(&header)
    }

    fn write_rest(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stats.rest_bytes = add(self.stats.rest_bytes, bytes.len())?;
        self.rest.write_all(bytes)
    }

    fn open_placed(&self, name: &str, mode: u32) -> std::io::Result<BufWriter<File>> {
        crate::transfer::create_new(&self.dir.join(name), mode.max(0o400))
    }

    /// A member's header: where its data goes.
    fn header(&mut self, header: TarHeader, size: u64, follows_extended: bool) -> std::io::Result<()> {
        if !header.is_extended() {
            let kind = MemberKind::of(&header);
            // A link whose real target an extended header would give is no link of CRIU's.
            if follows_extended && kind == MemberKind::Symlink {
                let name = String::from_utf8_lossy(&header.path()).into_owned();
                return Err(UnpackError::Link { name, target: "(in an extended header)".into() }.into());
            }
            check_member(&header.path(), kind, header.link_name())?;
        }
        let extended = follows_extended || header.is_extended();
        let hold = self.annotate.is_some() && !extended && header.is_regular() && &*header.path() == b"spec.dump" && size <= MAX_SPEC;
        self.sink = match route(&header, extended) {
            Route::Rest if hold => {
                Sink::Hold(header.as_bytes().to_vec(), Vec::with_capacity(usize::try_from(size).map_err(|_| UnpackError::Overflow)?))
            }
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
            return Err(UnpackError::Truncated.into());
        }
        self.rest.write_all(&[0u8; 2 * BLOCK])?;
        self.stats.rest_bytes = add(self.stats.rest_bytes, 2 * BLOCK)?;
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
                Step::Unparsed(_) | Step::Opaque(_) => return Err(UnpackError::BadHeader.into()),
                Step::Data { bytes, left } => {
                    match &mut self.sink {
                        Sink::Rest => {
                            self.stats.rest_bytes = add(self.stats.rest_bytes, bytes.len())?;
                            self.rest.write_all(bytes)?;
                        }
                        Sink::File(f) => {
                            self.stats.placed_bytes = add(self.stats.placed_bytes, bytes.len())?;
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

    /// A member as a hostile peer would write it: the tar crate refuses
    /// to build these, so the header's fields are set by hand.
    fn raw(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    /// Unpacks `archive`; the typed error, if any.
    fn unpack_err(archive: &[u8]) -> Option<UnpackError> {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoint");
        std::fs::create_dir(&ck).unwrap();
        let mut s = TarSplit::new(&ck, &dir.path().join("rest.tar")).unwrap();
        let r = s.write_all(archive).and_then(|()| s.finish().map(drop));
        // Nothing was made outside the folder, whatever happened.
        assert!(!dir.path().join("etc").exists());
        r.err().map(|e| e.get_ref().and_then(|e| e.downcast_ref::<UnpackError>()).cloned().unwrap_or_else(|| panic!("untyped: {e}")))
    }

    #[test]
    fn crafted_links_names_and_special_files_are_refused() {
        use tar::EntryType::*;
        let link = |name: &str, target: &str| UnpackError::Link { name: name.into(), target: target.into() };
        let cases: Vec<(Vec<u8>, UnpackError)> = vec![
            (raw("checkpoint/pages-1.img", Symlink, "/etc/shadow", b""), link("checkpoint/pages-1.img", "/etc/shadow")),
            (raw("checkpoint/parent", Symlink, "/", b""), link("checkpoint/parent", "/")),
            (raw("checkpoint/parent", Symlink, "../../../../etc", b""), link("checkpoint/parent", "../../../../etc")),
            (raw("checkpoint/parent", Symlink, "../pre-checkpoint/../..", b""), link("checkpoint/parent", "../pre-checkpoint/../..")),
            (raw("config.dump", Symlink, "../pre-checkpoint", b""), link("config.dump", "../pre-checkpoint")),
            (
                raw("checkpoint/pages-1.img", Link, "/etc/shadow", b""),
                UnpackError::HardLink { name: "checkpoint/pages-1.img".into(), target: "/etc/shadow".into() },
            ),
            (raw("checkpoint/../../../../etc/x", Regular, "", b"x"), UnpackError::ParentName("checkpoint/../../../../etc/x".into())),
            (raw("../rest.tar", Regular, "", b"x"), UnpackError::ParentName("../rest.tar".into())),
            (raw("/etc/cron.d/x", Regular, "", b"x"), UnpackError::AbsoluteName("/etc/cron.d/x".into())),
            (raw("checkpoint/null", Char, "", b""), UnpackError::Special { name: "checkpoint/null".into(), what: "a character device" }),
            (raw("checkpoint/sda", Block, "", b""), UnpackError::Special { name: "checkpoint/sda".into(), what: "a block device" }),
            (raw("checkpoint/pipe", Fifo, "", b""), UnpackError::Special { name: "checkpoint/pipe".into(), what: "a FIFO" }),
            (raw("tern-criu.conf", Regular, "", b"action-script /tmp/x"), UnpackError::Reserved("tern-criu.conf".into())),
            (raw("./tern-criu-action.sh", Regular, "", b"#!/bin/sh"), UnpackError::Reserved("./tern-criu-action.sh".into())),
            (raw("pre-checkpoint", Symlink, "/", b""), UnpackError::Reserved("pre-checkpoint".into())),
            (raw("tern-precopy/1/pages-1.img", Regular, "", b"x"), UnpackError::Reserved("tern-precopy/1/pages-1.img".into())),
        ];
        for (member, want) in cases {
            let mut archive = raw("config.dump", Regular, "", b"{}");
            archive.extend(member);
            archive.extend([0u8; 2 * BLOCK]);
            assert_eq!(unpack_err(&archive), Some(want.clone()), "{want}");
        }
        // A link whose target an extended header gives is refused too.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("linkpath", &b"/etc/shadow"[..])]).unwrap();
        let mut archive = b.into_inner().unwrap();
        archive.extend(raw("checkpoint/parent", Symlink, "../pre-checkpoint", b""));
        archive.extend([0u8; 2 * BLOCK]);
        assert!(matches!(unpack_err(&archive), Some(UnpackError::Link { .. })));
        // CRIU's own parent link is placed.
        let mut archive = raw("checkpoint/parent", Symlink, "../pre-checkpoint", b"");
        archive.extend([0u8; 2 * BLOCK]);
        assert_eq!(unpack_err(&archive), None);
    }

    #[test]
    fn sizes_from_the_peer_never_overflow() {
        assert_eq!(add(u64::MAX - 1, 1), Ok(u64::MAX));
        assert_eq!(add(u64::MAX, 1), Err(UnpackError::Overflow));
        // A member claiming a size that overflows once padded to a block
        // is refused at its header, not a crash.
        let mut h = raw("checkpoint/pages-1.img", tar::EntryType::Regular, "", b"");
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let mut t = tar::Header::from_byte_slice(&h[..BLOCK]).clone();
        t.set_cksum();
        h[..BLOCK].copy_from_slice(t.as_bytes());
        h.extend([7u8; 4096]);
        assert_eq!(unpack_err(&h), Some(UnpackError::BadHeader));
    }

    #[test]
    fn names_outside_the_checkpoint_folder_are_never_placed() {
        for bad in ["checkpoint/../x", "checkpoint/a/b", "checkpoint/", "checkpoint/.", "checkpointx/a", "other/a"] {
            assert_eq!(placed_name(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(placed_name(b"checkpoint/pages-1.img").as_deref(), Some("pages-1.img"));
    }
}
