//! tern's per-host agent.
//!
//! | module     | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `server`   | the QUIC server: Hello, then one request per stream            |
//! | `source`   | the source's side of a migration, rollback included; `source/precopy.rs` its pre-copy rounds |
//! | `target`   | the target's side: stage, verify, restore, confirm; `target/inplace.rs` the container's folder made ahead, `target/unpack.rs` the final archive unpacked as it arrives |
//! | `ramdir`   | checkpoint folders in RAM (tmpfs), on both sides               |
//! | `recovery` | the journal of frozen containers; recovery after the agent died mid-migration |
//! | `transfer` | archives, file sets and delta streams over QUIC, blake3-hashed |
//! | `pages`    | page hashes (source) and the base's pages (target)             |
//! | `criu_stats` | CRIU's dump statistics: frozen time, pages written           |
//! | `engine`   | everything asked of Podman/runc/CRIU, behind a trait           |
//! | `facts`    | this host's facts for the compatibility rules                  |
//! | `probe`    | `tern probe`: the link between two agents, measured            |
//! | `config`   | the agent's TOML configuration                                 |

pub mod config;
pub mod criu_stats;
pub mod engine;
pub mod facts;
pub mod pages;
pub mod probe;
pub mod ramdir;
pub mod recovery;
pub mod server;
pub mod source;
pub mod target;
pub mod transfer;

/// Where soft-dirty pre-copy rounds live inside a container's own folder
/// (Podman's `StaticDir`), on the source as dumped and on the target as
/// written there by the target before the restore: `tern-precopy/1`, `2`, ...
/// each linked to the one before by a relative `parent` link.
pub const PRECOPY_DIR: &str = "tern-precopy";
