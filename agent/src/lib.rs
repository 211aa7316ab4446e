//! tern's per-host agent.
//!
//! | module     | what it holds                                                  |
//! |------------|----------------------------------------------------------------|
//! | `server`   | the QUIC server: Hello, then one request per stream            |
//! | `source`   | the source's side of a migration, rollback included            |
//! | `target`   | the target's side: stage, verify, restore, confirm             |
//! | `transfer` | archives streamed over QUIC and hashed with blake3 on the way  |
//! | `engine`   | everything asked of Podman/runc/CRIU, behind a trait           |
//! | `facts`    | this host's facts for the compatibility rules                  |
//! | `config`   | the agent's TOML configuration                                 |

pub mod config;
pub mod engine;
pub mod facts;
pub mod server;
pub mod source;
pub mod target;
pub mod transfer;
