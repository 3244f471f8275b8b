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
