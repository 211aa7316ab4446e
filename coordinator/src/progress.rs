//! A migration's progress on stderr: one updating line on a terminal,
//! plain lines otherwise. Where the coordinator knows how many bytes a
//! phase moves, the line says how far along it is and how long is left.
//!
//! The agent's `Progress` carries the bytes done in the phase, not its
//! total. The total is known here for the archives that hold the whole
//! container (its memory and files, as `tern ps` sizes them): the base of
//! content-addressed pre-copy and the final archive of stop-and-copy and
//! content-addressed pre-copy. Soft-dirty rounds and the image have no
//! total the coordinator knows.

use crate::output;
use std::io::{IsTerminal, Write};
use tern_proto::{Mode, Phase, Progress};

/// The bytes a phase reads when the coordinator can tell ahead: a full
/// checkpoint archive is about the container's memory plus its files
/// (root file system changes and volumes). An estimate: the archive adds
/// CRIU's other images and the tar's headers, and memory moves.
pub fn expected_bytes(mode: Mode, phase: Phase, memory_bytes: u64, files_bytes: u64) -> Option<u64> {
    if memory_bytes == 0 {
        return None; // unknown (0 when the agent could not read it)
    }
    let archive = memory_bytes.saturating_add(files_bytes);
    match (mode, phase) {
        // The base: a full checkpoint taken while the container runs.
        (Mode::HashPreCopy, Phase::PreCopy) => Some(archive),
        // The final archive, read in full (content-addressed pre-copy
        // sends only what the target lacks, but reads it all).
        (Mode::StopAndCopy | Mode::HashPreCopy, Phase::Checkpoint) => Some(archive),
        _ => None,
    }
}

/// "~5 s left": whole seconds below a minute, then minutes and seconds.
pub fn time_left(secs: f64) -> String {
    let s = secs.max(0.0).ceil() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// " 17 % of ~256.0 MiB, ~5 s left": how far `done` is into `total`
/// bytes, at `rate` bytes a second. An estimated total can be passed: the
/// percentage stops at 99 until the phase ends, and the time left is left
/// out then.
pub fn how_far(done: u64, total: u64, rate: f64) -> String {
    if total == 0 {
        return String::new();
    }
    let pct = (done as f64 * 100.0 / total as f64).floor().min(99.0) as u64;
    let mut s = format!("{pct:>2} % of ~{}", output::bytes(total));
    if done < total && rate > 0.0 {
        s.push_str(&format!(", ~{} left", time_left((total - done) as f64 / rate)));
    }
    s
}

/// One progress line: elapsed time, phase, bytes, rate, how far (when the
/// total is known), the agent's note.
pub fn line(p: &Progress, rate: f64, far: &str) -> String {
    let mut line = format!("[{:>7}] {:<10}", output::ms(p.elapsed_ms), p.phase.as_str());
    if p.bytes > 0 {
        line.push_str(&format!(" {:>10}", output::bytes(p.bytes)));
        if rate > 0.0 {
            line.push_str(&format!("  {}/s", output::bytes(rate as u64)));
        }
        if !far.is_empty() {
            line.push_str(&format!("  {far}"));
        }
    }
    if !p.note.is_empty() {
        line.push_str(&format!("  {}", p.note));
    }
    line
}

/// Where one migration's progress goes: its own lines ([`Display`]) or
/// its row of an evacuation's shared view ([`Slot`]).
pub trait Shown: Send {
    fn progress(&mut self, p: &Progress);
    /// A line of its own (the user's Ctrl-C), shown even under `--quiet`.
    fn note(&mut self, text: &str);
    fn finish(&mut self);
}

impl Shown for Display {
    fn progress(&mut self, p: &Progress) {
        Display::progress(self, p)
    }
    fn note(&mut self, text: &str) {
        Display::note(self, text)
    }
    fn finish(&mut self) {
        Display::finish(self)
    }
}

/// Progress lines on stderr; one updating line on a terminal.
pub struct Display {
    on: bool,
    tty: bool,
    mode: Mode,
    memory_bytes: u64,
    files_bytes: u64,
    /// The phase of the last line printed.
    phase: Option<Phase>,
    /// The phase of the last message and when it began (ms since the
    /// migration started).
    began: Option<(Phase, u64)>,
    last_bytes: u64,
    last_ms: u64,
}

impl Display {
    /// `on`: print anything at all (not under `--quiet`). The container's
    /// memory and files size the phases that copy all of it.
    pub fn new(on: bool, mode: Mode, memory_bytes: u64, files_bytes: u64) -> Self {
        Display { on, tty: std::io::stderr().is_terminal(), mode, memory_bytes, files_bytes, phase: None, began: None, last_bytes: 0, last_ms: 0 }
    }

    pub fn progress(&mut self, p: &Progress) {
        if !self.on {
            return;
        }
        let had_phase = self.phase.is_some();
        let Some((line, new_phase)) = self.step(p) else { return };
        let mut err = std::io::stderr().lock();
        if self.tty {
            if new_phase && had_phase {
                let _ = writeln!(err);
            }
            let _ = write!(err, "\r\x1b[2K{line}");
        } else if new_phase || p.note.is_empty() {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// The line for `p` and whether it opens a phase; None when it says
    /// nothing.
    fn step(&mut self, p: &Progress) -> Option<(String, bool)> {
        let began = match self.began {
            Some((phase, ms)) if phase == p.phase => ms,
            _ => p.elapsed_ms,
        };
        self.began = Some((p.phase, began));
        // A tick before any byte moved says nothing.
        if p.bytes == 0 && p.note.is_empty() {
            return None;
        }
        let new_phase = self.phase != Some(p.phase);
        let rate = if !new_phase && p.elapsed_ms > self.last_ms {
            (p.bytes.saturating_sub(self.last_bytes)) as f64 * 1000.0 / (p.elapsed_ms - self.last_ms) as f64
        } else {
            0.0
        };
        // The time left from the phase's average rate: steadier than the
        // last half second's.
        let far = match expected_bytes(self.mode, p.phase, self.memory_bytes, self.files_bytes) {
            Some(total) if p.bytes > 0 => {
                let average = if p.elapsed_ms > began { p.bytes as f64 * 1000.0 / (p.elapsed_ms - began) as f64 } else { 0.0 };
                how_far(p.bytes, total, average)
            }
            _ => String::new(),
        };
        self.phase = Some(p.phase);
        self.last_bytes = p.bytes;
        self.last_ms = p.elapsed_ms;
        Some((line(p, rate, &far), new_phase))
    }

    /// A line of its own (the user's Ctrl-C), shown even under `--quiet`.
    pub fn note(&mut self, text: &str) {
        self.finish();
        eprintln!("{text}");
    }

    pub fn finish(&mut self) {
        if self.on && self.tty && self.phase.is_some() {
            eprintln!();
            self.phase = None;
        }
    }
}

/// One progress view for the moves of an evacuation under way at once:
/// on a terminal, a block of one updating line per move, redrawn in place
/// below the lines that stay (a move's end, a note); otherwise plain
/// lines, each starting with its move's label.
#[derive(Clone)]
pub struct Board {
    inner: std::sync::Arc<std::sync::Mutex<BoardInner>>,
}

struct BoardInner {
    on: bool,
    tty: bool,
    out: Box<dyn Write + Send>,
    /// (slot id, label, current line) of the moves under way.
    rows: Vec<(usize, String, String)>,
    /// Lines of the block drawn last (terminal only).
    drawn: usize,
    next: usize,
}

impl BoardInner {
    /// Wipes the block drawn last, prints `lines` (they stay), draws the
    /// block again.
    fn redraw(&mut self, lines: &[String]) {
        let mut text = String::new();
        if self.tty {
            for _ in 0..self.drawn {
                text.push_str("\x1b[1A\r\x1b[2K");
            }
        }
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        if self.tty {
            let width = self.rows.iter().map(|(_, label, _)| label.len()).max().unwrap_or(0);
            for (_, label, line) in &self.rows {
                text.push_str(&format!("{label:<width$}  {line}\n"));
            }
            self.drawn = self.rows.len();
        }
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

impl Board {
    /// `on`: show progress at all (not under `--quiet`); notes show anyway.
    pub fn new(on: bool) -> Board {
        Board::to(on, std::io::stderr().is_terminal(), Box::new(std::io::stderr()))
    }

    fn to(on: bool, tty: bool, out: Box<dyn Write + Send>) -> Board {
        Board { inner: std::sync::Arc::new(std::sync::Mutex::new(BoardInner { on, tty, out, rows: Vec::new(), drawn: 0, next: 0 })) }
    }

    /// A row for one move, labelled `label`, sized by the container's
    /// memory and files.
    pub fn slot(&self, label: String, mode: Mode, memory_bytes: u64, files_bytes: u64) -> Slot {
        let mut b = self.inner.lock().unwrap();
        let id = b.next;
        b.next += 1;
        if b.tty && b.on {
            b.rows.push((id, label.clone(), "starting".into()));
            b.redraw(&[]);
        }
        Slot { board: self.clone(), id, label, display: Display::new(true, mode, memory_bytes, files_bytes) }
    }

    /// A line that stays, above the moves under way (shown under `--quiet` too).
    pub fn say(&self, text: &str) {
        self.inner.lock().unwrap().redraw(&[text.to_string()]);
    }
}

/// One move's row of a [`Board`].
pub struct Slot {
    board: Board,
    id: usize,
    label: String,
    /// Makes the lines; prints nothing itself.
    display: Display,
}

impl Shown for Slot {
    fn progress(&mut self, p: &Progress) {
        let Some((line, new_phase)) = self.display.step(p) else { return };
        let mut b = self.board.inner.lock().unwrap();
        if !b.on {
            return;
        }
        if b.tty {
            if let Some(row) = b.rows.iter_mut().find(|(id, _, _)| *id == self.id) {
                row.2 = line;
            }
            b.redraw(&[]);
        } else if new_phase || p.note.is_empty() {
            let text = format!("{}  {line}", self.label);
            b.redraw(&[text]);
        }
    }

    fn note(&mut self, text: &str) {
        self.board.say(&format!("{}  {text}", self.label));
    }

    fn finish(&mut self) {
        let mut b = self.board.inner.lock().unwrap();
        b.rows.retain(|(id, _, _)| *id != self.id);
        if b.tty && b.on {
            b.redraw(&[]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn tick(phase: Phase, bytes: u64, elapsed_ms: u64, note: &str) -> Progress {
        Progress { phase, bytes, elapsed_ms, note: note.into() }
    }

    #[test]
    fn totals_are_known_only_for_whole_archives() {
        assert_eq!(expected_bytes(Mode::HashPreCopy, Phase::PreCopy, 256 * MIB, 8 * MIB), Some(264 * MIB));
        assert_eq!(expected_bytes(Mode::StopAndCopy, Phase::Checkpoint, 256 * MIB, 0), Some(256 * MIB));
        assert_eq!(expected_bytes(Mode::HashPreCopy, Phase::Checkpoint, 256 * MIB, 0), Some(256 * MIB));
        // Soft-dirty rounds and the final dump after them: only what changed.
        assert_eq!(expected_bytes(Mode::PreCopy, Phase::PreCopy, 256 * MIB, 0), None);
        assert_eq!(expected_bytes(Mode::PreCopy, Phase::Checkpoint, 256 * MIB, 0), None);
        // The image's size is not on the wire; memory unknown.
        assert_eq!(expected_bytes(Mode::StopAndCopy, Phase::Image, 256 * MIB, 0), None);
        assert_eq!(expected_bytes(Mode::StopAndCopy, Phase::Checkpoint, 0, 5 * MIB), None);
    }

    #[test]
    fn time_left_reads_well() {
        assert_eq!(time_left(0.2), "1 s");
        assert_eq!(time_left(4.0), "4 s");
        assert_eq!(time_left(59.5), "1 min 0 s");
        assert_eq!(time_left(125.0), "2 min 5 s");
        assert_eq!(time_left((3 * 3600 + 120) as f64), "3 h 2 min");
        assert_eq!(time_left(-3.0), "0 s");
    }

    #[test]
    fn percent_and_time_left() {
        // 43 of 256 MiB at 43 MiB/s: 16 %, 213 MiB in ~5 s.
        assert_eq!(how_far(43 * MIB, 256 * MIB, 43.0 * MIB as f64), "16 % of ~256.0 MiB, ~5 s left");
        assert_eq!(how_far(0, 256 * MIB, 0.0), " 0 % of ~256.0 MiB");
        // The total is an estimate: past it, 99 % and no time left.
        assert_eq!(how_far(300 * MIB, 256 * MIB, 50.0 * MIB as f64), "99 % of ~256.0 MiB");
        assert_eq!(how_far(1, 0, 1.0), "");
    }

    #[test]
    fn a_line_has_bytes_rate_progress_and_note() {
        let p = tick(Phase::PreCopy, 43 * MIB, 1630, "");
        assert_eq!(
            line(&p, 42.6 * MIB as f64, "16 % of ~256.0 MiB, ~5 s left"),
            "[ 1.63 s] pre-copy     43.0 MiB  42.6 MiB/s  16 % of ~256.0 MiB, ~5 s left"
        );
        let p = tick(Phase::Checkpoint, 0, 4440, "freezing");
        assert_eq!(line(&p, 0.0, ""), "[ 4.44 s] checkpoint  freezing");
        let p = tick(Phase::Image, 5 * MIB, 900, "");
        assert_eq!(line(&p, 0.0, ""), "[ 900 ms] image         5.0 MiB");
    }

    #[test]
    fn a_hash_pre_copy_base_shows_how_far_it_is() {
        let mut d = Display::new(true, Mode::HashPreCopy, 256 * MIB, 0);
        let enter = d.step(&tick(Phase::PreCopy, 0, 600, "checkpointing while the container runs (the base)")).unwrap();
        assert_eq!(enter, ("[ 600 ms] pre-copy    checkpointing while the container runs (the base)".into(), true));
        assert_eq!(d.step(&tick(Phase::PreCopy, 0, 1100, "")), None);
        // 64 MiB in the phase's first second: a quarter, ~3 s left.
        let (l, new_phase) = d.step(&tick(Phase::PreCopy, 64 * MIB, 1600, "")).unwrap();
        assert!(!new_phase);
        assert_eq!(l, "[ 1.60 s] pre-copy     64.0 MiB  64.0 MiB/s  25 % of ~256.0 MiB, ~3 s left");
        let (l, _) = d.step(&tick(Phase::PreCopy, 128 * MIB, 2100, "")).unwrap();
        assert!(l.contains("128.0 MiB/s  50 % of ~256.0 MiB, ~2 s left"), "{l}");
        // Soft-dirty rounds have no total here.
        let mut d = Display::new(true, Mode::PreCopy, 256 * MIB, 0);
        let (l, _) = d.step(&tick(Phase::PreCopy, 64 * MIB, 1600, "")).unwrap();
        assert!(!l.contains('%'), "{l}");
    }

    /// What a board wrote, for the tests.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
        }
    }

    #[test]
    fn a_board_without_a_terminal_prints_labelled_lines_of_every_move() {
        let out = Captured::default();
        let board = Board::to(true, false, Box::new(out.clone()));
        let mut a = board.slot("[1/2] a -> client2".into(), Mode::StopAndCopy, 0, 0);
        let mut b = board.slot("[2/2] b -> client3".into(), Mode::StopAndCopy, 0, 0);
        a.progress(&tick(Phase::Prepare, 0, 0, "connecting to the target"));
        b.progress(&tick(Phase::Checkpoint, 0, 10, "freezing"));
        b.note("cancelling");
        a.finish();
        board.say("[1/2] a: completed");
        assert_eq!(
            out.text(),
            "[1/2] a -> client2  [   0 ms] prepare     connecting to the target\n\
             [2/2] b -> client3  [  10 ms] checkpoint  freezing\n\
             [2/2] b -> client3  cancelling\n\
             [1/2] a: completed\n"
        );
        // Quiet: notes only.
        let board = Board::to(false, false, Box::new(out.clone()));
        let mut a = board.slot("a".into(), Mode::StopAndCopy, 0, 0);
        a.progress(&tick(Phase::Prepare, 0, 0, "connecting"));
        a.note("cancelling");
        assert_eq!(out.text(), "a  cancelling\n");
    }

    #[test]
    fn a_board_on_a_terminal_redraws_one_line_per_move_in_place() {
        let out = Captured::default();
        let board = Board::to(true, true, Box::new(out.clone()));
        let mut a = board.slot("a".into(), Mode::StopAndCopy, 0, 0);
        assert_eq!(out.text(), "a  starting\n");
        let _b = board.slot("bb".into(), Mode::StopAndCopy, 0, 0);
        assert_eq!(out.text(), "\x1b[1A\r\x1b[2Ka   starting\nbb  starting\n");
        a.progress(&tick(Phase::Checkpoint, 0, 10, "freezing"));
        let up2 = "\x1b[1A\r\x1b[2K\x1b[1A\r\x1b[2K";
        assert_eq!(out.text(), format!("{up2}a   [  10 ms] checkpoint  freezing\nbb  starting\n"));
        a.finish();
        assert_eq!(out.text(), format!("{up2}bb  starting\n"));
        board.say("a: completed");
        assert_eq!(out.text(), "\x1b[1A\r\x1b[2Ka: completed\nbb  starting\n");
    }
}
