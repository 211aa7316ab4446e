//! Another agent, as one agent or the coordinator names it to another.

use serde::{Deserialize, Serialize};

/// Another agent: its name (checked against its certificate) and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// `ip:port`.
    pub address: String,
}
