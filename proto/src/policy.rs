//! When to stop copying memory and freeze: the pre-copy convergence policy.
//!
//! After each pre-copy round the source asks [`decide`] whether to run
//! another round, freeze for the final dump now, or give up. The rules, in
//! the order they apply:
//!
//! 1. **Timeout**: past `timeout`, either freeze now or cancel (back to the
//!    source untouched), as the user chose.
//! 2. **Fits the downtime target**: the pages the final dump will hold (as
//!    many as the last round found dirty) can be sent within `max_downtime`
//!    at the measured link rate: freeze now.
//! 3. **Converged**: the last round wrote fewer than `min_pages` pages
//!    (P.Haul stops under 64): freeze now.
//! 4. **Not converging**: the last round is not at least `min_shrink_pct`
//!    percent smaller than the one before. P.Haul stops only when a round
//!    *grows* by more than 10 %; that misses the worst case, a workload
//!    writing faster than the link, where every round is all of memory and
//!    rounds neither grow nor shrink (found by the simulation tests below).
//! 5. **Max rounds**: `max_rounds` reached.
//!
//! Otherwise: another round. The function is pure; tests drive it with
//! made-up histories.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the user asked for. Travels in the migration request, so the
/// source agent applies exactly what the coordinator was told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// The transfer time allowed for the final dump's pages at the measured
    /// link rate. Dump and restore add to the downtime; rounds cannot
    /// shorten those.
    pub max_downtime: Duration,
    pub max_rounds: u32,
    pub min_pages: u64,
    /// How much smaller than the previous round a round must be for
    /// iteration to go on, in percent (10 = at least 10 % fewer pages).
    pub min_shrink_pct: u32,
    /// For the whole pre-copy phase, checked after every round's dump.
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            max_downtime: Duration::from_millis(300),
            max_rounds: 8,
            min_pages: 64,
            min_shrink_pct: 10,
            timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Cancel,
        }
    }
}

/// What to do when the overall timeout expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnTimeout {
    Invalid,
    /// Give up: the container keeps running on the source.
    Cancel,
    /// Freeze now, whatever the downtime.
    Switchover,
}

/// One finished pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// Pages this round dumped (all of memory for the first round, the
    /// pages written since the previous round afterwards).
    pub pages: u64,
    pub bytes: u64,
    /// From the previous round's dump to this one's: the window in which
    /// this round's pages were written.
    pub duration: Duration,
}

impl Round {
    /// Pages written per second in this round's window.
    pub fn dirty_rate(&self) -> f64 {
        self.pages as f64 / self.duration.as_secs_f64().max(1e-3)
    }
}

/// Why iteration stopped: goes into the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    Invalid,
    FitsDowntime {
        estimated_ms: u64,
    },
    Converged {
        pages: u64,
    },
    NotConverging {
        previous_pages: u64,
        pages: u64,
    },
    MaxRounds {
        rounds: u32,
    },
    Timeout,
    /// Content-addressed pre-copy ships one full dump, no more.
    BaseShipped,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Invalid => write!(f, "invalid"),
            StopReason::FitsDowntime { estimated_ms } => {
                write!(f, "the final dump fits the downtime target (estimated {estimated_ms} ms of transfer)")
            }
            StopReason::Converged { pages } => write!(f, "converged: the last round wrote only {pages} pages"),
            StopReason::NotConverging { previous_pages, pages } => write!(
                f,
                "not converging: a round of {previous_pages} pages was followed by one of {pages} (the container writes memory nearly as fast as it is copied, or faster)"
            ),
            StopReason::MaxRounds { rounds } => write!(f, "reached the maximum of {rounds} rounds"),
            StopReason::Timeout => write!(f, "the pre-copy timeout expired"),
            StopReason::BaseShipped => {
                write!(f, "the base dump is on the target; the final dump sends only the pages it lacks")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run another round.
    Continue,
    /// Freeze for the final dump now.
    Freeze(StopReason),
    /// Give up without freezing.
    Cancel(StopReason),
}

/// The decision after the rounds in `history` (oldest first), with the link
/// measured at `link_bytes_per_sec`, `elapsed` since pre-copy started.
pub fn decide(cfg: &PolicyConfig, history: &[Round], link_bytes_per_sec: f64, elapsed: Duration) -> Decision {
    if elapsed >= cfg.timeout {
        return match cfg.on_timeout {
            OnTimeout::Switchover => Decision::Freeze(StopReason::Timeout),
            _ => Decision::Cancel(StopReason::Timeout),
        };
    }
    let Some(last) = history.last() else {
        return Decision::Continue;
    };
    // The first round copies everything; what the final dump would hold is
    // only known from the second round on.
    if history.len() >= 2 {
        let estimated = last.bytes as f64 / link_bytes_per_sec.max(1.0);
        let estimated_ms = (estimated * 1000.0).round() as u64;
        if Duration::from_secs_f64(estimated) <= cfg.max_downtime {
            return Decision::Freeze(StopReason::FitsDowntime { estimated_ms });
        }
        if last.pages < cfg.min_pages {
            return Decision::Freeze(StopReason::Converged { pages: last.pages });
        }
        let prev = history[history.len() - 2];
        if last.pages * 100 > prev.pages * (100 - cfg.min_shrink_pct.min(100) as u64) {
            return Decision::Freeze(StopReason::NotConverging { previous_pages: prev.pages, pages: last.pages });
        }
    }
    if history.len() as u32 >= cfg.max_rounds {
        return Decision::Freeze(StopReason::MaxRounds { rounds: history.len() as u32 });
    }
    Decision::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const LINK: f64 = 100.0 * MIB as f64; // 100 MiB/s

    fn round(mib: u64, ms: u64) -> Round {
        Round { pages: mib * 256, bytes: mib * MIB, duration: Duration::from_millis(ms) }
    }

    #[test]
    fn first_round_always_continues() {
        let cfg = PolicyConfig::default();
        assert_eq!(decide(&cfg, &[], LINK, Duration::ZERO), Decision::Continue);
        assert_eq!(decide(&cfg, &[round(256, 3000)], LINK, Duration::from_secs(3)), Decision::Continue);
    }

    #[test]
    fn freezes_once_the_last_round_fits_the_downtime_target() {
        let cfg = PolicyConfig::default();
        // 20 MiB at 100 MiB/s is 200 ms, within 300 ms.
        let h = [round(256, 3000), round(20, 400)];
        assert_eq!(decide(&cfg, &h, LINK, Duration::from_secs(4)), Decision::Freeze(StopReason::FitsDowntime { estimated_ms: 200 }));
        // 60 MiB would take 600 ms: keep going.
        let h = [round(256, 3000), round(60, 800)];
        assert_eq!(decide(&cfg, &h, LINK, Duration::from_secs(4)), Decision::Continue);
    }

    #[test]
    fn tiny_rounds_converge_even_on_a_slow_link() {
        let cfg = PolicyConfig::default();
        let h = [round(256, 3000), Round { pages: 10, bytes: 40960, duration: Duration::from_millis(50) }];
        assert_eq!(decide(&cfg, &h, 1.0, Duration::from_secs(4)), Decision::Freeze(StopReason::Converged { pages: 10 }));
    }

    #[test]
    fn rounds_that_do_not_shrink_stop_iteration() {
        let cfg = PolicyConfig::default();
        for (prev, last) in [(100, 115), (100, 100), (100, 95)] {
            let h = [round(256, 3000), round(prev, 1000), round(last, 1100)];
            assert_eq!(
                decide(&cfg, &h, LINK, Duration::from_secs(6)),
                Decision::Freeze(StopReason::NotConverging { previous_pages: prev * 256, pages: last * 256 }),
                "{prev} -> {last}"
            );
        }
        // At least 10 % smaller: keep going.
        let h = [round(256, 3000), round(100, 1000), round(90, 1000)];
        assert_eq!(decide(&cfg, &h, LINK, Duration::from_secs(6)), Decision::Continue);
    }

    #[test]
    fn max_rounds_caps_iteration() {
        let cfg = PolicyConfig { max_rounds: 3, ..Default::default() };
        let h = [round(256, 3000), round(100, 1000), round(80, 1000)];
        assert_eq!(decide(&cfg, &h, LINK, Duration::from_secs(6)), Decision::Freeze(StopReason::MaxRounds { rounds: 3 }));
    }

    #[test]
    fn timeout_cancels_or_switches_over_as_chosen() {
        let h = [round(256, 3000), round(100, 1000)];
        let cancel = PolicyConfig { timeout: Duration::from_secs(5), ..Default::default() };
        assert_eq!(decide(&cancel, &h, LINK, Duration::from_secs(5)), Decision::Cancel(StopReason::Timeout));
        let force = PolicyConfig { on_timeout: OnTimeout::Switchover, ..cancel };
        assert_eq!(decide(&force, &h, LINK, Duration::from_secs(5)), Decision::Freeze(StopReason::Timeout));
    }

    #[test]
    fn dirty_rate_is_pages_per_second() {
        assert_eq!(round(1, 500).dirty_rate(), 512.0);
    }

    #[test]
    fn reasons_read_as_sentences() {
        let s = StopReason::NotConverging { previous_pages: 1, pages: 2 }.to_string();
        assert!(s.contains("a round of 1 pages was followed by one of 2"), "{s}");
    }

    /// Runs the policy against a simulated container: `pages` of memory,
    /// `dirty` pages written per second (to distinct pages, capped at all of
    /// memory), a link of `link` bytes per second and `overhead` per round
    /// (the dump). Returns the rounds' page counts and the decision.
    fn simulate(cfg: &PolicyConfig, pages: u64, dirty: f64, link: f64, overhead: f64) -> (Vec<u64>, Decision) {
        let mut history = Vec::new();
        let mut elapsed = 0.0;
        let mut next = pages;
        loop {
            let secs = overhead + (next * 4096) as f64 / link;
            elapsed += secs;
            history.push(Round { pages: next, bytes: next * 4096, duration: Duration::from_secs_f64(secs) });
            match decide(cfg, &history, link, Duration::from_secs_f64(elapsed)) {
                Decision::Continue => next = ((dirty * secs) as u64).min(pages),
                d => return (history.iter().map(|r| r.pages).collect(), d),
            }
        }
    }

    #[test]
    fn a_slow_writer_converges_in_a_few_shrinking_rounds() {
        // 256 MiB, 5 MiB/s written, 1 Gbit/s: rounds shrink by ~20x each.
        let cfg = PolicyConfig::default();
        let (rounds, d) = simulate(&cfg, 65_536, 1_280.0, 125e6, 0.2);
        assert!(matches!(d, Decision::Freeze(StopReason::FitsDowntime { .. })), "{d:?} after {rounds:?}");
        assert!(rounds.len() >= 2 && rounds.len() <= 4, "{rounds:?}");
        assert!(rounds.windows(2).all(|w| w[1] < w[0]), "{rounds:?}");
    }

    #[test]
    fn a_writer_faster_than_the_link_stops_early_instead_of_looping() {
        // 1 GiB, written at 200 MiB/s over 100 Mbit/s: every round is all of memory.
        let cfg = PolicyConfig::default();
        let (rounds, d) = simulate(&cfg, 262_144, 51_200.0, 12.5e6, 0.2);
        assert!(rounds.len() <= 3, "{rounds:?}");
        assert!(matches!(d, Decision::Freeze(StopReason::NotConverging { .. } | StopReason::MaxRounds { .. })), "{d:?}");
    }

    #[test]
    fn a_writer_near_the_link_rate_stops_when_rounds_stop_paying() {
        // Rounds shrink by only 5 % each: freeze at once rather than crawl.
        let link = 125e6;
        let (rounds, d) = simulate(&PolicyConfig::default(), 65_536, 0.95 * link / 4096.0, link, 0.0);
        assert!(matches!(d, Decision::Freeze(StopReason::NotConverging { .. })), "{d:?}");
        assert_eq!(rounds.len(), 2, "{rounds:?}");
        // Halving rounds go on until they fit, or up to max_rounds.
        let (rounds, d) = simulate(&PolicyConfig::default(), 262_144, 0.5 * link / 4096.0, link, 0.0);
        assert!(matches!(d, Decision::Freeze(StopReason::FitsDowntime { .. })), "{d:?} {rounds:?}");
        let cfg = PolicyConfig { max_rounds: 3, ..Default::default() };
        let (rounds, d) = simulate(&cfg, 262_144, 0.5 * link / 4096.0, link, 0.0);
        assert_eq!(d, Decision::Freeze(StopReason::MaxRounds { rounds: 3 }), "{rounds:?}");
    }
}
