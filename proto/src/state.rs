//! The target's side of a migration as a state machine.
//!
//! ```text
//!             Ready{needs_image:true}            ImageSent
//!   Begin ──▶ AwaitingImage ───────────────────────────────▶ AwaitingCheckpoint
//!     │                                                            │
//!     └── Ready{needs_image:false} ──────────────────────────────▶ │ CheckpointSent
//!                                                                  ▼
//!                                           Restored ──Commit──▶ Done
//!   Abort from any state but Done ──▶ Done (everything staged or restored is removed)
//! ```
//!
//! [`step`] only decides whether a message is legal now and what the agent
//! must do about it; the agent does the IO and reports failures itself.

use crate::message::{Digest, SourceMsg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Waiting for the image archive's digest.
    AwaitingImage,
    /// Waiting for the checkpoint archive's digest.
    AwaitingCheckpoint,
    /// The container runs here; waiting for the source to commit.
    Restored,
    /// Committed or aborted: nothing more is accepted.
    Done,
}

impl TargetState {
    /// The state after answering `Begin`.
    pub fn initial(needs_image: bool) -> Self {
        if needs_image {
            TargetState::AwaitingImage
        } else {
            TargetState::AwaitingCheckpoint
        }
    }
}

/// What the target agent must do for an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Check the image archive against the digest, load it, answer `ImageLoaded`.
    LoadImage(Digest),
    /// Check the checkpoint archive, restore, confirm it runs, answer `Restored`.
    Restore(Digest),
    /// Drop staged files and rollback state, answer `Committed`.
    Commit,
    /// Remove what was restored or staged, answer `Aborted`.
    Abort(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the source sent {message} while this target was in state {state:?}; the migration is aborted")]
pub struct UnexpectedMessage {
    pub state: TargetState,
    pub message: &'static str,
}

fn name(msg: &SourceMsg) -> &'static str {
    match msg {
        SourceMsg::Invalid => "Invalid",
        SourceMsg::ImageSent(_) => "ImageSent",
        SourceMsg::CheckpointSent(_) => "CheckpointSent",
        SourceMsg::Commit => "Commit",
        SourceMsg::Abort { .. } => "Abort",
    }
}

/// The next state and the action for `msg` in `state`, or an error naming both.
pub fn step(state: TargetState, msg: &SourceMsg) -> Result<(TargetState, Action), UnexpectedMessage> {
    use TargetState::*;
    match (state, msg) {
        (AwaitingImage, SourceMsg::ImageSent(d)) => Ok((AwaitingCheckpoint, Action::LoadImage(*d))),
        (AwaitingCheckpoint, SourceMsg::CheckpointSent(d)) => Ok((Restored, Action::Restore(*d))),
        (Restored, SourceMsg::Commit) => Ok((Done, Action::Commit)),
        (AwaitingImage | AwaitingCheckpoint | Restored, SourceMsg::Abort { reason }) => {
            Ok((Done, Action::Abort(reason.clone())))
        }
        (state, msg) => Err(UnexpectedMessage { state, message: name(msg) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest { bytes: 1, blake3: [7; 32] }
    }

    #[test]
    fn happy_path_with_image() {
        let s = TargetState::initial(true);
        let (s, a) = step(s, &SourceMsg::ImageSent(digest())).unwrap();
        assert_eq!(a, Action::LoadImage(digest()));
        let (s, a) = step(s, &SourceMsg::CheckpointSent(digest())).unwrap();
        assert_eq!(a, Action::Restore(digest()));
        let (s, a) = step(s, &SourceMsg::Commit).unwrap();
        assert_eq!((s, a), (TargetState::Done, Action::Commit));
    }

    #[test]
    fn abort_is_legal_until_done() {
        for s in [TargetState::AwaitingImage, TargetState::AwaitingCheckpoint, TargetState::Restored] {
            let (next, a) = step(s, &SourceMsg::Abort { reason: "x".into() }).unwrap();
            assert_eq!((next, a), (TargetState::Done, Action::Abort("x".into())));
        }
    }

    #[test]
    fn out_of_order_messages_name_the_state() {
        let bad = [
            (TargetState::AwaitingImage, SourceMsg::CheckpointSent(digest())),
            (TargetState::AwaitingImage, SourceMsg::Commit),
            (TargetState::AwaitingCheckpoint, SourceMsg::ImageSent(digest())),
            (TargetState::AwaitingCheckpoint, SourceMsg::Commit),
            (TargetState::Restored, SourceMsg::CheckpointSent(digest())),
            (TargetState::Done, SourceMsg::Abort { reason: String::new() }),
            (TargetState::Done, SourceMsg::Commit),
            (TargetState::AwaitingCheckpoint, SourceMsg::Invalid),
        ];
        for (state, msg) in bad {
            let err = step(state, &msg).unwrap_err();
            assert_eq!(err.state, state);
            assert!(err.to_string().contains(&format!("{state:?}")), "{err}");
        }
    }
}
