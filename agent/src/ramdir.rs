//! Checkpoint folders in RAM.
//!
//! A container's CRIU images are as large as its memory, and they sit on
//! the frozen path twice: the source's dump writes them, the target's
//! restore reads them. On disk they cost more than the write itself:
//! Podman's checkpoint ends by unmounting the container's overlay, and the
//! kernel syncs the whole upper file system on that unmount, so Podman
//! returns only once every dirty page of that disk (the dump's images
//! included) has reached it: seconds of the freeze, depending on what else
//! was dirty.
//!
//! So a migration mounts a tmpfs over the container's `checkpoint` folder
//! (source: before the dump; target: before the restore, see
//! `target/inplace.rs`) when the host has the memory for it, and unmounts
//! it once the images are no longer needed. The memory is the container's
//! own, give or take: the source frees the container's memory as the dump
//! ends, the target holds the images until the restore has read them.
//!
//! Mounts are named [`FS_NAME`] so that an agent that died with one
//! mounted finds it again at start (`recovery.rs`).
//!
//! On the target, where the images wait for the restore, the memory is
//! one budget for every migration this agent receives at once: each
//! [`reserve`]s its share before it mounts (the container's announced
//! memory, twice: the images and the restored container) and that share
//! is its tmpfs's size cap, released when the images go. A migration that
//! does not fit in what is left keeps its images on disk, with a note, as
//! when the host's memory alone is short. `MemAvailable` already counts
//! what earlier migrations wrote to their tmpfs, so the budget errs on
//! the side of disk.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The source name of every tmpfs tern mounts (as `/proc/self/mountinfo`
/// shows it).
pub const FS_NAME: &str = "tern-checkpoint";

/// Memory kept free for everything else on the host.
const MARGIN: u64 = 256 << 20;

/// The kernel's estimate of memory available without swapping, in bytes.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Why a checkpoint may not go to RAM ([`fits`], [`budget`]): a note for
/// the report or the log, the images then go to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// The container's memory size is unknown: no cap to give the tmpfs.
    SizeUnknown,
    /// `available` bytes of memory, `wanted` needed, of which `held` are
    /// other migrations' shares.
    Memory { available: u64, wanted: u64, held: u64 },
}

impl std::fmt::Display for NoRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            NoRoom::SizeUnknown => f.write_str("the container's memory size is unknown"),
            NoRoom::Memory { available, wanted, held } => {
                write!(f, "{} MiB of memory available, {} MiB needed to hold the checkpoint in RAM", available >> 20, wanted >> 20)?;
                if held > 0 {
                    write!(f, ", {} MiB of it held for other migrations", held >> 20)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for NoRoom {}

/// Whether images of `need` bytes may go to RAM on a host with `available`
/// bytes available, `copies` times over (the target holds the images and
/// the restored container at once); the size cap of the tmpfs when so.
pub fn fits(need: u64, copies: u64, available: u64) -> Result<u64, NoRoom> {
    let want = need.saturating_mul(copies).saturating_add(MARGIN);
    if available < want {
        return Err(NoRoom::Memory { available, wanted: want, held: 0 });
    }
    // A cap, not a reservation: the dump may hold a little more than the
    // anonymous memory counted (shared memory, page tables), never the
    // memory the rest of the host needs.
    Ok(available - MARGIN)
}

/// Room in a tmpfs beyond the images' announced size: CRIU's other images
/// (cores, file descriptors, memory maps), and memory the survey missed.
const SLACK: u64 = 64 << 20;

/// Bytes of RAM reserved by this process's migrations ([`Reservation`]).
static RESERVED: Mutex<u64> = Mutex::new(0);

/// A migration's share of the RAM budget (module docs); given back when
/// dropped.
#[derive(Debug)]
pub struct Reservation {
    bytes: u64,
}

impl Reservation {
    /// Its size: the cap of the migration's tmpfs.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
        *held = held.saturating_sub(self.bytes);
    }
}

/// What images of `need` bytes, held `copies` times over, take of a host
/// with `available` bytes available of which `held` are reserved by other
/// migrations already: the share to reserve, also the tmpfs's cap.
pub fn budget(need: u64, copies: u64, available: u64, held: u64) -> Result<u64, NoRoom> {
    if need == 0 {
        // A tmpfs of size 0 has no limit at all.
        return Err(NoRoom::SizeUnknown);
    }
    let share = need.saturating_mul(copies).saturating_add(SLACK);
    let want = share.saturating_add(held).saturating_add(MARGIN);
    if available < want {
        return Err(NoRoom::Memory { available, wanted: want, held });
    }
    Ok(share)
}

/// Reserves the share of the budget for images of `need` bytes held
/// `copies` times over ([`budget`]), with `available` bytes available.
pub fn reserve(need: u64, copies: u64, available: u64) -> Result<Reservation, NoRoom> {
    let mut held = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = budget(need, copies, available, *held)?;
    *held = held.saturating_add(bytes);
    Ok(Reservation { bytes })
}

/// What this process's migrations hold of the budget now.
pub fn reserved() -> u64 {
    *RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mounts a tmpfs of at most `cap` bytes on `dir` (created if missing,
/// which must be empty: nothing is hidden under the mount).
pub fn mount(dir: &Path, cap: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(std::io::Error::other(format!("{} is not empty", dir.display())));
    }
    let data = format!("size={cap},mode=0700");
    nix::mount::mount(Some(FS_NAME), dir, Some("tmpfs"), nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV, Some(data.as_str()))
        .map_err(|e| std::io::Error::other(format!("mounting a tmpfs on {}: {e}", dir.display())))
}

/// Unmounts `dir` if it is one of tern's tmpfs mounts, and removes it when
/// `remove_dir` and it is then empty. Lazily when busy: nothing tern runs
/// uses the images any more at this point.
pub fn unmount(dir: &Path, remove_dir: bool) -> std::io::Result<()> {
    if is_mounted(dir) {
        if let Err(e) = nix::mount::umount(dir) {
            tracing::warn!("unmounting {}: {e}; detaching it", dir.display());
            nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| std::io::Error::other(format!("unmounting {}: {e}", dir.display())))?;
        }
    }
    if remove_dir {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("{} stays: {e}", dir.display()),
        }
    }
    Ok(())
}

/// Removes everything inside `dir`, keeping `dir` (a mount point).
pub fn empty(dir: &Path) -> std::io::Result<()> {
    let Ok(list) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in list {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Whether `dir` is one of tern's tmpfs mounts.
pub fn is_mounted(dir: &Path) -> bool {
    mounted_under(Path::new("/")).iter().any(|m| m == dir)
}

/// tern's tmpfs mounts at or under `prefix`.
pub fn mounted_under(prefix: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mounts(&text).into_iter().filter(|m| m.starts_with(prefix)).collect()
}

/// Mount points of tmpfs mounts named [`FS_NAME`] in a mountinfo text.
fn parse_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTS
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let mut r = right.split(' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else { continue };
        if fstype != "tmpfs" || source != FS_NAME {
            continue;
        }
        if let Some(point) = left.split(' ').nth(4) {
            out.push(PathBuf::from(unescape(point)));
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_available_memory() {
        let m = "MemTotal:       24000000 kB\nMemFree:        100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(parse_mem_available(m), Some(2 << 20));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn images_go_to_ram_only_with_room_to_spare() {
        let gib = 1u64 << 30;
        assert_eq!(fits(gib / 2, 2, 8 * gib), Ok(8 * gib - MARGIN));
        let err = fits(gib, 2, 2 * gib).unwrap_err().to_string();
        assert!(err.contains("2048 MiB of memory available, 2304 MiB needed"), "{err}");
        assert!(fits(u64::MAX, 2, 1 << 50).is_err(), "no overflow");
    }

    #[test]
    fn one_budget_for_every_migration() {
        let gib = 1u64 << 30;
        assert_eq!(budget(gib / 2, 2, 8 * gib, 0), Ok(gib + SLACK));
        assert!(budget(0, 2, 8 * gib, 0).unwrap_err().to_string().contains("unknown"), "never a tmpfs without a cap");
        let err = budget(gib, 2, 4 * gib, 2 * gib).unwrap_err().to_string();
        assert!(err.contains("2048 MiB of it held for other migrations"), "{err}");
        assert!(budget(u64::MAX, 2, 1 << 50, u64::MAX).is_err(), "no overflow");
        // Reservations add up and give back what they took. (Other tests
        // of this process may hold some: counted relative to the start.)
        let before = reserved();
        let huge = 1u64 << 60;
        let a = reserve(gib, 2, huge).unwrap();
        let b = reserve(gib, 2, huge).unwrap();
        assert_eq!(reserved() - before, 2 * (2 * gib + SLACK));
        assert!(reserve(gib, 2, a.bytes() + b.bytes() + before + MARGIN).is_err(), "the others' shares count");
        drop(a);
        assert_eq!(reserved() - before, 2 * gib + SLACK);
        drop(b);
        assert_eq!(reserved(), before);
    }

    #[test]
    fn finds_terns_mounts_in_mountinfo() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:52 / /var/lib/x/overlay-containers/abc/userdata/checkpoint rw,nosuid,nodev shared:50 - tmpfs tern-checkpoint rw,size=100k,mode=700
91 22 0:53 / /run/other rw - tmpfs tmpfs rw
92 22 0:54 / /var/lib/with\\040space/checkpoint rw - tmpfs tern-checkpoint rw
";
        assert_eq!(
            parse_mounts(info),
            vec![PathBuf::from("/var/lib/x/overlay-containers/abc/userdata/checkpoint"), PathBuf::from("/var/lib/with space/checkpoint")]
        );
    }
}
