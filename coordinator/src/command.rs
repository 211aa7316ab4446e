//! What every command shares: the global flags ([`Ctx`]), what a command
//! hands back ([`Done`]) and an error with the exit code it deserves
//! ([`Exit`]). `main.rs` parses the command line and runs the commands;
//! the commands that live in a module of their own (`evacuate.rs`) use
//! these too.

use crate::view;
use serde::Serialize;
use std::path::PathBuf;

/// An error with the exit code it deserves.
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
    /// What the command had to show when it failed (a view's JSON): the
    /// `--json` failure document carries it.
    pub(crate) partial: Option<serde_json::Value>,
    /// The text output already says what failed: no `tern: ...` line.
    pub(crate) told: bool,
}

impl Exit {
    pub(crate) fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Exit { code, error: error.into(), partial: None, told: false }
    }

    /// With the view the `--json` failure document shows.
    pub(crate) fn with<T: Serialize>(mut self, view: &T) -> Self {
        self.partial = Some(view::value(view));
        self
    }

    /// The text output has said it already.
    pub(crate) fn told(mut self) -> Self {
        self.told = true;
        self
    }
}

impl<E: Into<anyhow::Error>> From<E> for Exit {
    fn from(e: E) -> Self {
        Exit::new(1, e)
    }
}

/// The global flags, as every command sees them.
pub(crate) struct Ctx {
    pub(crate) inventory: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

impl Ctx {
    /// The command's `--json` document, when asked for one.
    pub(crate) fn doc<T: Serialize>(&self, view: &T) -> Option<serde_json::Value> {
        self.json.then(|| view::value(view))
    }
}

/// What a command hands back: its `--json` view (None under text, where it
/// printed its own output).
pub(crate) type Done = Result<Option<serde_json::Value>, Exit>;
