//! Timestamps for `expires_at`: RFC 3339 date-times (`2027-01-01T00:00:00Z`, or with an offset
//! such as `2027-01-01T09:00:00+09:00`, optionally with fractional seconds) to and from Unix
//! time in milliseconds.
//!
//! Owns: the one date-time syntax the config accepts and the canonical UTC form the summary and
//! error messages print. Must not: read the clock (callers pass "now").

/// Unix milliseconds of an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`
/// (`T`/`Z` in either case, or a space for `T`, as RFC 3339 allows). Fractions past the
/// millisecond are dropped. The error says what is wrong, without the hint (the caller adds it).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let digits = |at: usize, n: usize| -> Result<u32, String> {
        let part = b
            .get(at..at + n)
            .filter(|p| p.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| "not of the form YYYY-MM-DDTHH:MM:SSZ".to_string())?;
        Ok(part.iter().fold(0, |v, d| v * 10 + (d - b'0') as u32))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err("not of the form YYYY-MM-DDTHH:MM:SSZ".to_string()),
        }
    };
    let year = digits(0, 4)?;
    sep(4, b"-")?;
    let month = digits(5, 2)?;
    sep(7, b"-")?;
    let day = digits(8, 2)?;
    sep(10, b"Tt ")?;
    let hour = digits(11, 2)?;
    sep(13, b":")?;
    let minute = digits(14, 2)?;
    sep(16, b":")?;
    let second = digits(17, 2)?;
    let mut at = 19;
    let mut millis = 0u32;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 3 {
                millis = millis * 10 + (b[at] - b'0') as u32;
            }
            at += 1;
        }
        if at == start {
            return Err("a '.' must be followed by digits".into());
        }
        for _ in (at - start)..3 {
            millis *= 10;
        }
    }
    let offset_minutes: i64 = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if at + 6 == b.len() => {
            let h = digits(at + 1, 2)?;
            sep(at + 3, b":")?;
            let m = digits(at + 4, 2)?;
            if h > 23 || m > 59 {
                return Err(format!("offset {} is out of range", &s[at..]));
            }
            let v = (h * 60 + m) as i64;
            if c == b'-' {
                -v
            } else {
                v
            }
        }
        None => return Err("no time zone: end it with Z (UTC) or an offset like +02:00".into()),
        Some(_) => return Err("not of the form YYYY-MM-DDTHH:MM:SSZ".into()),
    };
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not 1-12"));
    }
    let month_days = days_in_month(year, month);
    if day == 0 || day > month_days {
        return Err(format!("day {day} is not 1-{month_days} in that month"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(format!(
            "time {:02}:{:02}:{:02} is out of range",
            hour, minute, second
        ));
    }
    let days = days_from_civil(year as i64, month, day);
    let secs = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64 - offset_minutes * 60;
    Ok(secs * 1000 + millis as i64)
}

/// The canonical UTC form: `2027-01-01T00:00:00Z` (with `.mmm` when not a whole second).
pub fn format_rfc3339(unix_ms: i64) -> String {
    let secs = unix_ms.div_euclid(1000);
    let millis = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    if millis != 0 {
        out.push_str(&format!(".{millis:03}"));
    }
    out.push('Z');
    out
}

fn is_leap(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
