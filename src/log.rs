//! Leveled logging to stderr.
//!
//! Owns: the process log's line formats (`[log] format`): `text` (UTC timestamp, level,
//! message), `logfmt` (`ts= level= msg=`) and `json` (`{"ts","level","msg"}`), one line each
//! whatever the message holds; and, when stderr is the journal (`JOURNAL_STREAM` set by
//! systemd), the `<N>` priority prefix journald reads the level from. The format is one atomic,
//! set at start and by a reload. Must not be used per request on the hot path: the relay logs
//! lifecycle events, warnings and the periodic health line only.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// The line format, as a `LogFormat` discriminant.
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Write every following line in `format`.
pub fn set_format(format: LogFormat) {
    FORMAT.store(format as u8, Relaxed);
}

fn format() -> LogFormat {
    match FORMAT.load(Relaxed) {
        1 => LogFormat::Logfmt,
        2 => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM` to its
/// device:inode; checked once).
fn to_journal() -> bool {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Append `at` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, without allocating.
pub fn write_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let t = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = t.as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    fn two(out: &mut Vec<u8>, n: u64, sep: u8) {
        out.push(b'0' + (n / 10 % 10) as u8);
        out.push(b'0' + (n % 10) as u8);
        out.push(sep);
    }
    let y = y.clamp(0, 9999) as u64;
    two(out, y / 100, b'0');
    out.pop();
    two(out, y % 100, b'-');
    two(out, m as u64, b'-');
    two(out, d as u64, b'T');
    two(out, rem / 3600, b':');
    two(out, (rem / 60) % 60, b':');
    two(out, rem % 60, b'.');
    let ms = t.subsec_millis() as u64;
    out.push(b'0' + (ms / 100) as u8);
    out.push(b'0' + (ms / 10 % 10) as u8);
    out.push(b'0' + (ms % 10) as u8);
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[derive(Clone, Copy)]
enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn upper(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }

    fn lower(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// syslog priority, for journald's `<N>` prefix.
    fn priority(self) -> u8 {
        match self {
            Level::Info => 6,
            Level::Warn => 4,
            Level::Error => 3,
        }
    }
}

/// One log line (with its newline) in `format`.
fn line(format: LogFormat, journal: bool, ts: &str, level: Level, msg: &str) -> String {
    let mut out = String::with_capacity(msg.len() + 64);
    if journal {
        out.push_str(&format!("<{}>", level.priority()));
    }
    match format {
        // A message never spans lines: a newline in it would look like a second entry.
        LogFormat::Text => {
            out.push_str(&format!("{ts} {:5} ", level.upper()));
            out.push_str(&msg.replace('\n', "\\n"));
        }
        LogFormat::Logfmt => {
            out.push_str(&format!("ts={ts} level={} msg=\"", level.lower()));
            for c in msg.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        LogFormat::Json => {
            let mut json = Vec::with_capacity(msg.len() + 2);
            crate::error::json_string(&mut json, msg);
            out.push_str(&format!(
                "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"msg\":{}}}",
                level.lower(),
                String::from_utf8_lossy(&json)
            ));
        }
    }
    out.push('\n');
    out
}

fn emit(level: Level, msg: &str) {
    let line = line(format(), to_journal(), &timestamp(), level, msg);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(msg: &str) {
    emit(Level::Info, msg);
}

pub fn warn(msg: &str) {
    emit(Level::Warn, msg);
}

pub fn error(msg: &str) {
    emit(Level::Error, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_one_line_whatever_the_message() {
        let msg = "a \"quoted\" \\ path\nand a second line";
        let ts = "2026-01-01T00:00:00.000Z";
        let text = line(LogFormat::Text, false, ts, Level::Warn, msg);
        assert_eq!(
            text,
            "2026-01-01T00:00:00.000Z WARN  a \"quoted\" \\ path\\nand a second line\n"
        );
        let logfmt = line(LogFormat::Logfmt, false, ts, Level::Info, msg);
        assert_eq!(
            logfmt,
            "ts=2026-01-01T00:00:00.000Z level=info msg=\"a \\\"quoted\\\" \\\\ path\\nand a second line\"\n"
        );
        let json = line(LogFormat::Json, false, ts, Level::Error, msg);
        assert_eq!(json.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(v["ts"], ts);
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], msg);
        // Under systemd, journald takes the level from the prefix.
        let journal = line(LogFormat::Json, true, ts, Level::Error, "x");
        assert!(journal.starts_with("<3>{"), "{journal}");
        assert!(line(LogFormat::Text, true, ts, Level::Info, "x").starts_with("<6>2026"));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_414), (2025, 11, 22));
        let mut out = Vec::new();
        let at = super::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_007);
        super::write_timestamp(&mut out, at);
        assert_eq!(out, b"2025-11-24T16:00:00.007Z");
    }
}
