//! Human output: tables, sizes, durations, the migration report.

use tern_proto::bandwidth::format_rate;
use tern_proto::compat::Finding;
use tern_proto::facts::ContainerInfo;
use tern_proto::{MigrationReport, Mode, Outcome};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "256MiB", "1 GiB", "4096", "10kib": a size in bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 256MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s} is too large"))
}

pub fn ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// Left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i == widths.len() {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

pub fn findings(f: &[Finding]) -> String {
    let rows: Vec<Vec<String>> =
        f.iter().map(|x| vec![x.severity.as_str().to_string(), x.field.clone(), x.source.clone(), x.target.clone(), x.note.clone()]).collect();
    table(&["", "field", "source", "target", "note"], &rows)
}

/// What the source's bandwidth cap (bytes per second, 0: none) means for
/// moving `c` in `mode`, for `tern check`.
pub fn bandwidth_note(source: &str, cap: u64, c: &ContainerInfo, mode: Mode) -> String {
    if cap == 0 {
        return format!("bandwidth: {source}'s agent sets no cap on its outgoing migrations (--bandwidth sets one for a move)");
    }
    let held = c.memory_bytes.saturating_add(c.files_bytes);
    let secs = held as f64 / cap as f64;
    let when = if mode.has_rounds() {
        "mostly before the freeze; what changed since crosses frozen, at the cap too"
    } else {
        "all of it frozen: the cap lengthens the downtime"
    };
    format!(
        "bandwidth: {source}'s agent caps its outgoing migrations at {} in all ([limits] bandwidth; --bandwidth may only lower it): \
         ~{} of memory and files take at least {:.1} s to cross, {when}",
        format_rate(cap),
        bytes(held),
        secs
    )
}

pub fn outcome_word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::Refused { .. } => "refused",
        Outcome::RolledBack { .. } => "rolled-back",
        Outcome::Failed { .. } => "failed",
        Outcome::Undecided { .. } => "undecided",
        Outcome::Invalid => "invalid",
    }
}

/// Why a migration that did not complete failed, in one line (None once
/// it completed).
pub fn failure_text(r: &MigrationReport) -> Option<String> {
    Some(match &r.outcome {
        Outcome::Completed => return None,
        Outcome::Refused { failure } => format!("{} was not migrated: {failure}; it still runs on {}", r.container, r.source),
        Outcome::RolledBack { failure } => format!("{} was not migrated: {failure}; rolled back, it runs again on {}", r.container, r.source),
        Outcome::Failed { failure, rollback_error } => {
            format!("{} was not migrated: {failure}; the rollback failed too: {rollback_error}", r.container)
        }
        Outcome::Undecided { failure, detail } => format!("{}: in doubt after {failure}: {detail}", r.container),
        Outcome::Invalid => format!("{}: the source agent sent an invalid report", r.container),
    })
}

/// The report for people; `forced`: the refusals `--force-compat` lifted
/// for the move.
pub fn report_text(r: &MigrationReport, forced: &[Finding]) -> String {
    let mut s = String::new();
    let head = match &r.outcome {
        Outcome::Completed => format!("{} moved from {} to {} ({})", r.container, r.source, r.target, r.mode.as_str()),
        Outcome::Refused { failure } => {
            format!("{} was NOT migrated: {failure}.\nNothing was frozen; {} still runs on {}.", r.container, r.container, r.source)
        }
        Outcome::RolledBack { failure } => format!(
            "{} was NOT migrated: {failure}.\nRolled back: {} runs again on {}, from the state it was frozen in.",
            r.container, r.container, r.source
        ),
        Outcome::Failed { failure, rollback_error } => {
            format!("{} was NOT migrated: {failure}.\nThe rollback failed too: {rollback_error}", r.container)
        }
        Outcome::Undecided { failure, detail } => format!("{} is IN DOUBT: {failure}.\n{detail}.", r.container),
        Outcome::Invalid => "invalid report".into(),
    };
    s.push_str(&head);
    s.push('\n');
    if let Some(d) = r.downtime_ms {
        let until =
            if matches!(r.outcome, Outcome::Completed) { format!("running on {}", r.target) } else { format!("running again on {}", r.source) };
        s.push_str(&format!("  downtime     {}  (frozen until {until})\n", ms(d)));
    }
    if let Some(f) = r.memory_fill_ms {
        s.push_str(&format!("  memory       restored lazily: resumed first, all in place {} later\n", ms(f)));
    }
    s.push_str(&format!("  total        {}\n", ms(r.total_ms)));
    let saved = match (r.saved_bytes, r.mode) {
        (0, _) => String::new(),
        // Post-copy on a base: the fill's pages, not the archive's.
        (b, Mode::PostCopy) => format!("; {} of the memory taken from the base on the target", bytes(b)),
        (b, _) => format!(", {} of it already on the target", bytes(b)),
    };
    s.push_str(&format!(
        "  on the wire  {}  (checkpoint archive {}{saved}, image {})\n",
        bytes(r.bytes_on_wire),
        bytes(r.checkpoint_bytes),
        bytes(r.image_bytes)
    ));
    if r.bandwidth > 0 {
        s.push_str(&format!(
            "  bandwidth    capped at {} on {}'s outgoing moves; the streams waited {} for the cap\n",
            format_rate(r.bandwidth),
            r.source,
            ms(r.throttled_ms)
        ));
    }
    if r.zstd_in > 0 {
        s.push_str(&format!("  compressed   {} into {} (zstd, where it paid)\n", bytes(r.zstd_in), bytes(r.zstd_out)));
    }
    if r.final_pages > 0 || r.final_frozen_ms > 0 {
        s.push_str(&format!("  final dump   {} pages ({}), CRIU frozen {}\n", r.final_pages, bytes(r.final_pages * 4096), ms(r.final_frozen_ms)));
    }
    if !r.rounds.is_empty() {
        s.push_str("  pre-copy rounds (the container ran during these; \"paused\" is CRIU's freeze inside each dump):\n");
        let rows: Vec<Vec<String>> = r
            .rounds
            .iter()
            .map(|x| {
                vec![
                    x.round.to_string(),
                    x.pages.to_string(),
                    bytes(x.bytes),
                    ms(x.dump_ms),
                    ms(x.frozen_ms),
                    ms(x.transfer_ms),
                    if x.round == 1 { "-".into() } else { format!("{}/s", bytes(x.dirty_pages_per_s * 4096)) },
                ]
            })
            .collect();
        for line in table(&["round", "pages", "sent", "dump", "paused", "transfer", "dirty rate"], &rows).lines() {
            s.push_str(&format!("    {line}\n"));
        }
    }
    if let Some(why) = &r.stop_reason {
        s.push_str(&format!("  stopped      {why}\n"));
    }
    if !r.phases.is_empty() {
        let p: Vec<String> = r.phases.iter().map(|p| format!("{} {}", p.phase.as_str(), ms(p.ms))).collect();
        s.push_str(&format!("  phases       {}\n", p.join(" · ")));
    }
    if !r.frozen.is_empty() {
        let p: Vec<String> = r.frozen.iter().map(|p| format!("{} {}", p.step.as_str(), ms(p.ms))).collect();
        s.push_str(&format!("  frozen       {}\n", p.join(" · ")));
    }
    if !forced.is_empty() {
        let f: Vec<String> = forced.iter().map(|f| format!("{} ({} → {})", f.field, f.source, f.target)).collect();
        s.push_str(&format!("  forced       {}: refused by the check, moved as --force-compat asked\n", f.join(", ")));
    }
    for w in &r.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
        assert_eq!(ms(812), "812 ms");
        assert_eq!(ms(1430), "1.43 s");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10k"), Ok(10 << 10));
        assert!(parse_size("MiB").is_err() && parse_size("5 parsecs").is_err() && parse_size("99999999999999G").is_err());
    }

    #[test]
    fn check_says_what_the_cap_costs() {
        let c: ContainerInfo = serde_json::from_value(serde_json::json!({
            "name": "hog", "id": "1", "image": "i", "image_id": "i", "state": "running", "ips": [], "memory_bytes": 256u64 << 20,
            "files_bytes": 0, "volumes": [], "pid": 1, "networks": [], "ports": [], "connections": [], "process_uids": []
        }))
        .unwrap();
        let n = bandwidth_note("client1", 25_000_000, &c, Mode::StopAndCopy);
        assert!(n.contains("200 Mbit/s") && n.contains("256.0 MiB") && n.contains("10.7 s") && n.contains("downtime"), "{n}");
        assert!(bandwidth_note("client1", 25_000_000, &c, Mode::HashPreCopy).contains("before the freeze"));
        assert!(bandwidth_note("client1", 0, &c, Mode::StopAndCopy).contains("no cap"));
    }

    #[test]
    fn the_report_lists_what_was_forced() {
        let r = MigrationReport {
            id: 1,
            container: "web".into(),
            source: "a".into(),
            target: "b".into(),
            mode: Mode::StopAndCopy,
            outcome: Outcome::Completed,
            downtime_ms: Some(900),
            total_ms: 2000,
            bytes_on_wire: 1,
            image_bytes: 0,
            checkpoint_bytes: 1,
            final_pages: 0,
            final_frozen_ms: 0,
            saved_bytes: 0,
            zstd_in: 0,
            zstd_out: 0,
            phases: vec![],
            frozen: vec![],
            memory_fill_ms: None,
            images_in_ram: Default::default(),
            rounds: vec![],
            stop_reason: None,
            warnings: vec![],
            bandwidth: 0,
            throttled_ms: 0,
        };
        assert!(!report_text(&r, &[]).contains("forced"));
        let f = Finding {
            field: "oci runtime".into(),
            source: "crun".into(),
            target: "runc".into(),
            severity: tern_proto::compat::Severity::Forced,
            note: String::new(),
        };
        let text = report_text(&r, &[f]);
        assert!(text.contains("  forced       oci runtime (crun → runc): refused by the check, moved as --force-compat asked\n"), "{text}");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "a    bb\nxxx  y\n");
    }
}
