use super::*;

#[test]
fn label_values_are_escaped() {
    let esc = |s: &str| LabelValue(s).to_string();
    assert_eq!(esc("team-a"), "team-a");
    assert_eq!(esc(""), "");
    assert_eq!(esc(r#"team "a""#), r#"team \"a\""#);
    assert_eq!(esc(r"back\slash"), r"back\\slash");
    assert_eq!(esc("new\nline"), r"new\nline");
    assert_eq!(esc("\\\"\n\n"), r#"\\\"\n\n"#);
    assert_eq!(esc("é ü"), "é ü");
}

#[test]
fn usage_metrics_escape_token_and_channel_names() {
    let m = Monitor::new(
        1,
        1,
        2,
        vec!["team \"a\"".into(), "x\\y\nz".into()],
        vec!["ch\"1".into()],
    );
    m.workers[0].count_usage(0, 0, None);
    let text = String::from_utf8(m.metrics_text(None)).unwrap();
    for line in [
        r#"ringway_token_requests_total{token="team \"a\""} 1"#,
        r#"ringway_token_requests_total{token="x\\y\nz"} 0"#,
        r#"ringway_token_tokens_total{token="x\\y\nz",kind="prompt"} 0"#,
        r#"ringway_channel_requests_total{channel="ch\"1"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(text.contains("ringway_connections_rejected_total 0\n"));
}

#[test]
fn quantiles_are_estimated_within_their_bucket() {
    let mut b = [0u64; LATENCY_BOUNDS.len() + 1];
    assert_eq!(quantile(&b, 0.5), None);
    // Ten observations in (0.25, 0.5]: the median halfway through that bucket.
    b[7] = 10;
    let p50 = quantile(&b, 0.5).unwrap();
    assert!((p50 - 0.375).abs() < 1e-9, "{p50}");
    // Nine fast ones in (0.005, 0.01] and one slow: p50 fast, p90 at the top of the fast bucket.
    let mut b = [0u64; LATENCY_BOUNDS.len() + 1];
    b[2] = 9;
    b[9] = 1;
    assert!(quantile(&b, 0.5).unwrap() <= 0.01);
    assert!((quantile(&b, 0.9).unwrap() - 0.01).abs() < 1e-9);
    assert!(quantile(&b, 0.99).unwrap() > 1.0);
    // Over the largest bound: reported as that bound.
    let mut b = [0u64; LATENCY_BOUNDS.len() + 1];
    b[LATENCY_BOUNDS.len()] = 1;
    assert_eq!(quantile(&b, 0.5), Some(300.0));
}

#[test]
fn channel_latency_is_recorded_per_row_and_merged_over_workers() {
    let m = Monitor::new(2, 1, 2, vec![], vec!["a".into(), "b".into()]);
    m.workers[0].observe_channel(1, Duration::from_millis(300), Duration::from_millis(900));
    m.workers[1].observe_channel(1, Duration::from_millis(320), Duration::from_millis(950));
    m.workers[0].observe_channel(0, Duration::from_millis(3), Duration::from_millis(4));
    // A row past the allocation is ignored, never a panic.
    m.workers[0].observe_channel(usize::MAX, Duration::ZERO, Duration::ZERO);
    let b = m.channel_latency_json(1);
    assert_eq!(b["requests"], 2);
    assert_eq!(b["head_mean"], 310.0);
    let a = m.channel_latency_json(0);
    assert!(a["head_p50"].as_f64().unwrap() < b["head_p50"].as_f64().unwrap());
    let text = String::from_utf8(m.metrics_text(None)).unwrap();
    assert!(
        text.contains(r#"ringway_channel_upstream_seconds_count{channel="b",phase="head"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"ringway_channel_upstream_seconds_bucket{channel="b",phase="total",le="1"} 2"#
        ),
        "{text}"
    );
}
