//! Failures the agent injects on purpose, so that the end-to-end tests
//! exercise the rollback paths with real processes: the `[faults]` table of
//! the agent's config.
//!
//! They exist only in a build with the cargo feature `fault-injection`
//! (`scripts/test.sh` and the lab build with it; `cargo build --release`
//! does not). Without it [`Faults`] is empty, every question below answers
//! "no", no injected exit is compiled in, and a config that names a fault is
//! refused at start rather than silently ignored.

use serde::Deserialize;

/// Where the source agent dies, as if killed, around the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceExit {
    /// Right before the freeze (the last check of the connections): the
    /// container was never touched.
    BeforeFreeze,
    /// Once the checkpoint is dumped and streamed, before telling the
    /// target: the target never restores, and drops what it staged.
    BeforeCheckpointSent,
    /// Right after telling the target the checkpoint is complete: it
    /// restores, and keeps its copy tentative for the source's successor.
    AfterCheckpointSent,
    /// Once the target answered that the container runs there and the
    /// commit is recorded, before telling the target: the target keeps it.
    AfterRestored,
}

/// Where an agent stops for a while ([`Stall`]), so that a test can do
/// something from outside (kill an agent or `tern`, cut the link) at that
/// point of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StallPoint {
    /// As source, right before the freeze.
    BeforeFreeze,
    /// As target, when the checkpoint's data stream begins: the source is
    /// frozen and sending (a stalled disk, seen from the source).
    Transfer,
    /// As target, right before the restore.
    Restore,
    /// As source, once the target said `Restored` and the commit is
    /// recorded, before telling the target.
    AfterRestored,
}

/// A stop at a [`StallPoint`]: for its length, the file `flag` exists
/// (the tests wait for it), holding the point's name.
#[derive(Debug, Clone)]
pub struct Stall {
    pub at: StallPoint,
    pub length: std::time::Duration,
    pub flag: std::path::PathBuf,
}

impl Stall {
    pub async fn wait(&self) {
        /// Removes the flag however the stall ends: a task aborted
        /// mid-stall must not leave it behind.
        struct Flag<'a>(&'a std::path::Path);
        impl Drop for Flag<'_> {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(self.0);
            }
        }
        tracing::warn!(at = ?self.at, ms = self.length.as_millis() as u64, "fault injected: stalling");
        let _ = std::fs::write(&self.flag, format!("{:?}", self.at));
        let _flag = Flag(&self.flag);
        tokio::time::sleep(self.length).await;
    }
}

/// The file a stall shows itself by, in the agent's state folder.
pub const STALL_FLAG: &str = "fault-stalled";

/// What a receiving stream does wrong on purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveFaults {
    /// Exit once this many bytes arrived, as if killed mid-transfer.
    pub exit_after_bytes: Option<u64>,
    /// Flip the first byte, so the digest check fails.
    pub corrupt: bool,
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::{ReceiveFaults, SourceExit};
    use serde::Deserialize;

    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Faults {
        /// As target: answer every restore with a failure instead of restoring.
        #[serde(default)]
        pub fail_restore: bool,
        /// As target: the agent process exits abruptly once it has received
        /// this many checkpoint bytes, as if it were killed mid-transfer.
        #[serde(default)]
        pub exit_after_checkpoint_bytes: Option<u64>,
        /// As target: flip one received checkpoint byte, so the digest check fails.
        #[serde(default)]
        pub corrupt_checkpoint: bool,
        /// The source agent exits (as if killed) at this point after the freeze.
        #[serde(default)]
        pub source_exit: Option<SourceExit>,
        /// As target: kill `criu lazy-pages` as soon as a lazy restore
        /// returns, so the container's memory can never be completed.
        #[serde(default)]
        pub kill_lazy_daemon: bool,
        /// As target: the agent exits abruptly right after Podman restored
        /// the container, before confirming it (its successor keeps it,
        /// tentative, for the source to settle).
        #[serde(default)]
        pub exit_after_restore: bool,
        /// As target: wait this long after the restore before answering
        /// `Restored` (a slow confirmation; a link cut in it loses the answer).
        #[serde(default)]
        pub delay_restored_ms: u64,
        /// As target: the agent exits abruptly right after answering
        /// `Restored` (the container runs there, tentative).
        #[serde(default)]
        pub exit_after_restored_sent: bool,
        /// As target: the file system the checkpoint's images go to holds
        /// only this many bytes (its tmpfs is made that small): the
        /// transfer meets a real "No space left on device".
        #[serde(default)]
        pub target_disk_bytes: Option<u64>,
        /// Stop at this point of a migration for `stall_ms` (default 10 s).
        #[serde(default)]
        pub stall_at: Option<super::StallPoint>,
        #[serde(default)]
        pub stall_ms: Option<u64>,
    }

    impl Faults {
        pub fn fail_restore(&self) -> bool {
            self.fail_restore
        }
        pub fn kill_lazy_daemon(&self) -> bool {
            self.kill_lazy_daemon
        }
        pub fn receive(&self) -> ReceiveFaults {
            ReceiveFaults { exit_after_bytes: self.exit_after_checkpoint_bytes, corrupt: self.corrupt_checkpoint }
        }
        /// The source dies here when told to.
        pub fn exit_at_source(&self, at: SourceExit) {
            if self.source_exit == Some(at) {
                die(70, &format!("the source agent exits ({at:?})"));
            }
        }
        /// The target dies right after the restore when told to.
        pub fn exit_after_restore(&self) {
            if self.exit_after_restore {
                die(137, "the target agent exits right after the restore, before confirming it");
            }
        }
        pub fn delay_restored(&self) -> std::time::Duration {
            std::time::Duration::from_millis(self.delay_restored_ms)
        }
        /// The target dies right after answering `Restored` when told to.
        pub fn exit_after_restored_sent(&self) {
            if self.exit_after_restored_sent {
                die(137, "the target agent exits right after answering Restored");
            }
        }
        /// Shrinks the tmpfs at `dir` to `target_disk_bytes`, when asked to.
        pub fn fill_disk(&self, dir: &std::path::Path) {
            let Some(bytes) = self.target_disk_bytes else { return };
            let data = format!("size={bytes}");
            let flags = nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
            match nix::mount::mount(None::<&str>, dir, Some("tmpfs"), flags, Some(data.as_str())) {
                Ok(()) => tracing::warn!(dir = %dir.display(), bytes, "fault injected: the checkpoint folder is nearly full"),
                Err(e) => tracing::error!("fault injection: shrinking {}: {e}", dir.display()),
            }
        }
        /// The stall to make at `at`, if this agent is told to stall there.
        pub fn stall(&self, at: super::StallPoint, state_dir: &std::path::Path) -> Option<super::Stall> {
            (self.stall_at == Some(at)).then(|| super::Stall {
                at,
                length: std::time::Duration::from_millis(self.stall_ms.unwrap_or(10_000)),
                flag: state_dir.join(super::STALL_FLAG),
            })
        }
    }

    /// The agent ends at once, as `kill -9` would end it: no cleanup.
    pub fn die(code: i32, why: &str) -> ! {
        tracing::error!("fault injected: {why}");
        std::process::exit(code)
    }
}

#[cfg(not(feature = "fault-injection"))]
mod imp {
    use super::{ReceiveFaults, SourceExit};
    use serde::{Deserialize, Deserializer};

    /// No faults in this build.
    #[derive(Debug, Clone, Default)]
    pub struct Faults;

    impl<'de> Deserialize<'de> for Faults {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let table = toml::Table::deserialize(d)?;
            match table.keys().next() {
                None => Ok(Faults),
                Some(key) => Err(serde::de::Error::custom(format!(
                    "[faults] {key}: this tern-agent was built without fault injection (cargo feature \
                     `fault-injection`, for tests only); remove [faults] from the config"
                ))),
            }
        }
    }

    impl Faults {
        pub fn fail_restore(&self) -> bool {
            false
        }
        pub fn kill_lazy_daemon(&self) -> bool {
            false
        }
        pub fn receive(&self) -> ReceiveFaults {
            ReceiveFaults::default()
        }
        pub fn exit_at_source(&self, _: SourceExit) {}
        pub fn exit_after_restore(&self) {}
        pub fn delay_restored(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
        pub fn exit_after_restored_sent(&self) {}
        pub fn fill_disk(&self, _: &std::path::Path) {}
        pub fn stall(&self, _: super::StallPoint, _: &std::path::Path) -> Option<super::Stall> {
            None
        }
    }

    /// Never called: no [`ReceiveFaults`] asks for an exit in this build.
    pub fn die(_: i32, why: &str) -> ! {
        unreachable!("fault injection is not built in, yet asked for: {why}")
    }
}

pub use imp::{die, Faults};

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Cfg {
        #[serde(default)]
        faults: Faults,
    }

    #[test]
    fn no_faults_table_means_no_faults() {
        let c: Cfg = toml::from_str("").unwrap();
        assert!(!c.faults.fail_restore());
        assert!(c.faults.receive().exit_after_bytes.is_none());
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_fault_is_read_when_built_in() {
        let c: Cfg = toml::from_str("[faults]\nfail_restore = true\nsource_exit = \"after-restored\"").unwrap();
        assert!(c.faults.fail_restore());
        assert_eq!(c.faults.source_exit, Some(SourceExit::AfterRestored));
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn a_fault_is_refused_when_not_built_in() {
        let e = toml::from_str::<Cfg>("[faults]\nfail_restore = true").err().unwrap().to_string();
        assert!(e.contains("built without fault injection"), "{e}");
    }
}
