//! The `demo` cargo feature at the command line: with it (the default) `ringway mock --help`
//! prints the mock's model table and `ringway --help` points there; without it
//! (`cargo test --no-default-features --test cli_demo_feature`, which CI runs) `ringway demo` and
//! `ringway mock` fail with exit 2 and say why, and no help mentions the mock's models.

mod common;

use common::run_bin;

/// A line of the mock's model table (`ringway_mock::MODELS_DOC`).
const TABLE_LINE: &str = "mock-stall-head-MS";

#[test]
fn plain_help_has_no_model_table() {
    let (code, stdout, _) = run_bin(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("ringway --config PATH"), "{stdout}");
    assert!(!stdout.contains(TABLE_LINE), "{stdout}");
    assert_eq!(
        stdout.contains("ringway mock --help"),
        cfg!(feature = "demo"),
        "{stdout}"
    );
}

#[cfg(feature = "demo")]
#[test]
fn mock_help_prints_the_model_table() {
    let (code, stdout, _) = run_bin(&["mock", "--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("ringway mock --listen ADDR"), "{stdout}");
    assert!(stdout.contains(ringway_mock::MODELS_DOC), "{stdout}");
    assert!(stdout.contains(TABLE_LINE), "{stdout}");
}

#[cfg(not(feature = "demo"))]
#[test]
fn demo_and_mock_say_the_feature_is_missing() {
    for args in [
        &["demo"][..],
        &["demo", "--port", "3999"],
        &["mock", "--listen", "127.0.0.1:0"],
        &["mock", "--help"],
    ] {
        let (code, stdout, stderr) = run_bin(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("built without the `demo` cargo feature"),
            "{args:?}: {stderr}"
        );
        assert!(!stdout.contains(TABLE_LINE) && !stderr.contains(TABLE_LINE));
    }
    let (_, stdout, _) = run_bin(&["--help"], &[]);
    assert!(
        stdout.contains("not in this binary, built without the `demo` cargo feature"),
        "{stdout}"
    );
}
