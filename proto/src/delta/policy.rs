//! When compression pays: zstd is tried on a raw run and kept only when it
//! saves at least 10 % ([`compress_run`]); after a run where it did not,
//! [`Packer`] skips 1, then 2, 4, at most 8 runs before trying again.
//! Incompressible memory (encrypted, random, already compressed) then costs
//! a try of one run in nine, not a compression of everything, and
//! compressible memory after it is found again within nine runs.
//!
//! These decisions shape the bytes on the wire; [`super::Compressor`] is
//! the one place that applies them.

/// When to try compressing the next raw run: after a run that did not
/// shrink by 10 %, skip 1, then 2, 4, at most 8 runs (module docs).
#[derive(Debug, Clone)]
pub struct Packer {
    pub level: i32,
    /// Runs to send without trying.
    skip: u32,
    /// How many runs the next failure skips (doubles up to 8).
    backoff: u32,
}

impl Packer {
    pub fn new(level: i32) -> Self {
        Packer { level, skip: 0, backoff: 1 }
    }

    /// Whether to try the next run (false while backing off).
    pub fn want(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// What a try gave: compression paid, or not.
    pub fn tried(&mut self, paid: bool) {
        if paid {
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(8);
        }
    }
}

/// `run` compressed at `level`, when that saves at least 10 %.
pub fn compress_run(run: &[u8], level: i32) -> Option<Vec<u8>> {
    let packed = zstd::bulk::compress(run, level).ok()?;
    (!packed.is_empty() && packed.len() * 10 <= run.len() * 9).then_some(packed)
}
