use super::*;
use std::time::Duration;

fn health(cfg: HealthConfig, keys: &[&str]) -> &'static Health {
    Box::leak(Box::new(health_owned(cfg, keys)))
}

fn health_owned(cfg: HealthConfig, keys: &[&str]) -> Health {
    let text = format!(
        "[[channels]]\nname = \"c\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\nkeys = {keys:?}\nmodels = [\"*\"]\n\n[[tokens]]\nname = \"t\"\nkey = \"tk\"\nmodels = [\"*\"]\n"
    );
    let config = crate::config::parse(&text, std::path::Path::new("<test>")).unwrap();
    Health::new(&cfg, &config.channels)
}

fn cfg(failures: u32, cooldown: Duration, max: Duration) -> HealthConfig {
    HealthConfig {
        enabled: true,
        failures,
        cooldown,
        max_cooldown: max,
        key_recheck: Duration::from_secs(600),
    }
}

fn mode(h: &Health) -> u64 {
    mode_of(h.channels[0].gate.load(Acquire))
}

fn remaining(h: &Health) -> u64 {
    until_of(h.channels[0].gate.load(Acquire)).saturating_sub(h.now_ns())
}

#[test]
fn consecutive_failures_cool_and_a_success_resets_the_count() {
    let h = health(
        cfg(3, Duration::from_secs(5), Duration::from_secs(60)),
        &["k"],
    );
    let mut open = Pass::Open;
    h.failure(0, Reason::ConnectFailed, None, &mut open);
    h.failure(0, Reason::ConnectFailed, None, &mut open);
    h.success(0, &mut open);
    h.failure(0, Reason::ConnectFailed, None, &mut open);
    h.failure(0, Reason::ConnectFailed, None, &mut open);
    assert_eq!(mode(h), HEALTHY, "the success reset the count");
    h.failure(0, Reason::Timeout(Layer::Connect), None, &mut open);
    assert_eq!(mode(h), COOLING);
    assert!(!h.routable(0, &h.lazy_now()));
    assert!(matches!(h.enter(0), Pass::Skip));
    let r = remaining(h);
    assert!(r > 4 * NS_PER_SEC && r <= 5 * NS_PER_SEC, "{r}");
    assert_eq!(h.wait_secs([0].into_iter()), Some(5));
    let s = &h.snapshot(&["c".into()])[0];
    assert_eq!(
        (s.state, s.reason.as_deref()),
        ("cooling", Some("connect_timeout"))
    );
}

#[test]
fn retry_after_lengthens_the_cooldown_up_to_the_cap() {
    let h = health(
        cfg(1, Duration::from_secs(1), Duration::from_secs(30)),
        &["k"],
    );
    h.failure(0, Reason::Status(429), Some(20), &mut Pass::Open);
    let r = remaining(h);
    assert!(r > 19 * NS_PER_SEC && r <= 20 * NS_PER_SEC, "{r}");
    let h = health(
        cfg(1, Duration::from_secs(1), Duration::from_secs(30)),
        &["k"],
    );
    h.failure(0, Reason::Status(503), Some(3600), &mut Pass::Open);
    assert!(remaining(h) <= 30 * NS_PER_SEC, "capped at max_cooldown");
}

#[test]
fn one_probe_at_a_time_and_its_verdict_decides() {
    // A cooldown of 1 ns is over at once: the next entry is the probe.
    let h = health(
        cfg(1, Duration::from_nanos(1), Duration::from_nanos(4)),
        &["k"],
    );
    h.failure(0, Reason::BadResponse, None, &mut Pass::Open);
    assert!(h.routable(0, &h.lazy_now()), "a due probe is lined up");
    let mut probe = h.enter(0);
    assert!(matches!(probe, Pass::Probe(_)));
    assert!(
        matches!(h.enter(0), Pass::Skip),
        "a second probe is refused"
    );
    assert!(!h.routable(0, &h.lazy_now()));
    // Failed probe: cooled again with the backoff doubled (capped at 4 ns).
    h.failure(0, Reason::Status(500), None, &mut probe);
    assert_eq!(h.channels[0].backoff_ns.load(Relaxed), 2);
    drop(probe);
    assert_eq!(mode(h), COOLING);
    let mut probe = h.enter(0);
    h.failure(0, Reason::Status(500), None, &mut probe);
    let mut probe = h.enter(0);
    h.failure(0, Reason::Status(500), None, &mut probe);
    assert_eq!(h.channels[0].backoff_ns.load(Relaxed), 4, "capped");
    // A probe dropped without a verdict hands the probe on.
    let probe = h.enter(0);
    assert!(matches!(probe, Pass::Probe(_)));
    drop(probe);
    let mut probe = h.enter(0);
    assert!(matches!(probe, Pass::Probe(_)));
    h.success(0, &mut probe);
    assert_eq!(mode(h), HEALTHY);
    assert_eq!(h.channels[0].backoff_ns.load(Relaxed), 1, "backoff reset");
    assert!(matches!(h.enter(0), Pass::Open));
}

#[test]
fn refused_keys_leave_rotation_and_come_back_after_a_recheck() {
    let mut c = cfg(3, Duration::from_secs(5), Duration::from_secs(60));
    let h = health(c.clone(), &["sk-aaaa-1111", "sk-bbbb-2222", "sk-cccc-3333"]);
    assert!(h.disable_key(0, 1, Reason::Status(401)));
    for cursor in 0..30 {
        assert_ne!(h.pick_key(0, 3, cursor), 1, "a refused key is never picked");
    }
    assert_eq!(h.pick_key(0, 3, 1), 2, "the next key in rotation instead");
    assert!(h.disable_key(0, 0, Reason::KeyCode(KeyCode::InsufficientQuota, 429)));
    assert!(!h.disable_key(0, 2, Reason::Status(403)), "no key left");
    assert!(!h.routable(0, &h.lazy_now()));
    assert!(matches!(h.enter(0), Pass::Skip));
    let s = &h.snapshot(&["c".into()])[0];
    assert_eq!(s.state, "disabled");
    assert_eq!(
        s.keys[0].reason.as_deref(),
        Some("insufficient_quota (429)")
    );
    assert_eq!(s.keys[1].tail, "2222");
    // key_ok on a key in rotation is a no-op; on a refused one it comes back.
    h.key_ok(0, 1);
    assert_eq!(h.channels[0].active_keys.load(Acquire), 1);
    assert_eq!(h.pick_key(0, 3, 0), 1);

    // With a recheck of 1 ns a refused key is due at once: one request claims it.
    c.key_recheck = Duration::from_nanos(1);
    let h = health(c, &["sk-aaaa-1111"]);
    assert!(!h.disable_key(0, 0, Reason::Status(401)));
    assert!(h.has_key(0));
    assert_eq!(h.pick_key(0, 1, 0), 0);
}

#[test]
fn disabled_health_lets_everything_through() {
    let mut c = cfg(1, Duration::from_secs(5), Duration::from_secs(60));
    c.enabled = false;
    let h = health(c, &["k1", "k2"]);
    h.failure(0, Reason::ConnectFailed, None, &mut Pass::Open);
    assert!(!h.disable_key(0, 0, Reason::Status(401)));
    assert!(matches!(h.enter(0), Pass::Open));
    assert!(h.routable(0, &h.lazy_now()));
    assert_eq!(h.pick_key(0, 2, 0), 0);
}

#[test]
fn key_codes_are_found_as_json_strings() {
    let body = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    assert_eq!(KeyCode::find(body), Some(KeyCode::InsufficientQuota));
    assert_eq!(
        KeyCode::find(br#"{"error":{"code":"account_deactivated"}}"#),
        Some(KeyCode::AccountDeactivated)
    );
    assert_eq!(
        KeyCode::find(br#"{"error":{"code":"rate_limit_exceeded"}}"#),
        None
    );
    assert_eq!(KeyCode::find(b"invalid_api_key without quotes"), None);
    assert_eq!(KeyCode::find(b""), None);
    assert_eq!(key_tail("short"), "");
    assert_eq!(key_tail("sk-abcdef-1234"), "1234");
    for r in [
        Reason::Recovered,
        Reason::ConnectFailed,
        Reason::Timeout(Layer::ResponseHeader),
        Reason::BadResponse,
        Reason::Status(503),
        Reason::KeyCode(KeyCode::InvalidApiKey, 401),
    ] {
        assert_eq!(Reason::unpack(r.pack()), Some(r));
    }
}
