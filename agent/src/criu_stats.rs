//! CRIU's `stats-dump` and `stats-restore` files: how long a dump kept the
//! container frozen and how many pages it wrote (each round and the final
//! dump), and how long CRIU's restore took, for the report.
//!
//! ```text
//!  u32 0x55105940 (service image magic)  u32 0x57093306 (stats magic)
//!  u32 size  <size bytes: protobuf StatsEntry { optional DumpStatsEntry dump = 1; ... }>
//! ```
//!
//! `DumpStatsEntry` fields read here: `frozen_time = 2` (µs),
//! `pages_scanned = 5`, `pages_skipped_parent = 6`, `pages_written = 7`;
//! `StatsEntry.restore = 2` is a `RestoreStatsEntry`, of which
//! `restore_time = 4` (µs) is read.
//! The decoder reads only varints and length-delimited fields and stops at
//! anything else: the file comes from our own CRIU, but a truncated or
//! unexpected file must give `None`, never a panic.

use std::path::Path;

const SERVICE_MAGIC: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpStats {
    pub frozen_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
}

/// Reads `dir/stats-dump`; `None` when absent or unreadable.
pub fn read(dir: &Path) -> Option<DumpStats> {
    parse(&std::fs::read(dir.join("stats-dump")).ok()?)
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Walks a protobuf message, calling `field(number, value)` for varints and
/// `nested(number, bytes)` for length-delimited fields.
fn walk<'a>(buf: &'a [u8], mut on_varint: impl FnMut(u64, u64), mut on_bytes: impl FnMut(u64, &'a [u8])) -> Option<()> {
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        match key & 7 {
            0 => on_varint(key >> 3, varint(buf, &mut at)?),
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let end = at.checked_add(len).filter(|e| *e <= buf.len())?;
                on_bytes(key >> 3, &buf[at..end]);
                at = end;
            }
            _ => return None,
        }
    }
    Some(())
}

/// The `StatsEntry` field `number` (a nested message) of a stats file.
fn entry(file: &[u8], number: u64) -> Option<&[u8]> {
    let u32_at = |i: usize| file.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u32_at(0)? != SERVICE_MAGIC || u32_at(4)? != STATS_MAGIC {
        return None;
    }
    let size = u32_at(8)? as usize;
    let entry = file.get(12..12usize.checked_add(size)?)?;
    let mut found: Option<&[u8]> = None;
    walk(
        entry,
        |_, _| {},
        |n, b| {
            if n == number {
                found = Some(b);
            }
        },
    )?;
    found
}

/// CRIU's own time for a restore, in µs, from `dir/stats-restore`; `None`
/// when absent or unreadable.
pub fn read_restore_us(dir: &Path) -> Option<u64> {
    parse_restore_us(&std::fs::read(dir.join("stats-restore")).ok()?)
}

pub fn parse_restore_us(file: &[u8]) -> Option<u64> {
    let mut us = None;
    walk(
        entry(file, 2)?,
        |n, v| {
            if n == 4 {
                us = Some(v);
            }
        },
        |_, _| {},
    )?;
    us
}

pub fn parse(file: &[u8]) -> Option<DumpStats> {
    let mut s = DumpStats::default();
    walk(
        entry(file, 1)?,
        |n, v| match n {
            2 => s.frozen_us = v,
            5 => s.pages_scanned = v,
            6 => s.pages_skipped_parent = v,
            7 => s.pages_written = v,
            _ => {}
        },
        |_, _| {},
    )?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stats-dump of a real `runc checkpoint --leave-running` of a small
    /// busybox container on the development machine.
    const REAL: [u8; 47] = [
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x23, 0x00, 0x00, 0x00, 0x0a, 0x21, 0x08, 0xdf, 0x15, 0x10, 0xb8, 0xa4, 0x12, 0x18, 0xb8,
        0x0c, 0x20, 0x90, 0x02, 0x28, 0x2e, 0x30, 0x00, 0x38, 0x20, 0x40, 0x00, 0x48, 0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00, 0x70,
        0x00,
    ];

    #[test]
    fn reads_a_real_stats_file() {
        let s = parse(&REAL).unwrap();
        assert_eq!(s, DumpStats { frozen_us: 299_576, pages_scanned: 46, pages_skipped_parent: 0, pages_written: 32 });
    }

    #[test]
    fn reads_a_restore_stats_file() {
        // StatsEntry { restore: RestoreStatsEntry { pages_compared: 3,
        // pages_skipped_cow: 0, forking_time: 1200, restore_time: 85000,
        // pages_restored: 40 } }, as CRIU's protobuf-c writes it.
        let body = [0x12, 0x0d, 0x08, 0x03, 0x10, 0x00, 0x18, 0xb0, 0x09, 0x20, 0x88, 0x98, 0x05, 0x28, 0x28];
        let mut file = vec![0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, body.len() as u8, 0, 0, 0];
        file.extend_from_slice(&body);
        assert_eq!(parse_restore_us(&file), Some(85_000));
        assert_eq!(parse(&file), None, "no dump entry in it");
        assert_eq!(parse_restore_us(&REAL), None, "no restore entry in a dump's");
    }

    #[test]
    fn truncated_or_foreign_files_give_none() {
        for n in 0..REAL.len() {
            assert!(parse(&REAL[..n]).is_none() || n >= 12, "prefix of {n} bytes");
        }
        let mut bad = REAL;
        bad[0] = 0;
        assert!(parse(&bad).is_none());
        let mut huge = REAL;
        huge[8] = 0xff;
        huge[11] = 0x7f;
        assert!(parse(&huge).is_none());
        // Every truncation of the payload is either None or a partial read, never a panic.
        for n in 12..REAL.len() {
            let mut t = REAL[..n].to_vec();
            t[8] = (n - 12) as u8;
            let _ = parse(&t);
        }
    }
}
