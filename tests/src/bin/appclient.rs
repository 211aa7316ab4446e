//! `appclient`: what a user of a migrated Redis server feels.
//!
//! The end-to-end tests, the benchmark and the demo run this on a separate
//! "client" machine (a network namespace of the lab) while tern moves the
//! container that runs `redis-server`. `appclient redis` keeps ONE persistent
//! TCP connection and pushes `RPUSH key 0`, `RPUSH key 1`, ... with strictly
//! one request in flight, then writes a JSON summary: did the connection
//! survive (`connections == 1`, `errors == 0`), how long was the longest time
//! without answers (`longest_gap_ms`, the downtime as the user saw it), and
//! which writes were acknowledged (`last_acked`). `appclient redis-verify
//! --acked N` then checks that every acknowledged write is in the list after
//! the migration. It speaks RESP itself and uses blocking std sockets only.
//!
//! A stalled answer is waited for (up to 30 s): a migration freezes the server
//! for seconds and the point is to measure the stall, not to give up on it.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  appclient redis --addr IP:PORT [--key NAME] [--interval 10ms] [--duration 60s]
                  [--until-file PATH] [--out PATH] [--print] [--reconnect]
      DELs the key, then sends RPUSH key 0, 1, 2, ... on one TCP connection, one
      request in flight, --interval apart, until --duration has passed or
      --until-file exists (whichever comes first; --duration defaults to 60s
      unless --until-file is given). Prints a JSON summary (also to --out).
      --print shows each answer as it arrives. --reconnect: on a connection
      error (or 30 s without an answer), reconnect and carry on.
      Exit 0 when no error happened, 1 otherwise.
  appclient redis-verify --addr IP:PORT [--key NAME] --acked N
      Checks the list holds exactly 0..N-1 in order (plus at most the one
      unacknowledged write that was in flight). Prints JSON; exit 0 when ok.
";

/// The longest a read waits for an answer before the connection counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args.split_first().map(|(c, rest)| (c.as_str(), rest)).unwrap_or(("", &[]));
    let command: fn(Opts) -> Result<bool> = match cmd {
        "redis" => run,
        "redis-verify" => verify,
        "-h" | "--help" => return print!("{USAGE}"),
        _ => usage_error(anyhow!("expected a command: redis or redis-verify")),
    };
    let opts = Opts::parse(rest).unwrap_or_else(|e| usage_error(e));
    match command(opts) {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("appclient: {e:#}");
            std::process::exit(1);
        }
    }
}

fn usage_error(e: anyhow::Error) -> ! {
    eprintln!("appclient: {e:#}\n\n{USAGE}");
    std::process::exit(2);
}

#[derive(Default)]
struct Opts {
    addr: Option<SocketAddr>,
    key: String,
    interval: Duration,
    duration: Option<Duration>,
    until_file: Option<PathBuf>,
    out: Option<PathBuf>,
    print: bool,
    reconnect: bool,
    acked: Option<u64>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts { key: "tern:acked".into(), interval: Duration::from_millis(10), ..Opts::default() };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--addr" => o.addr = Some(value()?.parse().context("--addr wants IP:PORT")?),
                "--key" => o.key = value()?.clone(),
                "--interval" => o.interval = parse_duration(value()?)?,
                "--duration" => o.duration = Some(parse_duration(value()?)?),
                "--until-file" => o.until_file = Some(value()?.into()),
                "--out" => o.out = Some(value()?.into()),
                "--acked" => o.acked = Some(value()?.parse().context("--acked wants a number")?),
                "--print" => o.print = true,
                "--reconnect" => o.reconnect = true,
                _ => bail!("unknown argument {flag:?}"),
            }
        }
        o.addr.context("--addr is required")?;
        if o.duration.is_none() && o.until_file.is_none() {
            o.duration = Some(Duration::from_secs(60));
        }
        Ok(o)
    }
}

/// `10ms`, `1s`, `1.5s`, `2m`, `500us`.
fn parse_duration(s: &str) -> Result<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "us" => num / 1e6,
        "ms" => num / 1e3,
        "s" => num,
        "m" => num * 60.0,
        _ => bail!("bad duration {s:?}: use a unit of us, ms, s or m"),
    };
    Ok(Duration::from_secs_f64(secs))
}

enum Reply {
    Int(i64),
    Str(String),
    Nil,
    Err(String),
    Array(Vec<Reply>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Reply::Int(v) => write!(f, "{v}"),
            Reply::Str(s) => write!(f, "{s:?}"),
            Reply::Nil => write!(f, "nil"),
            Reply::Err(e) => write!(f, "error {e:?}"),
            Reply::Array(v) => write!(f, "an array of {}", v.len()),
        }
    }
}

/// One RESP connection: requests out, replies in.
struct Conn {
    r: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr, connect_timeout: Duration) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, connect_timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Conn { r: BufReader::new(s) })
    }

    fn send(&mut self, words: &[&str]) -> std::io::Result<()> {
        let mut buf = format!("*{}\r\n", words.len());
        for w in words {
            buf += &format!("${}\r\n{w}\r\n", w.len());
        }
        self.r.get_mut().write_all(buf.as_bytes())
    }

    fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed by the server")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(ErrorKind::TimedOut, "no answer within 30 s"))
            }
            r => r?,
        };
        let bad = || std::io::Error::new(ErrorKind::InvalidData, format!("bad RESP line {line:?}"));
        let body = line.strip_suffix("\r\n").ok_or_else(bad)?;
        let (kind, rest) = body.split_at(body.len().min(1));
        let num = || rest.parse::<i64>().map_err(|_| bad());
        Ok(match kind {
            ":" => Reply::Int(num()?),
            "+" => Reply::Str(rest.into()),
            "-" => Reply::Err(rest.into()),
            "$" | "*" if num()? < 0 => Reply::Nil,
            "$" => {
                let mut data = vec![0; num()? as usize + 2];
                std::io::Read::read_exact(&mut self.r, &mut data)?;
                data.truncate(data.len() - 2);
                Reply::Str(String::from_utf8_lossy(&data).into())
            }
            "*" => Reply::Array((0..num()?).map(|_| self.read()).collect::<std::io::Result<_>>()?),
            _ => return Err(bad()),
        })
    }

    fn call(&mut self, words: &[&str]) -> std::io::Result<Reply> {
        self.send(words)?;
        self.read()
    }
}

/// The running measurement.
struct Run {
    start: Instant,
    print: bool,
    sent: u64,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    last_answer: Instant,
    longest_gap: Duration,
    gap_started: Duration,
}

impl Run {
    /// An answer arrived (or the run ends without one): the time since the last answer is a gap.
    fn answer(&mut self, now: Instant) {
        let gap = now - self.last_answer;
        if gap > self.longest_gap {
            self.longest_gap = gap;
            self.gap_started = self.last_answer - self.start;
        }
        self.last_answer = now;
    }

    fn error(&mut self, msg: String) {
        self.errors += 1;
        self.say(&format!("error: {msg}"));
        self.first_error.get_or_insert(msg);
    }

    fn say(&self, msg: &str) {
        if self.print {
            // A reader that went away (a demo's pipe) must not end the measurement.
            let _ = writeln!(std::io::stdout(), "[{:8.3} s] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
}

fn run(o: Opts) -> Result<bool> {
    let (start, addr) = (Instant::now(), o.addr.unwrap());
    let mut r = Run {
        start,
        print: o.print,
        sent: 0,
        acked: 0,
        errors: 0,
        first_error: None,
        last_answer: start,
        longest_gap: Duration::ZERO,
        gap_started: Duration::ZERO,
    };
    let mut connections = 0u64;
    let mut local_addr = None;
    let mut n = 0u64; // the next value to push; values below n are acknowledged
    let mut conn = match Conn::open(addr, READ_TIMEOUT).and_then(|mut c| c.call(&["DEL", &o.key]).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            r.error(format!("connecting to {addr} and DEL {}: {e}", o.key));
            return summary(&o, &r, connections, local_addr, n);
        }
    };
    connections = 1;
    local_addr = conn.r.get_ref().local_addr().ok();
    r.last_answer = Instant::now();
    r.say(&format!("connected {} -> {addr}", local_addr.map_or("?".into(), |a| a.to_string())));
    let should_stop = || o.duration.is_some_and(|d| start.elapsed() >= d) || o.until_file.as_ref().is_some_and(|f| f.exists());
    let mut next_send = Instant::now();
    'run: while !should_stop() {
        std::thread::sleep(next_send.saturating_duration_since(Instant::now()));
        next_send = Instant::now() + o.interval;
        let s = n.to_string();
        r.sent += 1;
        let failure = match conn.call(&["RPUSH", &o.key, &s]) {
            Ok(Reply::Int(len)) if len == n as i64 + 1 => {
                r.answer(Instant::now());
                r.say(&format!("RPUSH {n} -> {len}"));
                r.acked += 1;
                n += 1;
                continue;
            }
            Ok(other) => {
                r.answer(Instant::now());
                r.error(format!("RPUSH {n}: expected the integer {}, got {other}", n + 1));
                break;
            }
            Err(e) => e,
        };
        // The connection failed with RPUSH n in flight: it may or may not have landed.
        r.error(format!("connection {connections} failed after {} acked writes: {failure}", r.acked));
        if !o.reconnect {
            break;
        }
        // Reconnect until a new connection answers; failures on the way are not counted again.
        loop {
            if should_stop() {
                break 'run;
            }
            let mut c = match Conn::open(addr, Duration::from_secs(1)) {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            // The first answer on the new connection ends the gap; it also says whether n landed.
            let len = match c.call(&["LLEN", &o.key]) {
                Ok(Reply::Err(e)) if e.starts_with("LOADING") => {
                    std::thread::sleep(Duration::from_millis(20)); // a restarted server is not serving yet
                    continue;
                }
                Ok(reply) => reply,
                Err(e) => {
                    r.say(&format!("a new connection failed before answering LLEN: {e}"));
                    continue;
                }
            };
            let now = Instant::now();
            let gap = now - r.last_answer;
            r.answer(now);
            connections += 1;
            r.say(&format!("reconnected (connection {connections}), {:.3} s without answers", gap.as_secs_f64()));
            match len {
                Reply::Int(len) if len == n as i64 + 1 => {
                    r.say(&format!("LLEN -> {len}: the unanswered RPUSH {n} had landed"));
                    r.acked += 1;
                    n += 1;
                }
                Reply::Int(len) if len == n as i64 => r.say(&format!("LLEN -> {len}: resending RPUSH {n}")),
                other => {
                    r.error(format!("after reconnecting, LLEN gave {other}, expected {n} or {}", n + 1));
                    break 'run;
                }
            }
            conn = c;
            next_send = Instant::now();
            continue 'run;
        }
    }
    summary(&o, &r, connections, local_addr, n)
}

/// Prints the JSON summary (and writes it to --out); true when no error happened.
fn summary(o: &Opts, r: &Run, connections: u64, local_addr: Option<SocketAddr>, n: u64) -> Result<bool> {
    let end = Instant::now();
    let (mut gap, mut gap_started) = (r.longest_gap, r.gap_started);
    if r.errors > 0 && end - r.last_answer > gap {
        // The run ended waiting for answers that never came: that time counts as a gap too.
        (gap, gap_started) = (end - r.last_answer, r.last_answer - r.start);
    }
    let ms = |d: Duration| d.as_millis() as u64;
    let summary = json!({
        "sent": r.sent, "acked": r.acked, "errors": r.errors, "first_error": r.first_error,
        "connections": connections, "longest_gap_ms": ms(gap), "gap_started_at_ms": ms(gap_started),
        "duration_ms": ms(end - r.start), "local_addr": local_addr.map(|a| a.to_string()),
        "last_acked": n.checked_sub(1),
    });
    let text = serde_json::to_string_pretty(&summary)?;
    if let Some(out) = &o.out {
        // Write then rename, so whoever waits for the file never reads half of it.
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, format!("{text}\n")).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    }
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(r.errors == 0)
}

fn verify(o: Opts) -> Result<bool> {
    let addr = o.addr.unwrap();
    let acked = o.acked.context("--acked is required")?;
    let mut conn = Conn::open(addr, READ_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    let len = match conn.call(&["LLEN", &o.key])? {
        Reply::Int(len) => len.max(0) as u64,
        other => bail!("LLEN: expected an integer, got {other}"),
    };
    let mut items = Vec::with_capacity(len as usize);
    const CHUNK: u64 = 10_000;
    for from in (0..len).step_by(CHUNK as usize) {
        let (a, b) = (from.to_string(), (from + CHUNK - 1).to_string());
        match conn.call(&["LRANGE", &o.key, &a, &b])? {
            Reply::Array(v) => items.extend(v.into_iter().map(|x| match x {
                Reply::Str(s) => s.parse::<u64>().ok(),
                _ => None,
            })),
            other => bail!("LRANGE: expected an array, got {other}"),
        }
    }
    let present: std::collections::HashSet<u64> = items.iter().flatten().copied().collect();
    let missing: Vec<u64> = (0..acked).filter(|v| !present.contains(v)).take(10).collect();
    let first_mismatch = (0..items.len() as u64).find(|&i| items[i as usize] != Some(i));
    let unacked_present = (items.len() as u64).saturating_sub(acked);
    // Strictly one request is ever in flight, so at most one unacknowledged write can be there.
    let ok = first_mismatch.is_none() && items.len() as u64 >= acked && unacked_present <= 1;
    let report = json!({
        "len": items.len(), "ok": ok, "missing": missing,
        "first_mismatch": first_mismatch, "unacked_present": unacked_present,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ok)
}
