//! Minimal leveled logging to stderr.
//!
//! Owns: the log line format (UTC timestamp, level, message). Must not be used per request on
//! the hot path: the relay logs lifecycle events, warnings and the periodic health line only.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

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

fn emit(level: &str, msg: &str) {
    let line = format!("{} {level:5} {msg}\n", timestamp());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(msg: &str) {
    emit("INFO", msg);
}

pub fn warn(msg: &str) {
    emit("WARN", msg);
}

pub fn error(msg: &str) {
    emit("ERROR", msg);
}

#[cfg(test)]
mod tests {
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
