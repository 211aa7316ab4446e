//! tern's per-host agent.
//!
//! | module     | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `server`   | the QUIC server: Hello, then one request per stream            |
//! | `source`   | the source's side of a migration, rollback included; `source/precopy.rs` its pre-copy rounds |
//! | `target`   | the target's side: stage, verify, restore, confirm             |
//! | `transfer` | archives, file sets and delta streams over QUIC, blake3-hashed |
//! | `pages`    | page hashes (source) and the base's pages (target)             |
//! | `criu_stats` | CRIU's dump statistics: frozen time, pages written           |
//! | `engine`   | everything asked of Podman/runc/CRIU, behind a trait           |
//! | `facts`    | this host's facts for the compatibility rules                  |
//! | `config`   | the agent's TOML configuration                                 |

pub mod config;
pub mod criu_stats;
pub mod engine;
pub mod facts;
pub mod pages;
pub mod server;
pub mod source;
pub mod target;
pub mod transfer;
