//! # tern's wire protocol
//!
//! Everything two tern processes say to each other, and the rules they apply
//! to it, lives here: versioned messages ([`message`]), length-prefixed frames
//! with a hard size limit ([`frame`]), the facts a host reports
//! ([`facts`]), the compatibility rules run before anything is frozen
//! ([`compat`]) and the migration state machines of the receiver ([`state`])
//! and the sender ([`source_state`]).
//! The crate does no IO of its own beyond generic async read/write helpers
//! over any stream, so every rule is unit-tested without a network.
//!
//! ## Who talks to whom
//!
//! ```text
//!  tern (coordinator)          tern-agent (source)               tern-agent (target)
//!        |                            |                                   |
//!        |-- Hello ------------------>|                                   |
//!        |-- Facts / Containers ----->|     (same to the target)          |
//!        |-- CheckIncoming --------------------------------------------->|
//!        |   (compatibility report: nothing is frozen before this passes) |
//!        |-- Migrate ---------------->|                                   |
//!        |                            |-- Hello ------------------------->|
//!        |                            |-- Receive(Begin) ---------------->|
//!        |                            |<------------ Ready{needs_image} --|
//!        |<-- Progress ...            |== image bytes (uni stream) =====>|  only if needed,
//!        |                            |-- ImageSent(digest) ------------->|  before the freeze
//!        |                            |<-------------------- ImageLoaded -|
//!        |                            |  FREEZE: podman checkpoint        |
//!        |                            |== checkpoint bytes (uni) =======>|  streamed while
//!        |                            |-- CheckpointSent(digest) -------->|  the dump is written
//!        |                            |                 verify blake3,    |
//!        |                            |                 podman restore,   |
//!        |                            |                 confirm running   |
//!        |                            |<---------------- Restored{...} ---|  = switchover
//!        |                            |  record the commit (journal)      |
//!        |                            |-- Commit ------------------------>|
//!        |                            |<---------------------- Committed -|
//!        |                            |  remove source container          |
//!        |<-- Done(report) -----------|                                   |
//! ```
//!
//! Any failure before `Restored` (a broken stream, a digest mismatch, a
//! failed restore, a dead peer, the user's Ctrl-C) makes the source send
//! `Abort` when it still can. Before the freeze the container never
//! stopped (`Refused`); after it the source restores the container locally
//! from the checkpoint it kept and reports `RolledBack` with the reason,
//! unless the target cannot be reached after `CheckpointSent` (then the
//! migration is `Undecided`: [`source_state`]). The source container is
//! removed only after the target said `Restored`.
//!
//! Every connection is QUIC with mutual TLS; each request opens its own
//! bidirectional stream whose first frame is a [`message::Request`].
//! Bulk data (image and checkpoint archives, pre-copy rounds) travels on
//! unidirectional streams after a [`message::DataHeader`] frame, as
//! [`delta`] records or a [`fileset`]; its integrity is proven by the
//! blake3 digest sent on the control stream.

pub mod bandwidth;
pub mod checkpoint;
pub mod compat;
pub mod criu_image;
pub mod delta;
pub mod evacuation;
pub mod facts;
pub mod fileset;
pub mod frame;
pub mod message;
pub mod mode;
pub mod network;
pub mod packets;
pub mod peer;
pub mod plan;
pub mod policy;
pub mod postcopy;
pub mod source_state;
pub mod state;
pub mod tarwalk;
pub mod version;

pub use evacuation::{Evacuated, EvacuationRecord};
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use message::*;
pub use mode::Mode;
pub use version::{negotiate, PROTOCOL_VERSION, SUPPORTED_VERSIONS};
