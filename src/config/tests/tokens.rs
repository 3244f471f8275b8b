//! A token's `expires_at`, `rpm`, `tpm` and `max_inflight`: read, validated with file, line and
//! key, shown in the summary (never the key).

use super::super::timestamp::parse_rfc3339;
use super::*;

/// MINIMAL with `lines` added to its token (after `models`, from line 12 on).
fn token_with(lines: &str) -> String {
    format!("{MINIMAL}{lines}\n")
}

#[test]
fn token_limits_are_read_and_optional() {
    let c = parse_ok(&token_with(
        "expires_at = \"2027-01-01T00:00:00Z\"\nrpm = 5\ntpm = 40\nmax_inflight = 2",
    ));
    let t = &c.tokens[0];
    assert_eq!(t.expires_at, Some(1_798_761_600_000));
    assert_eq!((t.rpm, t.tpm, t.max_inflight), (Some(5), Some(40), Some(2)));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let t = &parse_ok(MINIMAL).tokens[0];
    assert_eq!(
        (t.expires_at, t.rpm, t.tpm, t.max_inflight),
        (None, None, None, None)
    );
    // The contract's example values.
    let c = parse_ok(&token_with(
        "expires_at = \"2027-01-01T00:00:00Z\"\nrpm = 600\ntpm = 200000\nmax_inflight = 20",
    ));
    assert_eq!(c.tokens[0].tpm, Some(200_000));
}

#[test]
fn token_limit_errors_name_line_and_key() {
    for (line, key, needle) in [
        (
            "rpm = 0",
            "tokens[0].rpm",
            ">= 1 (leave the key out for no limit)",
        ),
        ("rpm = -5", "tokens[0].rpm", ">= 1"),
        ("tpm = 0", "tokens[0].tpm", ">= 1"),
        (
            "tpm = \"40\"",
            "tokens[0].tpm",
            "expected an integer, found a string",
        ),
        (
            "tpm = 1.5",
            "tokens[0].tpm",
            "expected an integer, found a float",
        ),
        ("max_inflight = 0", "tokens[0].max_inflight", ">= 1"),
        ("rpm = 1000000001", "tokens[0].rpm", "at most 1000000000"),
        (
            "expires_at = \"2027-13-01T00:00:00Z\"",
            "tokens[0].expires_at",
            "invalid timestamp \"2027-13-01T00:00:00Z\": month 13 is not 1-12",
        ),
        (
            "expires_at = \"2027-02-29T00:00:00Z\"",
            "tokens[0].expires_at",
            "day 29 is not 1-28",
        ),
        (
            "expires_at = \"2027-01-01T24:00:00Z\"",
            "tokens[0].expires_at",
            "out of range",
        ),
        (
            "expires_at = \"2027-01-01T00:00:00\"",
            "tokens[0].expires_at",
            "no time zone",
        ),
        (
            "expires_at = \"tomorrow\"",
            "tokens[0].expires_at",
            "e.g. \"2027-01-01T00:00:00Z\"",
        ),
        (
            "expires_at = 2027-01-01T00:00:00Z",
            "tokens[0].expires_at",
            "bare TOML date-time",
        ),
        (
            "expires_at = 2027-01-01",
            "tokens[0].expires_at",
            "bare TOML date-time",
        ),
        (
            "expires_at = 1798761600",
            "tokens[0].expires_at",
            "found an integer",
        ),
        // A quota without a state_dir to keep its ledger in.
        (
            "quota_tokens = 5",
            "tokens[0].quota_tokens",
            "needs [server] state_dir",
        ),
        ("quota_tokens = 0", "tokens[0].quota_tokens", ">= 1"),
    ] {
        let e = parse_err(&token_with(&format!("\n{line}")));
        assert_err(&e, 13, key, needle);
    }
    // The second token's key, on its own line.
    let e = parse_err(&format!(
        "{MINIMAL}\n[[tokens]]\nname = \"u\"\nkey = \"tk2\"\nmodels = [\"*\"]\nrpm = 0\n"
    ));
    assert_err(&e, 17, "tokens[1].rpm", ">= 1");
    assert!(!e.to_string().contains("tk2"), "{e}");
}

#[test]
fn an_expiry_already_past_is_a_warning_not_an_error() {
    let c = parse_ok(&token_with("expires_at = \"2000-01-01T00:00:00Z\""));
    assert_eq!(c.tokens[0].expires_at, Some(946_684_800_000));
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        w,
        [
            "ringway.toml:12: tokens[0].expires_at: 2000-01-01T00:00:00Z has passed: every \
          request with token \"t\" is refused (401 token_expired)"
        ]
    );
    assert!(!w[0].contains("tk\""));
}

#[test]
fn summary_shows_token_limits_never_the_key() {
    let text = token_with(
        "rpm = 5\ntpm = 40\nmax_inflight = 2\nexpires_at = \"2027-01-01T09:00:00+09:00\"",
    )
    .replace("key = \"tk\"", "key = \"sk-TOKEN-SECRET\"");
    let s = parse_ok(&text).summary();
    assert!(
        s.contains("  t models * rpm 5 tpm 40 max_inflight 2 expires_at 2027-01-01T00:00:00Z\n"),
        "{s}"
    );
    assert!(!s.contains("SECRET"), "{s}");
    // Only what is set is shown.
    let s = parse_ok(&token_with("tpm = 7")).summary();
    assert!(s.contains("  t models * tpm 7\n"), "{s}");
    assert!(parse_ok(MINIMAL).summary().contains("  t models *\n"));
}

#[test]
fn rfc3339_forms() {
    for (text, ms) in [
        ("2027-01-01T00:00:00Z", 1_798_761_600_000),
        ("2027-01-01t00:00:00z", 1_798_761_600_000),
        ("2027-01-01 00:00:00Z", 1_798_761_600_000),
        ("2027-01-01T09:00:00+09:00", 1_798_761_600_000),
        ("2026-12-31T19:30:00-04:30", 1_798_761_600_000),
        ("2027-01-01T00:00:00.5Z", 1_798_761_600_500),
        ("2027-01-01T00:00:00.123456789Z", 1_798_761_600_123),
        ("2028-02-29T23:59:59Z", 1_835_481_599_000),
        ("2000-01-01T00:00:00Z", 946_684_800_000),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59Z", -1000),
        // A leap second is the next minute's first second.
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),
    ] {
        assert_eq!(parse_rfc3339(text), Ok(ms), "{text}");
    }
    for bad in [
        "",
        "2027",
        "2027-01-01",
        "2027-1-01T00:00:00Z",
        "2027-01-01T00:00Z",
        "2027-01-01T00:00:00",
        "2027-01-01T00:00:00ZZ",
        "2027-01-01T00:00:00+0900",
        "2027-01-01T00:00:00+24:00",
        "2027-01-01T00:00:00.Z",
        "2027-01-01X00:00:00Z",
        "2027-00-01T00:00:00Z",
        "2027-01-00T00:00:00Z",
        "2027-04-31T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2027-01-01T00:60:00Z",
        "2027-01-01T00:00:61Z",
        " 2027-01-01T00:00:00Z",
        "２027-01-01T00:00:00Z",
    ] {
        assert!(parse_rfc3339(bad).is_err(), "{bad:?} accepted");
    }
    // Formatting is the inverse, in UTC.
    for ms in [
        0,
        -1000,
        946_684_800_000,
        1_798_761_600_000,
        1_798_761_600_500,
        1_835_481_599_000,
        253_402_300_799_000,
    ] {
        assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms), "{ms}");
    }
    assert_eq!(format_rfc3339(1_798_761_600_000), "2027-01-01T00:00:00Z");
    assert_eq!(
        format_rfc3339(1_798_761_600_050),
        "2027-01-01T00:00:00.050Z"
    );
    assert_eq!(format_rfc3339(253_402_300_799_000), "9999-12-31T23:59:59Z");
}

#[test]
fn quota_tokens_and_the_state_keys_are_read_and_checked() {
    let c = parse_ok(&format!(
        "[server]\nstate_dir = \"state\"\nstate_flush = \"250ms\"\nquota_reserve = 64\n{MINIMAL}quota_tokens = 5000000000\n"
    ));
    assert_eq!(c.tokens[0].quota_tokens, Some(5_000_000_000));
    assert_eq!(c.server.state_dir.as_deref(), Some(Path::new("state")));
    // Relative to the config file's directory.
    let text = format!("[server]\nstate_dir = \"state\"\n{MINIMAL}");
    let under_etc = parse_with_env(&text, Path::new("/etc/rw/ringway.toml"), &no_env).unwrap();
    assert_eq!(
        under_etc.server.state_dir.as_deref(),
        Some(Path::new("/etc/rw/state"))
    );
    assert_eq!(c.server.state_flush, std::time::Duration::from_millis(250));
    assert_eq!(c.server.quota_reserve, 64);
    assert!(
        c.summary().contains("quota_tokens 5000000000"),
        "{}",
        c.summary()
    );
    assert!(c.summary().contains("state_flush 250ms"), "{}", c.summary());
    // Defaults: no ledger, a 1 s flush, 1024 tokens reserved without max_tokens.
    let d = parse_ok(MINIMAL);
    assert_eq!(
        (
            d.server.state_dir,
            d.server.state_flush,
            d.server.quota_reserve
        ),
        (None, std::time::Duration::from_secs(1), 1024)
    );
    assert_eq!(d.tokens[0].quota_tokens, None);
    for (server, line, key, needle) in [
        (
            "state_flush = \"1ms\"",
            2,
            "server.state_flush",
            "at least 10ms",
        ),
        (
            "state_flush = \"2m\"",
            2,
            "server.state_flush",
            "at most 1m",
        ),
        (
            "state_dir = \"\"",
            2,
            "server.state_dir",
            "must not be empty",
        ),
        ("state_dir = 5", 2, "server.state_dir", "expected a string"),
        ("quota_reserve = -1", 2, "server.quota_reserve", "negative"),
    ] {
        let e = parse_err(&format!("[server]\n{server}\n{MINIMAL}"));
        assert_err(&e, line, key, needle);
    }
    let e = parse_err(&format!(
        "[server]\nstate_dir = \"s\"\n{MINIMAL}quota_tokens = 1000000000000000001\n"
    ));
    assert_err(&e, 14, "tokens[0].quota_tokens", "at most 1000000000000000");
}
