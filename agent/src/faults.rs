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

/// Where the source agent dies, as if killed, after the freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceExit {
    /// Once the checkpoint is dumped and streamed, before telling the
    /// target: the target never restores, and drops what it staged.
    BeforeCheckpointSent,
    /// Once the target answered that the container runs there, before the
    /// source removed its copy: the target keeps it.
    AfterRestored,
}

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
        /// the container, before confirming it (its successor must remove it).
        #[serde(default)]
        pub exit_after_restore: bool,
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
