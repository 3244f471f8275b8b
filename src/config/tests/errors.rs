//! Config errors: every one names the file, the line and the key; none panics.

use super::*;

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = parse_err(&format!(
        "[server]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n{MINIMAL}"
    ));
    assert_err(&e, 3, "server.listn", "unknown key");
    let e = parse_err(&format!("[servr]\nlisten = 1\n{MINIMAL}"));
    assert_err(&e, 1, "servr", "unknown key");
    let e = parse_err(&format!("[a.b]\n\nc = 1\n{MINIMAL}"));
    assert_err(&e, 1, "a", "unknown key");
    let e = parse_err(&format!("server.port = 1\n{MINIMAL}"));
    assert_err(&e, 1, "server.port", "unknown key");
    let e = parse_err(&format!("bogus = 1\n{MINIMAL}"));
    assert_err(&e, 1, "bogus", "unknown key");
    let e = parse_err(&format!("[timeouts]\nconect = \"1s\"\n{MINIMAL}"));
    assert_err(&e, 2, "timeouts.conect", "unknown key");
    let e = parse_err(&format!("[monitor]\nlevel = 1\n{MINIMAL}"));
    assert_err(&e, 2, "monitor.level", "unknown key");
    let e = parse_err(&format!("{MINIMAL}\n[[channels]]\nname = \"d\"\nurl = 1\n"));
    assert_err(&e, 15, "channels[1].url", "unknown key");
    let e = parse_err(&format!("{MINIMAL}secret = \"x\"\n"));
    assert_err(&e, 12, "tokens[0].secret", "unknown key");
    let e = parse_err(&MINIMAL.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\ntimeouts = { pool_idle = \"1s\" }\n",
    ));
    assert_err(
        &e,
        7,
        "channels[0].timeouts.pool_idle",
        "unknown timeout layer",
    );
}

#[test]
fn value_errors_report_line_and_key() {
    let e = parse_err(&format!("[timeouts]\ntotal = \"0s\"\n{MINIMAL}"));
    assert_err(&e, 2, "timeouts.total", "must be > 0");
    let e = parse_err(&format!("[timeouts]\ntotal = 10\n{MINIMAL}"));
    assert_err(&e, 2, "timeouts.total", "duration");
    let e = parse_err(&format!("[timeouts]\ntotal = \"100000h\"\n{MINIMAL}"));
    assert_err(&e, 2, "timeouts.total", "at most");
    let e = parse_err(&format!("[server]\nworkers = -1\n{MINIMAL}"));
    assert_err(&e, 2, "server.workers", "negative");
    let e = parse_err(&format!("[server]\nworkers = \"4\"\n{MINIMAL}"));
    assert_err(
        &e,
        2,
        "server.workers",
        "expected an integer, found a string",
    );
    let e = parse_err(&format!("[server]\nmax_inflight = 0\n{MINIMAL}"));
    assert_err(&e, 2, "server.max_inflight", ">= 1");
    let e = parse_err(&format!(
        "[monitor]\nwarn_inflight = 10\nalert_inflight = 5\n{MINIMAL}"
    ));
    assert_err(&e, 2, "monitor.warn_inflight", "must not exceed");
    let e = parse_err(&format!(
        "[monitor]\nalert_inflight = 5\nwarn_inflight = 6\n{MINIMAL}"
    ));
    assert_err(&e, 3, "monitor.warn_inflight", "must not exceed");
    let e = parse_err(&format!("server = 5\n{MINIMAL}"));
    assert_err(&e, 1, "server", "expected a table");
    let e = parse_err(&format!("[log]\nformat = \"xml\"\n{MINIMAL}"));
    assert_err(&e, 2, "log.format", "use \"text\", \"logfmt\" or \"json\"");
    let e = parse_err(&format!("[server]\nmodels_refresh = \"soon\"\n{MINIMAL}"));
    assert_err(&e, 2, "server.models_refresh", "duration");
    let e = parse_err(&format!("[server]\nmodels_refresh = \"25h\"\n{MINIMAL}"));
    assert_err(&e, 2, "server.models_refresh", "at most");
    let off = crate::config::parse(
        &format!("[server]\nmodels_refresh = \"off\"\n{MINIMAL}"),
        std::path::Path::new("<test>"),
    );
    assert_eq!(off.expect("valid").server.models_refresh, None);
}

#[test]
fn channel_errors_report_line_and_key() {
    let e = parse_err(&MINIMAL.replace("provider = \"openai\"", "provider = \"azure\""));
    assert_err(&e, 3, "channels[0].provider", "unknown provider");
    let e = parse_err(&MINIMAL.replace("provider = \"openai\"\n", ""));
    assert_err(&e, 1, "channels[0].provider", "required");
    let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = []"));
    assert_err(&e, 5, "channels[0].keys", "at least one key");
    let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = [\"k\",\n  \"\"]"));
    assert_err(&e, 6, "channels[0].keys[1]", "must not be empty");
    let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = [\"k x\"]"));
    assert_err(&e, 5, "channels[0].keys[0]", "HTTP header");
    let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "keys = [\"k\"]\nkey_env = \"X\""));
    assert_err(&e, 6, "channels[0].key_env", "not both");
    let e = parse_err(&MINIMAL.replace("keys = [\"k\"]\n", ""));
    assert_err(&e, 1, "channels[0].keys", "key_env");
    let e = parse_err(&MINIMAL.replace("keys = [\"k\"]", "key_env = \"NOPE\""));
    assert_err(&e, 5, "channels[0].key_env", "not set");
    let env = |_: &str| Some("  ".to_string());
    let e = parse_err_env(
        &MINIMAL.replace("keys = [\"k\"]", "key_env = \"BLANK\""),
        &env,
    );
    assert_err(&e, 5, "channels[0].key_env", "empty");
    let e = parse_err(&MINIMAL.replace("models = [\"*\"]\n\n", "models = []\n\n"));
    assert_err(&e, 6, "channels[0].models", "at least one model");
    let e = parse_err(&MINIMAL.replace("models = [\"*\"]\n\n", "models = [\"g*4\"]\n\n"));
    assert_err(&e, 6, "channels[0].models[0]", "'*'");
    let e = parse_err(&MINIMAL.replace("models = [\"*\"]\n\n", "models = [\"*\"]\nweight = 0\n\n"));
    assert_err(&e, 7, "channels[0].weight", ">= 1");
    let e = parse_err(&MINIMAL.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\npriority = \"high\"\n\n",
    ));
    assert_err(&e, 7, "channels[0].priority", "integer");
    let e = parse_err(&MINIMAL.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\nmodel_map = { a = 1 }\n\n",
    ));
    assert_err(&e, 7, "channels[0].model_map.a", "string");
    let e = parse_err(&MINIMAL.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\ntimeouts = { total = \"1d\" }\n\n",
    ));
    assert_err(&e, 7, "channels[0].timeouts.total", "invalid duration");
    let channel = &MINIMAL[..MINIMAL.find("[[tokens]]").unwrap()];
    let dup = format!("{MINIMAL}\n{channel}");
    let e = parse_err(&dup);
    assert_err(&e, 14, "channels[1].name", "duplicate channel name");
    assert!(e.message.contains("line 2"), "{e}");
    let e = parse_err(&MINIMAL.replace("[[channels]]", "[channels]"));
    assert_err(&e, 1, "channels", "[[channels]]");
}

#[test]
fn token_errors_report_line_and_key() {
    let two = format!("{MINIMAL}\n[[tokens]]\nname = \"u\"\nkey = \"tk\"\nmodels = [\"*\"]\n");
    let e = parse_err(&two);
    assert_err(&e, 15, "tokens[1].key", "same key as token \"t\" (line 10)");
    assert!(!e.to_string().contains("tk\""), "key leaked: {e}");
    let e = parse_err(&two.replace("name = \"u\"", "name = \"t\""));
    assert_err(&e, 14, "tokens[1].name", "duplicate token name");
    let e = parse_err(&MINIMAL.replace("key = \"tk\"\n", ""));
    assert_err(&e, 8, "tokens[0].key", "required");
    let e = parse_err(&MINIMAL.replace("key = \"tk\"", "key = \"\""));
    assert_err(&e, 10, "tokens[0].key", "empty");
    let e = parse_err(&format!("{MINIMAL}models = [\"*\"]\n"));
    assert_eq!(e.key, "");
    assert_eq!(e.line, 12, "duplicate keys are a TOML error: {e}");
}

#[test]
fn missing_sections_and_empty_input() {
    let e = parse_err("");
    assert_eq!((e.key.as_str(), e.line), ("channels", 0));
    let tokens_only = &MINIMAL[MINIMAL.find("[[tokens]]").unwrap()..];
    let e = parse_err(tokens_only);
    assert_err(&e, 4, "channels", "at least one [[channels]]");
    let channels_only = &MINIMAL[..MINIMAL.find("[[tokens]]").unwrap()];
    let e = parse_err(channels_only);
    assert_err(&e, 7, "tokens", "at least one [[tokens]]");
    let e = parse_err(&format!("channels = []\n{}", tokens_only));
    assert_err(&e, 1, "channels", "at least one");
}

#[test]
fn syntax_errors_carry_the_line() {
    let e = parse_err(&format!("{MINIMAL}\n[server\n"));
    assert_eq!(e.line, 13, "{e}");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    let e = parse_err("[server]\nlisten = \"127.0.0.1:1\n");
    assert_eq!(e.line, 2, "{e}");
}

#[test]
fn relay_timeout_overrides_total() {
    let env = |name: &str| (name == "RELAY_TIMEOUT").then(|| "42".to_string());
    let c = parse_with_env(MINIMAL, Path::new("ringway.toml"), &env).unwrap();
    assert_eq!(c.timeouts[Layer::Total], Duration::from_secs(42));
    assert_eq!(c.timeouts[Layer::ResponseHeader], Duration::from_secs(900));

    let env = |name: &str| (name == "RELAY_TIMEOUT").then(String::new);
    let c = parse_with_env(MINIMAL, Path::new("ringway.toml"), &env).unwrap();
    assert_eq!(c.timeouts[Layer::Total], Duration::from_secs(900));

    for bad in ["0", "-5", "10s", "1.5", "abc", "99999999999999999999"] {
        let env = |name: &str| (name == "RELAY_TIMEOUT").then(|| bad.to_string());
        let e = parse_with_env(MINIMAL, Path::new("ringway.toml"), &env).unwrap_err();
        assert_eq!(e.file, "RELAY_TIMEOUT (environment)");
        assert_eq!((e.line, e.key.as_str()), (0, "RELAY_TIMEOUT"), "{bad}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in [
        "",
        "s",
        "10",
        "10x",
        "1.5s",
        "-1s",
        " 1s",
        "1s ",
        "1 s",
        "1hh",
        "18446744073709551615h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
    assert_eq!(parse_duration("200µs"), Ok(Duration::from_micros(200)));
    for d in [
        "250ms", "10s", "15m", "1h", "90s", "1500ms", "200us", "1500us",
    ] {
        assert_eq!(format_duration(parse_duration(d).unwrap()), d);
    }
}

#[test]
fn summary_names_everything_but_secrets() {
    let text = MINIMAL
        .replace(
            "keys = [\"k\"]",
            "keys = [\"sk-SECRET-A\", \"sk-SECRET-B\"]",
        )
        .replace("key = \"tk\"", "key = \"sk-TOKEN-SECRET\"")
        .replace(
            "models = [\"*\"]\n\n",
            "models = [\"*\"]\nmodel_map = { a = \"b\" }\ntimeouts = { total = \"1m\" }\n\n",
        );
    let s = parse_ok(&text).summary();
    assert!(!s.contains("SECRET"), "{s}");
    for needle in [
        "127.0.0.1:3000",
        "workers 0",
        "max_inflight 500",
        "response_header 15m",
        "client_idle 75s",
        "log_interval 30s",
        "  c [openai] http://127.0.0.1:9000",
        "keys 2",
        "map a->b",
        "timeouts total=1m",
        "  t models *",
        "health    cooldown after 3 failure(s), 5s doubling to at most 5m; refused keys rechecked after 10m",
        "log       access off, format text",
    ] {
        assert!(s.contains(needle), "summary lacks {needle:?}:\n{s}");
    }
    assert!(s.lines().count() <= 26);
}

#[test]
fn load_reports_unreadable_file() {
    let e = load(Path::new("/nonexistent/ringway.toml")).unwrap_err();
    assert_eq!(e.file, "/nonexistent/ringway.toml");
    assert_eq!((e.line, e.key.as_str()), (0, ""));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/ringway.toml:0: cannot read"));
}

/// MINIMAL with an https base_url and `ca_file = <ca>` on line 7.
fn with_ca_file(ca: &str) -> String {
    MINIMAL
        .replace("http://127.0.0.1:9000", "https://127.0.0.1:9000")
        .replace(
            "models = [\"*\"]\n\n",
            &format!("models = [\"*\"]\nca_file = {ca:?}\n\n"),
        )
}

fn test_certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs")
}

#[test]
fn ca_file_is_read_and_resolved_against_the_config_dir() {
    let ca = test_certs().join("ca.pem");
    let c = parse_ok(&with_ca_file(ca.to_str().unwrap()));
    let loaded = c.channels[0].ca.as_ref().expect("ca_file loaded");
    assert_eq!(loaded.path, ca);
    assert_eq!(loaded.pem, std::fs::read(&ca).unwrap());
    assert!(c.summary().contains(&format!("ca_file {}", ca.display())));
    assert!(parse_ok(MINIMAL).channels[0].ca.is_none());

    // Relative: against the config file's directory, not the working directory.
    let config_path = test_certs().join("ringway.toml");
    let c = parse_with_env(&with_ca_file("ca.pem"), &config_path, &no_env).unwrap();
    assert_eq!(c.channels[0].ca.as_ref().unwrap().path, ca);
    let c = parse_with_env(&with_ca_file("../certs/server.pem"), &config_path, &no_env)
        .expect("a chain of two certificates is accepted");
    assert!(c.channels[0].ca.is_some());
    // Relative to the config file, so the same name is missing from another directory.
    let e = parse_err(&with_ca_file("ca.pem"));
    assert_err(&e, 7, "channels[0].ca_file", "cannot read ca.pem");
}

#[test]
fn ca_file_errors_report_line_and_key() {
    let ca = test_certs().join("ca.pem");
    let http = with_ca_file(ca.to_str().unwrap())
        .replace("https://127.0.0.1:9000", "http://127.0.0.1:9000");
    let e = parse_err(&http);
    assert_err(
        &e,
        7,
        "channels[0].ca_file",
        "ca_file needs an https base_url",
    );

    let e = parse_err(&with_ca_file("/nonexistent/ca.pem"));
    assert_err(
        &e,
        7,
        "channels[0].ca_file",
        "cannot read /nonexistent/ca.pem",
    );
    let e = parse_err(&with_ca_file(test_certs().to_str().unwrap()));
    assert_err(&e, 7, "channels[0].ca_file", "cannot read");
    let e = parse_err(&with_ca_file(""));
    assert_err(&e, 7, "channels[0].ca_file", "must not be empty");
    let e = parse_err(&with_ca_file("x").replace("ca_file = \"x\"", "ca_file = 5"));
    assert_err(&e, 7, "channels[0].ca_file", "expected a string");

    // A PEM file without a certificate (the server's private key).
    let key = test_certs().join("server.key");
    let e = parse_err(&with_ca_file(key.to_str().unwrap()));
    assert_err(&e, 7, "channels[0].ca_file", "contains no PEM certificate");
    assert!(!e.message.contains("PRIVATE"), "{e}");

    let dir = std::env::temp_dir().join(format!("ringway-config-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        parse_err(&with_ca_file(path.to_str().unwrap()))
    };
    let e = bad("empty.pem", "");
    assert_err(&e, 7, "channels[0].ca_file", "contains no PEM certificate");
    let e = bad("text.pem", "not a certificate\n");
    assert_err(&e, 7, "channels[0].ca_file", "contains no PEM certificate");
    let e = bad(
        "base64.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    assert_err(&e, 7, "channels[0].ca_file", "invalid PEM");
    let e = bad(
        "der.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    assert_err(
        &e,
        7,
        "channels[0].ca_file",
        "certificate 1 cannot be a trusted root",
    );
    let _ = std::fs::remove_dir_all(&dir);

    // The second channel's key names its own index and line.
    let second = format!(
        "{}\n[[channels]]\nname = \"d\"\nprovider = \"openai\"\nbase_url = \"http://x\"\n\
         keys = [\"k\"]\nmodels = [\"*\"]\nca_file = {:?}\n",
        MINIMAL,
        ca.to_str().unwrap()
    );
    let e = parse_err(&second);
    assert_err(&e, 19, "channels[1].ca_file", "https");
}

/// Malformed input of every shape must come back as an error, never a panic, and the error
/// must point somewhere inside the file.
#[test]
fn malformed_inputs_never_panic() {
    let mut inputs: Vec<String> = vec![
        "".into(),
        "\n\n\n".into(),
        "[".into(),
        "[[".into(),
        "[[channels]".into(),
        "=".into(),
        "a =".into(),
        "\"unterminated".into(),
        "key = 'x".into(),
        "[server]\nworkers = 99999999999999999999999".into(),
        "[server]\nworkers = -9223372036854775808".into(),
        "[server]\nworkers = 9223372036854775807".into(),
        "[server]\nworkers = 1e400".into(),
        "[server]\nworkers = 1.5".into(),
        "[server]\nworkers = true".into(),
        "[server]\nworkers = 1979-05-27T07:32:00Z".into(),
        "[server]\nlisten = []".into(),
        "[server]\nlisten = { a = 1 }".into(),
        "[server]\nlisten = \"\"".into(),
        "[server]\nmax_body_bytes = 0".into(),
        "[timeouts]\nconnect = \"\"".into(),
        "[timeouts]\nconnect = \"ms\"".into(),
        "[timeouts]\nconnect = [\"1s\"]".into(),
        "[timeouts.connect]\nx = 1".into(),
        "timeouts = 1".into(),
        "channels = 1".into(),
        "channels = [1]".into(),
        "channels = [[]]".into(),
        "tokens = \"x\"".into(),
        "[[channels]]\n[[tokens]]".into(),
        "[[channels]]\nname = 1".into(),
        "[[channels]]\nname = \"\"".into(),
        "[[channels]]\nname = \"a\"\nprovider = 1".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = \"k\"".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [1]".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = \"*\"".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = [\"*\"]\nmodel_map = []".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = [\"*\"]\nweight = 99999999999".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x\"\nkeys = [\"k\"]\nmodels = [\"*\"]\ntimeouts = \"1s\"".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://\u{e9}\"\nkeys = [\"k\"]\nmodels = [\"*\"]".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"h\u{e9}\"\nkeys = [\"k\"]\nmodels = [\"*\"]".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://[\u{e9}]\"\nkeys = [\"k\"]\nmodels = [\"*\"]".into(),
        "[[channels]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://x/\u{e9}\"\nkeys = [\"k\u{e9}\"]\nmodels = [\"*\"]".into(),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        format!("a = {}{}", "[".repeat(5000), "]".repeat(5000)),
        format!("a = {}", "{ b = ".repeat(3000)),
        "\u{feff}[server]\nworkers = 1".into(),
        "\0".into(),
    ];
    // Every prefix of a valid file is either valid or an error; none may panic.
    for cut in 0..CONTRACT_EXAMPLE.len() {
        if CONTRACT_EXAMPLE.is_char_boundary(cut) {
            inputs.push(CONTRACT_EXAMPLE[..cut].to_string());
        }
    }
    for text in &inputs {
        let lines = text.lines().count().max(1);
        let outcome =
            std::panic::catch_unwind(|| parse_with_env(text, Path::new("ringway.toml"), &no_env));
        match outcome {
            Err(_) => panic!("panicked on {text:?}"),
            Ok(Ok(_)) => assert!(text.len() > MINIMAL.len(), "accepted {text:?}"),
            Ok(Err(e)) => {
                assert!(
                    e.line <= lines,
                    "line {} beyond input {text:?}: {e}",
                    e.line
                );
                assert!(!e.message.is_empty());
            }
        }
    }
}

#[test]
fn health_table_is_read_and_its_errors_name_line_and_key() {
    let c = parse_ok(&format!(
        "[health]\nenabled = true\nfailures = 5\ncooldown = \"2s\"\nmax_cooldown = \"1m\"\nkey_recheck = \"0s\"\n{MINIMAL}"
    ));
    assert_eq!(
        c.health,
        HealthConfig {
            enabled: true,
            failures: 5,
            cooldown: Duration::from_secs(2),
            max_cooldown: Duration::from_secs(60),
            key_recheck: Duration::ZERO,
        }
    );
    assert_eq!(parse_ok(MINIMAL).health, HealthConfig::default());
    // A first cooldown above the default cap moves the unwritten cap up with it.
    let c = parse_ok(&format!("[health]\ncooldown = \"10m\"\n{MINIMAL}"));
    assert_eq!(c.health.max_cooldown, Duration::from_secs(600));
    let e = parse_err(&format!("[health]\nenabled = \"yes\"\n{MINIMAL}"));
    assert_err(
        &e,
        2,
        "health.enabled",
        "expected a boolean, found a string",
    );
    let e = parse_err(&format!("[health]\n\nfailures = -1\n{MINIMAL}"));
    assert_err(&e, 3, "health.failures", "negative");
    let e = parse_err(&format!("[health]\nfailures = 1001\n{MINIMAL}"));
    assert_err(&e, 2, "health.failures", "at most 1000");
    let e = parse_err(&format!("[health]\ncooldown = \"0s\"\n{MINIMAL}"));
    assert_err(&e, 2, "health.cooldown", "must be > 0");
    let e = parse_err(&format!(
        "[health]\ncooldown = \"10s\"\nmax_cooldown = \"5s\"\n{MINIMAL}"
    ));
    assert_err(&e, 3, "health.max_cooldown", "shorter than cooldown (10s)");
    let e = parse_err(&format!("[health]\nkey_recheck = \"5x\"\n{MINIMAL}"));
    assert_err(&e, 2, "health.key_recheck", "invalid duration");
    let e = parse_err(&format!("[health]\nfailure = 3\n{MINIMAL}"));
    assert_err(&e, 2, "health.failure", "unknown key");
}

#[test]
fn anthropic_channels_and_their_version() {
    let anthropic = MINIMAL.replace("provider = \"openai\"", "provider = \"anthropic\"");
    let c = parse_ok(&anthropic);
    assert_eq!(c.channels[0].provider, Provider::Anthropic);
    assert_eq!(c.channels[0].anthropic_version, None);
    let pinned = anthropic.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\nanthropic_version = \"2024-01-01\"\n",
    );
    assert_eq!(
        parse_ok(&pinned).channels[0].anthropic_version.as_deref(),
        Some("2024-01-01")
    );
    let e = parse_err(&pinned.replace("2024-01-01", "2024 01 01"));
    assert_err(&e, 7, "channels[0].anthropic_version", "header-safe");
    let e = parse_err(&pinned.replace("\"2024-01-01\"", "\"\""));
    assert_err(&e, 7, "channels[0].anthropic_version", "");
    let e = parse_err(&MINIMAL.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\nanthropic_version = \"2024-01-01\"\n",
    ));
    assert_err(
        &e,
        7,
        "channels[0].anthropic_version",
        "provider = \"anthropic\" channels only",
    );
}

#[test]
fn max_sse_event_bytes_and_default_max_tokens() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.server.max_sse_event_bytes, 1 << 20);
    let c = parse_ok(&format!("[server]\nmax_sse_event_bytes = 65536\n{MINIMAL}"));
    assert_eq!(c.server.max_sse_event_bytes, 65536);
    assert!(c.summary().contains("max_sse_event_bytes 65536"));
    let e = parse_err(&format!("[server]\nmax_sse_event_bytes = 100\n{MINIMAL}"));
    assert_err(&e, 2, "server.max_sse_event_bytes", ">= 4096");
    let e = parse_err(&format!(
        "[server]\nmax_sse_event_bytes = 2000000000\n{MINIMAL}"
    ));
    assert_err(&e, 2, "server.max_sse_event_bytes", "at most 1073741824");
    let e = parse_err(&format!(
        "[server]\nmax_sse_event_bytes = \"1MiB\"\n{MINIMAL}"
    ));
    assert_err(&e, 2, "server.max_sse_event_bytes", "integer");

    let anthropic = MINIMAL.replace("provider = \"openai\"", "provider = \"anthropic\"");
    assert_eq!(
        parse_ok(&anthropic).channels[0].default_max_tokens,
        crate::config::DEFAULT_MAX_TOKENS
    );
    let set = anthropic.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\ndefault_max_tokens = 2048\n",
    );
    let c = parse_ok(&set);
    assert_eq!(c.channels[0].default_max_tokens, 2048);
    assert!(
        c.summary().contains("default_max_tokens 2048"),
        "{}",
        c.summary()
    );
    let e = parse_err(&set.replace("2048", "0"));
    assert_err(&e, 7, "channels[0].default_max_tokens", ">= 1");
    let e = parse_err(&MINIMAL.replace(
        "models = [\"*\"]\n\n",
        "models = [\"*\"]\ndefault_max_tokens = 2048\n",
    ));
    assert_err(
        &e,
        7,
        "channels[0].default_max_tokens",
        "provider = \"anthropic\" channels only",
    );
}
