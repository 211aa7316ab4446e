//! The host's bandwidth cap: one token bucket for every outgoing data
//! stream of every migration under way (images, pre-copy rounds, the
//! frozen checkpoint), charged with the bytes that go on the stream (after
//! compression), before they are written.
//!
//! The agent holds one [`Limiter`] (`context.rs`), set to its `[limits]
//! bandwidth`; each migration joins it with the cap its request asked
//! for and gets a [`Pace`], which its senders take tokens through. The
//! bucket's rate is the lowest of the ceiling and the caps of the moves
//! under way ([`tern_proto::bandwidth::host_rate`]); it holds about
//! [`BURST`] worth of tokens, so a stream that was idle starts at once.
//!
//! The arithmetic ([`Bucket`]) takes the time as an argument, so tests
//! drive it with a made-up clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tern_proto::bandwidth::{effective_cap, host_rate};

/// How much a full bucket holds, in time at its rate.
pub const BURST: Duration = Duration::from_millis(100);

/// The most bytes a sender takes tokens for at once: small enough that
/// streams sharing the bucket take turns often, large enough that the
/// lock is taken rarely (about 2000 times a second at 1 Gbit/s).
const PIECE: usize = 64 << 10;

/// A token bucket: `rate` bytes per second, up to `burst` bytes saved
/// while nobody sends. Senders take tokens for what they are about to
/// send and wait for the debt when the bucket runs dry: takers queue in
/// the order they came, each waiting for everything taken before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    /// Below zero: bytes promised to senders that the rate has not paid for.
    tokens: f64,
    /// The time of `tokens`, on the caller's clock.
    at: Duration,
}

impl Bucket {
    /// A full bucket for `rate` bytes per second (> 0), at `now`.
    pub fn new(rate: u64, now: Duration) -> Bucket {
        let burst = burst(rate);
        Bucket { rate: rate as f64, burst, tokens: burst, at: now }
    }

    /// The rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Changes the rate from `now` on: what was saved or owed stays
    /// (saved tokens up to the new burst).
    pub fn set_rate(&mut self, rate: u64, now: Duration) {
        self.refill(now);
        self.rate = rate as f64;
        self.burst = burst(rate);
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, now: Duration) {
        if now > self.at {
            self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.burst);
            self.at = now;
        }
    }

    /// Takes `n` bytes' tokens at `now`; returns how long the caller must
    /// wait before sending them (zero when the bucket held them).
    pub fn take(&mut self, n: u64, now: Duration) -> Duration {
        self.refill(now);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// [`BURST`] worth of bytes at `rate`, and at least a packet's.
fn burst(rate: u64) -> f64 {
    (rate as f64 * BURST.as_secs_f64()).max(1500.0)
}

/// The host's one bucket, and the caps the migrations under way asked for.
pub struct Limiter {
    /// The agent's own cap, bytes per second (0: none).
    ceiling: u64,
    origin: Instant,
    state: Mutex<State>,
}

struct State {
    /// The cap each migration under way asked for (0: none), one entry each.
    asked: Vec<u64>,
    /// None while no cap holds.
    bucket: Option<Bucket>,
}

impl Limiter {
    pub fn new(ceiling: u64) -> Limiter {
        let origin = Instant::now();
        let bucket = (ceiling > 0).then(|| Bucket::new(ceiling, Duration::ZERO));
        Limiter { ceiling, origin, state: Mutex::new(State { asked: Vec::new(), bucket }) }
    }

    /// The agent's own cap (bytes per second, 0: none).
    pub fn ceiling(&self) -> u64 {
        self.ceiling
    }

    /// The rate the host's traffic is capped at now (0: none).
    pub fn rate(&self) -> u64 {
        self.state.lock().unwrap().bucket.as_ref().map_or(0, Bucket::rate)
    }

    /// A migration starts, asking for `asked` (bytes per second, 0: none):
    /// its senders pace through the [`Pace`], until it is dropped.
    pub fn join(&self, asked: u64) -> Pace<'_> {
        let mut st = self.state.lock().unwrap();
        st.asked.push(asked);
        self.update(&mut st);
        Pace { limiter: Some(self), asked, cap: effective_cap(self.ceiling, asked), throttled_us: AtomicU64::new(0) }
    }

    fn leave(&self, asked: u64) {
        let mut st = self.state.lock().unwrap();
        if let Some(i) = st.asked.iter().position(|a| *a == asked) {
            st.asked.swap_remove(i);
        }
        self.update(&mut st);
    }

    fn update(&self, st: &mut State) {
        let rate = host_rate(self.ceiling, st.asked.iter().copied());
        let now = self.origin.elapsed();
        match (&mut st.bucket, rate) {
            (_, 0) => st.bucket = None,
            (Some(b), r) => {
                if b.rate() != r {
                    b.set_rate(r, now);
                }
            }
            (None, r) => st.bucket = Some(Bucket::new(r, now)),
        }
    }

    /// Takes `n` bytes' tokens; returns how long to wait before sending.
    fn take(&self, n: usize) -> Duration {
        let mut st = self.state.lock().unwrap();
        let now = self.origin.elapsed();
        st.bucket.as_mut().map_or(Duration::ZERO, |b| b.take(n as u64, now))
    }
}

/// One migration's way through the host's bucket: its senders call
/// [`Pace::send`] with what they are about to write. Counts how long they
/// waited.
pub struct Pace<'a> {
    limiter: Option<&'a Limiter>,
    asked: u64,
    cap: u64,
    throttled_us: AtomicU64,
}

impl Pace<'static> {
    /// No cap at all (streams of no migration, tests).
    pub fn unlimited() -> Pace<'static> {
        Pace { limiter: None, asked: 0, cap: 0, throttled_us: AtomicU64::new(0) }
    }
}

impl Pace<'_> {
    /// This migration's own cap: the lower of the agent's and the
    /// request's (bytes per second, 0: none).
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The rate the host's traffic is capped at now, this migration's
    /// cap or a lower one another move asked for (0: none).
    pub fn rate_now(&self) -> u64 {
        self.limiter.map_or(0, Limiter::rate)
    }

    /// How long this migration's senders waited for the cap, so far.
    pub fn throttled(&self) -> Duration {
        Duration::from_micros(self.throttled_us.load(Ordering::Relaxed))
    }

    /// The pieces `bytes` is to be written in, each once its tokens are
    /// taken ([`Pace::wait_for`]).
    pub fn pieces<'b>(&self, bytes: &'b [u8]) -> std::slice::Chunks<'b, u8> {
        bytes.chunks(if self.limiter.is_some() { PIECE } else { usize::MAX })
    }

    /// Waits until `n` bytes may go on the wire.
    pub async fn wait_for(&self, n: usize) {
        let Some(limiter) = self.limiter else { return };
        let wait = limiter.take(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            self.throttled_us.fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for Pace<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.limiter {
            l.leave(self.asked);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() {
        // 10 MB/s: 1 MB of burst.
        let mut b = Bucket::new(10_000_000, Duration::ZERO);
        assert_eq!(b.take(1_000_000, Duration::ZERO), Duration::ZERO, "the burst");
        assert_eq!(b.take(500_000, Duration::ZERO), ms(50));
        // The next taker queues behind the debt.
        assert_eq!(b.take(500_000, Duration::ZERO), ms(100));
        // Time pays the debt back.
        assert_eq!(b.take(0, ms(100)), Duration::ZERO);
        assert_eq!(b.take(1_000_000, ms(200)), Duration::ZERO, "100 ms later the bucket is full again");
        assert_eq!(b.take(1_000_000, ms(200)), ms(100));
    }

    #[test]
    fn a_long_transfer_takes_its_size_over_the_rate_less_the_burst() {
        let rate = 25_000_000; // 200 Mbit/s
        let mut b = Bucket::new(rate, Duration::ZERO);
        let (mut now, total) = (Duration::ZERO, 100_000_000u64);
        let mut sent = 0;
        while sent < total {
            now += b.take(65_536, now); // wait, then send
            sent += 65_536;
        }
        let ideal = (sent as f64 - burst(rate)) / rate as f64;
        assert!((now.as_secs_f64() - ideal).abs() < 1e-3, "{now:?} against {ideal}");
    }

    #[test]
    fn an_idle_bucket_saves_no_more_than_the_burst() {
        let mut b = Bucket::new(10_000_000, Duration::ZERO);
        assert_eq!(b.take(1_000_000, Duration::ZERO), Duration::ZERO);
        // An hour idle still saves only 100 ms worth.
        let hour = Duration::from_secs(3600);
        assert_eq!(b.take(1_000_000, hour), Duration::ZERO);
        assert_eq!(b.take(1_000_000, hour), ms(100));
    }

    #[test]
    fn a_new_rate_applies_from_then_on() {
        let mut b = Bucket::new(10_000_000, Duration::ZERO);
        assert_eq!(b.take(2_000_000, Duration::ZERO), ms(100));
        // Lower at 100 ms (the debt is paid): the burst shrinks with it.
        b.set_rate(1_000_000, ms(100));
        assert_eq!(b.rate(), 1_000_000);
        assert_eq!(b.take(100_000, ms(100)), ms(100));
        b.set_rate(10_000_000, ms(200));
        assert_eq!(b.take(1_000_000, ms(300)), Duration::ZERO, "refilled at the new rate up to its burst");
    }

    #[test]
    fn a_slow_cap_still_holds_a_packet() {
        assert_eq!(burst(1000), 1500.0);
        assert_eq!(burst(125_000_000), 12_500_000.0);
    }

    #[test]
    fn the_limiter_follows_the_moves_under_way() {
        let l = Limiter::new(62_500_000); // 500 Mbit/s
        assert_eq!(l.rate(), 62_500_000);
        let a = l.join(0);
        assert_eq!((a.cap(), a.rate_now()), (62_500_000, 62_500_000));
        let b = l.join(125_000_000);
        assert_eq!(b.cap(), 62_500_000, "a request never raises the ceiling");
        let c = l.join(25_000_000);
        assert_eq!(c.cap(), 25_000_000);
        assert_eq!(a.rate_now(), 25_000_000, "the lowest cap under way holds for the host");
        drop(c);
        assert_eq!(l.rate(), 62_500_000);
        drop((a, b));
        assert_eq!(l.rate(), 62_500_000);

        let open = Limiter::new(0);
        assert_eq!(open.rate(), 0);
        let a = open.join(25_000_000);
        assert_eq!(open.rate(), 25_000_000);
        drop(a);
        assert_eq!(open.rate(), 0, "no cap once the move that asked for one ended");
        assert_eq!(Pace::unlimited().rate_now(), 0);
        assert_eq!(Pace::unlimited().pieces(&[0u8; 300_000]).count(), 1);
        assert_eq!(open.join(1_000_000).pieces(&[0u8; 300_000]).count(), 5);
    }
}
