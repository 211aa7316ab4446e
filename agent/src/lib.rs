//! tern's per-host agent.
//!
//! | module     | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `server`   | the QUIC server: Hello, then one request per stream            |
//! | `context`  | `Agent`, what every request handler gets: config, engine, endpoint, busy containers, facts, link rates |
//! | `source`   | the source's side of a migration, rollback included; `source/precopy.rs` its pre-copy rounds |
//! | `rollback` | a container restored here from its checkpoint and its address reclaimed (source rollback, recovery) |
//! | `target`   | the target's side: stage, verify, restore, confirm; `target/inplace.rs` the container's folder made ahead, `target/archive.rs` where a received archive goes, `target/unpack.rs` the final archive unpacked as it arrives |
//! | `ramdir`   | checkpoint folders in RAM (tmpfs), on both sides               |
//! | `recovery` | the journal of frozen containers; settling the switchovers this agent did not see to their end (it died mid-migration, or the target could not be reached) |
//! | `transfer` | archives, file sets and delta streams over QUIC, blake3-hashed (received archives land through `target/archive.rs`) |
//! | `pages`    | page hashes (source) and the base's pages (target)             |
//! | `criu_stats` | CRIU's dump statistics: frozen time, pages written           |
//! | `engine`   | everything asked of Podman and runc (and CRIU through them), behind a trait |
//! | `criu`     | what is asked of CRIU directly (version, feature checks, the lazy-pages daemon), behind a trait |
//! | `storage`  | checkpoint folders in RAM, behind a trait (`ramdir` is the host's) |
//! | `facts`    | this host's facts for the compatibility rules                  |
//! | `netid`    | a container's address announced where it runs, its peers woken, the network hook |
//! | `criu_tcp` | the established TCP connections in a CRIU checkpoint folder    |
//! | `probe`    | `tern probe`: the link between two agents, measured            |
//! | `config`   | the agent's TOML configuration                                 |
//! | `cordon`   | this host's cordon (kept in a file), what its facts say afresh at every request |
//! | `durable`  | small files kept across crashes, written whole or not at all |
//! | `evacuation` | what evacuations moved away from this host, for `tern return` (kept in a file) |
//! | `arrivals` | what evacuations brought here and from where, for a host's own way back (kept in a file) |
//! | `self_evacuation` | evacuating this host when it shuts down, and the way back after the next start |

pub mod arrivals;
pub mod checkpoints;
pub mod config;
pub mod context;
pub mod cordon;
pub mod criu;
pub mod criu_stats;
pub mod criu_tcp;
pub mod durable;
pub mod engine;
pub mod evacuation;
pub mod facts;
pub mod faults;
pub mod fills;
pub mod netid;
pub mod notify;
pub mod pages;
pub mod probe;
pub mod ramdir;
pub mod recovery;
pub mod rollback;
pub mod rootfs;
pub mod self_evacuation;
pub mod server;
pub mod source;
pub mod standby;
pub mod storage;
pub mod target;
pub mod transfer;
pub mod tunnel;

/// Where soft-dirty pre-copy rounds live inside a container's own folder
/// (Podman's `StaticDir`), on the source as dumped and on the target as
/// written there by the target before the restore: `tern-precopy/1`, `2`, ...
/// each linked to the one before by a relative `parent` link.
pub const PRECOPY_DIR: &str = "tern-precopy";

/// Keeps the agent's memory from creeping up migration after migration.
/// A migration hands megabyte buffers from thread to thread; glibc serves
/// them from its per-thread arenas once its adaptive mmap threshold has
/// risen past their size, and the arenas keep them, fragmented: resident
/// memory grows with every migration. A fixed threshold maps every buffer
/// of 256 KiB or more on its own and returns it when freed. (mimalloc,
/// tried instead, held more.)
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters, before any threads
    // of ours allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Hands the heap memory a migration freed back to the system.
pub fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
