//! Config loading, errors with exact lines, warnings and the summary.

use super::load::{parse_with_env, permission_warning};
use super::*;

const CONTRACT_EXAMPLE: &str = r#"[server]
listen = "127.0.0.1:3000"   # host:port; each worker binds it with SO_REUSEPORT
workers = 0                 # 0 = one per online core
max_inflight = 500          # whole process; over it: 503 + Retry-After, code "overloaded"
max_header_bytes = 65536    # request head over it: 431
max_body_bytes = 67108864   # request body over it: 413

[timeouts]                  # durations: "250ms", "10s", "15m", "1h"
connect = "10s"             # TCP connect to upstream
tls_handshake = "10s"       # TLS handshake to upstream
response_header = "15m"     # request fully sent -> upstream response head received
stream_idle = "5m"          # longest silence between upstream body bytes
total = "15m"               # whole request; env RELAY_TIMEOUT (integer seconds) overrides
pool_idle = "90s"           # idle upstream connection kept at most this long
quick = "2m"                # total for quick endpoints (/v1/models, task polls, health)
client_header = "30s"       # client must deliver a full request head within this
client_body = "30s"         # longest silence while reading a client request body
client_body_total = "2m"    # ringway extension: the whole request body, however slowly it trickles
client_idle = "75s"         # idle keep-alive client connection closed after this

[monitor]
log_interval = "30s"        # periodic health line in the log
warn_inflight = 2000        # log level WARN above this
alert_inflight = 5000       # log level ERROR above this

[[channels]]
name = "openai-main"        # unique
provider = "openai"         # "openai" (any OpenAI-compatible base_url: OpenAI, xAI, DeepSeek, ...) | "anthropic"
base_url = "https://api.openai.com"   # http:// or https://, optional path prefix
keys = ["sk-..."]           # rotated; or key_env = "OPENAI_API_KEY"
models = ["gpt-4o", "gpt-4o-mini"]    # what this channel serves ("*" = anything)
model_map = { "gpt-4" = "gpt-4o" }    # optional: client model -> upstream model
priority = 0                # higher is tried first
weight = 1                  # weighted random among equal priority
# optional per-channel overrides of connect / tls_handshake / response_header / stream_idle / total:
# timeouts = { response_header = "2m" }

[[tokens]]
name = "team-a"
key = "sk-ringway-..."      # what clients send as Authorization: Bearer ... (or x-api-key)
models = ["*"]              # allow-list, "*" and prefix globs like "gpt-4o*"
"#;

/// Smallest valid file; snippets below are prepended/appended to it.
const MINIMAL: &str = r#"[[channels]]
name = "c"
provider = "openai"
base_url = "http://127.0.0.1:9000"
keys = ["k"]
models = ["*"]

[[tokens]]
name = "t"
key = "tk"
models = ["*"]
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_ok(text: &str) -> Config {
    match parse_with_env(text, Path::new("ringway.toml"), &no_env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error: {e}\n--- input ---\n{text}"),
    }
}

fn parse_err(text: &str) -> ConfigError {
    parse_err_env(text, &no_env)
}

fn parse_err_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ConfigError {
    match parse_with_env(text, Path::new("ringway.toml"), env) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts line and key, and that the message mentions `needle`.
fn assert_err(e: &ConfigError, line: usize, key: &str, needle: &str) {
    assert_eq!((e.line, e.key.as_str()), (line, key), "error was: {e}");
    assert!(e.message.contains(needle), "{e:?} lacks {needle:?}");
    assert_eq!(e.file, "ringway.toml");
}

#[test]
fn contract_example_parses_to_documented_values() {
    let c = parse_ok(CONTRACT_EXAMPLE);
    assert_eq!(c.path, PathBuf::from("ringway.toml"));
    assert_eq!(c.server.listen, "127.0.0.1:3000".parse().unwrap());
    assert_eq!(c.server.listen_text, "127.0.0.1:3000");
    assert_eq!(c.server.workers, 0);
    assert_eq!(c.server.max_inflight, 500);
    assert_eq!(c.server.max_header_bytes, 65536);
    assert_eq!(c.server.max_body_bytes, 67_108_864);
    assert_eq!(c.server.max_error_body_bytes, 65536);
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.monitor.log_interval, Duration::from_secs(30));
    assert_eq!(
        (c.monitor.warn_inflight, c.monitor.alert_inflight),
        (2000, 5000)
    );

    assert_eq!(c.channels.len(), 1);
    let ch = &c.channels[0];
    assert_eq!(ch.name, "openai-main");
    assert_eq!(ch.provider, Provider::OpenAi);
    assert_eq!(ch.base_url, "https://api.openai.com");
    assert_eq!(ch.scheme, Scheme::Https);
    assert_eq!((ch.host.as_str(), ch.port), ("api.openai.com", 443));
    assert_eq!(ch.path_prefix, "");
    assert_eq!(ch.keys, vec!["sk-...".to_string()]);
    assert_eq!(
        ch.models,
        vec!["gpt-4o".to_string(), "gpt-4o-mini".to_string()]
    );
    assert_eq!(
        ch.model_map,
        vec![("gpt-4".to_string(), "gpt-4o".to_string())]
    );
    assert_eq!((ch.priority, ch.weight), (0, 1));
    assert_eq!(ch.timeouts, ChannelTimeouts::default());

    assert_eq!(c.tokens.len(), 1);
    assert_eq!(c.tokens[0].name, "team-a");
    assert_eq!(c.tokens[0].key, "sk-ringway-...");
    assert_eq!(c.tokens[0].models, vec!["*".to_string()]);
}

#[test]
fn contract_example_with_key_env_and_channel_timeouts() {
    let text = CONTRACT_EXAMPLE
        .replace(r#"keys = ["sk-..."]  "#, r#"key_env = "OPENAI_API_KEY""#)
        .replace(
            r#"# timeouts = { response_header = "2m" }"#,
            r#"timeouts = { response_header = "2m", connect = "250ms" }"#,
        );
    let env = |name: &str| (name == "OPENAI_API_KEY").then(|| "sk-from-env\n".to_string());
    let c = parse_with_env(&text, Path::new("ringway.toml"), &env).unwrap();
    let ch = &c.channels[0];
    assert_eq!(ch.keys, vec!["sk-from-env".to_string()]);
    assert_eq!(
        ch.timeouts.get(Layer::ResponseHeader),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        ch.timeouts.get(Layer::Connect),
        Some(Duration::from_millis(250))
    );
    assert_eq!(ch.timeouts.get(Layer::Total), None);
}

#[test]
fn sse_coalesce_may_be_zero_and_is_bounded() {
    let c = parse_ok(&format!("[server]\nsse_coalesce = \"0ms\"\n{MINIMAL}"));
    assert_eq!(c.server.sse_coalesce, Duration::ZERO);
    let c = parse_ok(&format!("[server]\nsse_coalesce = \"20ms\"\n{MINIMAL}"));
    assert_eq!(c.server.sse_coalesce, Duration::from_millis(20));
    let e = parse_err(&format!("[server]\nsse_coalesce = \"2s\"\n{MINIMAL}"));
    assert_eq!((e.line, e.key.as_str()), (2, "server.sse_coalesce"), "{e}");
    assert!(e.message.contains("at most 1s"), "{e}");
    let e = parse_err(&format!("[server]\nsse_coalesce = 5\n{MINIMAL}"));
    assert!(e.message.contains("duration string"), "{e}");
}

#[test]
fn busy_poll_is_off_by_default_and_bounded() {
    assert_eq!(parse_ok(MINIMAL).server.busy_poll, Duration::ZERO);
    let c = parse_ok(&format!("[server]\nbusy_poll = \"300us\"\n{MINIMAL}"));
    assert_eq!(c.server.busy_poll, Duration::from_micros(300));
    let e = parse_err(&format!(
        "[server]\nworkers = 1\nbusy_poll = \"1s\"\n{MINIMAL}"
    ));
    assert_eq!((e.line, e.key.as_str()), (3, "server.busy_poll"), "{e}");
    assert!(e.message.contains("at most 10ms"), "{e}");
    let e = parse_err(&format!("[server]\nbusy_poll = \"fast\"\n{MINIMAL}"));
    assert_eq!(e.key, "server.busy_poll", "{e}");
}

#[test]
fn drain_defaults_to_30s_may_be_zero_and_is_bounded() {
    assert_eq!(parse_ok(MINIMAL).server.drain, Duration::from_secs(30));
    let c = parse_ok(&format!("[server]\ndrain = \"0s\"\n{MINIMAL}"));
    assert_eq!(c.server.drain, Duration::ZERO);
    let c = parse_ok(&format!("[server]\ndrain = \"90s\"\n{MINIMAL}"));
    assert_eq!(c.server.drain, Duration::from_secs(90));
    let e = parse_err(&format!("[server]\nworkers = 1\ndrain = \"2h\"\n{MINIMAL}"));
    assert_eq!((e.line, e.key.as_str()), (3, "server.drain"), "{e}");
    assert!(e.message.contains("at most 1h"), "{e}");
    let e = parse_err(&format!("[server]\ndrain = \"soon\"\n{MINIMAL}"));
    assert_eq!((e.line, e.key.as_str()), (2, "server.drain"), "{e}");
}

#[test]
fn defaults_apply_when_sections_are_absent() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.server.listen_text, "127.0.0.1:3000");
    assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 3000)));
    assert_eq!(c.server.workers, 0);
    assert_eq!(c.server.max_inflight, 500);
    assert_eq!(c.server.max_header_bytes, 65536);
    assert_eq!(c.server.max_body_bytes, 67_108_864);
    assert_eq!(c.server.max_error_body_bytes, 65536);
    assert_eq!(c.server.sse_coalesce, Duration::from_millis(5));
    let t = c.timeouts;
    assert_eq!(t[Layer::Connect], Duration::from_secs(10));
    assert_eq!(t[Layer::TlsHandshake], Duration::from_secs(10));
    assert_eq!(t[Layer::ResponseHeader], Duration::from_secs(900));
    assert_eq!(t[Layer::StreamIdle], Duration::from_secs(300));
    assert_eq!(t[Layer::Total], Duration::from_secs(900));
    assert_eq!(t[Layer::PoolIdle], Duration::from_secs(90));
    assert_eq!(t[Layer::Quick], Duration::from_secs(120));
    assert_eq!(t[Layer::ClientHeader], Duration::from_secs(30));
    assert_eq!(t[Layer::ClientBody], Duration::from_secs(30));
    assert_eq!(t[Layer::ClientIdle], Duration::from_secs(75));
    assert_eq!(c.monitor.log_interval, Duration::from_secs(30));
    // 80% and 95% of the default max_inflight (500): reachable, unlike the old 2000/5000.
    assert_eq!(c.monitor.warn_inflight, 400);
    assert_eq!(c.monitor.alert_inflight, 475);
    assert!(!c.monitor.warn_inflight_set && !c.monitor.alert_inflight_set);
    assert_eq!(c.server.max_connections, 10_000);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let ch = &c.channels[0];
    assert_eq!((ch.priority, ch.weight), (0, 1));
    assert_eq!((ch.scheme, ch.port), (Scheme::Http, 9000));
    assert!(ch.model_map.is_empty());
    assert!(c.effective_workers() >= 1);
}

#[test]
fn partial_sections_keep_other_defaults_and_dotted_keys_work() {
    let c = parse_ok(&format!(
        "server.workers = 3\ntimeouts.connect = \"1s\"\n[monitor]\nwarn_inflight = 5\n{MINIMAL}"
    ));
    assert_eq!(c.server.workers, 3);
    assert_eq!(c.effective_workers(), 3);
    assert_eq!(c.server.max_inflight, 500);
    assert_eq!(c.timeouts[Layer::Connect], Duration::from_secs(1));
    assert_eq!(c.timeouts[Layer::TlsHandshake], Duration::from_secs(10));
    assert_eq!(c.monitor.warn_inflight, 5);
    assert_eq!(c.monitor.alert_inflight, 475);
}

#[test]
fn inflight_thresholds_default_to_shares_of_max_inflight() {
    let c = parse_ok(&format!("[server]\nmax_inflight = 1000\n{MINIMAL}"));
    assert_eq!(
        (c.monitor.warn_inflight, c.monitor.alert_inflight),
        (800, 950)
    );
    let c = parse_ok(&format!(
        "[server]\nmax_inflight = 10\n[monitor]\n{MINIMAL}"
    ));
    assert_eq!((c.monitor.warn_inflight, c.monitor.alert_inflight), (8, 9));
    // Both defaults stay below max_inflight, so both can fire.
    for max in [1, 2, 3, 7, 20, 499, 500, 501, 100_000] {
        let c = parse_ok(&format!("[server]\nmax_inflight = {max}\n{MINIMAL}"));
        let m = &c.monitor;
        assert!(m.warn_inflight <= m.alert_inflight, "max {max}: {m:?}");
        assert!(m.alert_inflight < max, "max {max}: {m:?}");
        assert!(c.warnings.is_empty(), "max {max}: {:?}", c.warnings);
    }
    // Explicit values win; an unset partner moves so the pair stays ordered.
    let c = parse_ok(&format!(
        "[server]\nmax_inflight = 100\n[monitor]\nwarn_inflight = 90\n{MINIMAL}"
    ));
    assert_eq!(
        (c.monitor.warn_inflight, c.monitor.alert_inflight),
        (90, 95)
    );
    assert!(c.monitor.warn_inflight_set && !c.monitor.alert_inflight_set);
    let c = parse_ok(&format!(
        "[server]\nmax_inflight = 100\n[monitor]\nwarn_inflight = 97\n{MINIMAL}"
    ));
    assert_eq!(
        (c.monitor.warn_inflight, c.monitor.alert_inflight),
        (97, 97)
    );
    let c = parse_ok(&format!("[monitor]\nalert_inflight = 5\n{MINIMAL}"));
    assert_eq!((c.monitor.warn_inflight, c.monitor.alert_inflight), (5, 5));
    let c = parse_ok(&format!("[monitor]\nalert_inflight = 450\n{MINIMAL}"));
    assert_eq!(
        (c.monitor.warn_inflight, c.monitor.alert_inflight),
        (400, 450)
    );
    let s = parse_ok(MINIMAL).summary();
    assert!(
        s.contains(
            "warn_inflight 400 (80% of max_inflight), alert_inflight 475 (95% of max_inflight)"
        ),
        "{s}"
    );
    let s = c.summary();
    assert!(
        s.contains("warn_inflight 400 (80% of max_inflight), alert_inflight 450\n"),
        "{s}"
    );
}

#[test]
fn thresholds_that_can_never_fire_are_warnings_with_line_and_key() {
    let c = parse_ok(&format!(
        "[server]\nmax_inflight = 500\n[monitor]\nwarn_inflight = 2000\nalert_inflight = 5000\n{MINIMAL}"
    ));
    assert_eq!(
        (c.monitor.warn_inflight, c.monitor.alert_inflight),
        (2000, 5000)
    );
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with(
            "ringway.toml:4: monitor.warn_inflight: 2000 is not below server.max_inflight (500)"
        ),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("ringway.toml:5: monitor.alert_inflight: 5000 is not below"),
        "{w:?}"
    );
    // Just below max_inflight: fine.
    let c = parse_ok(&format!(
        "[server]\nmax_inflight = 500\n[monitor]\nalert_inflight = 499\n{MINIMAL}"
    ));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn max_connections_is_read_and_bounded() {
    let c = parse_ok(&format!("[server]\nmax_connections = 64\n{MINIMAL}"));
    assert_eq!(c.server.max_connections, 64);
    assert!(c.summary().contains("max_connections 64"));
    let e = parse_err(&format!("[server]\nmax_connections = 0\n{MINIMAL}"));
    assert_err(&e, 2, "server.max_connections", ">= 1");
    let e = parse_err(&format!(
        "[server]\n\nmax_connections = \"many\"\n{MINIMAL}"
    ));
    assert_err(&e, 3, "server.max_connections", "expected an integer");
    let e = parse_err(&format!("[server]\nmax_connection = 5\n{MINIMAL}"));
    assert_err(&e, 2, "server.max_connection", "unknown key");
}

#[test]
fn permission_warning_names_file_and_mode() {
    let p = Path::new("/etc/ringway/ringway.toml");
    for mode in [0o600, 0o640, 0o660, 0o100600, 0o100640] {
        assert!(permission_warning(p, mode).is_none(), "{mode:o}");
    }
    let w = permission_warning(p, 0o100644)
        .expect("0644 warns")
        .to_string();
    assert_eq!(
        w,
        "/etc/ringway/ringway.toml: file mode 0644: every user on this machine can read it, \
         and it holds channel keys and client tokens; run chmod 600 /etc/ringway/ringway.toml \
         (or chmod 640 with a group you trust)"
    );
    let w = permission_warning(p, 0o666)
        .expect("0666 warns")
        .to_string();
    assert!(
        w.contains("mode 0666: every user on this machine can read and change it"),
        "{w}"
    );
    let w = permission_warning(p, 0o602)
        .expect("0602 warns")
        .to_string();
    assert!(w.contains("can change it"), "{w}");
}

#[test]
fn load_warns_about_a_world_readable_file() {
    use std::os::unix::fs::PermissionsExt;
    let path =
        std::env::temp_dir().join(format!("ringway-config-mode-{}.toml", std::process::id()));
    std::fs::write(&path, MINIMAL).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].to_string().contains("mode 0644"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = load(&path).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn listen_forms() {
    for (text, want) in [
        ("127.0.0.1:3000", "127.0.0.1:3000"),
        ("0.0.0.0:80", "0.0.0.0:80"),
        ("[::1]:3000", "[::1]:3000"),
        ("localhost:3001", "127.0.0.1:3001"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        let c = parse_ok(&format!("[server]\nlisten = \"{text}\"\n{MINIMAL}"));
        assert_eq!(c.server.listen, want.parse::<SocketAddr>().unwrap());
        assert_eq!(c.server.listen_text, text);
    }
    for bad in [
        "3000",
        "127.0.0.1",
        "127.0.0.1:99999",
        ":3000",
        "::1:3000",
        "a b:1",
    ] {
        let e = parse_err(&format!("[server]\nlisten = \"{bad}\"\n{MINIMAL}"));
        assert_err(&e, 2, "server.listen", "listen address");
    }
}

#[test]
fn base_url_forms() {
    let cases = [
        (
            "https://api.openai.com",
            Scheme::Https,
            "api.openai.com",
            443,
            "",
        ),
        (
            "https://api.openai.com/",
            Scheme::Https,
            "api.openai.com",
            443,
            "",
        ),
        (
            "http://gw.local:8080/openai/",
            Scheme::Http,
            "gw.local",
            8080,
            "/openai",
        ),
        (
            "http://10.0.0.1/a/b//",
            Scheme::Http,
            "10.0.0.1",
            80,
            "/a/b",
        ),
        ("http://[::1]:9000", Scheme::Http, "::1", 9000, ""),
        (
            "https://[2001:db8::1]/x",
            Scheme::Https,
            "2001:db8::1",
            443,
            "/x",
        ),
        ("HTTPS://Example.com", Scheme::Https, "Example.com", 443, ""),
    ];
    for (url, scheme, host, port, prefix) in cases {
        let text = MINIMAL.replace("http://127.0.0.1:9000", url);
        let ch = parse_ok(&text).channels.remove(0);
        assert_eq!(
            (
                ch.scheme,
                ch.host.as_str(),
                ch.port,
                ch.path_prefix.as_str()
            ),
            (scheme, host, port, prefix),
            "{url}"
        );
        assert!(!ch.base_url.ends_with('/'));
    }
    for bad in [
        "api.openai.com",
        "ftp://x",
        "https://",
        "https://host:0",
        "https://host:70000",
        "https://host:port",
        "https://host?x=1",
        "https://host/p#frag",
        "https://user:pw@host",
        "http://::1:9000",
        "http://[::1",
        "http://[nothex]:1",
        "http://[::1]x",
        "http://ho st/",
    ] {
        let e = parse_err(&MINIMAL.replace("http://127.0.0.1:9000", bad));
        assert_err(&e, 4, "channels[0].base_url", "base_url");
    }
    let e = parse_err(&MINIMAL.replace("http://127.0.0.1:9000", "https://user:secret@h"));
    assert!(!e.to_string().contains("secret"), "{e}");
}

#[test]
fn display_format() {
    let e = parse_err(&format!(
        "[timeouts]\n\n\n\n\n\nconnect = \"10x\"\n{MINIMAL}"
    ));
    assert_eq!(
        e.to_string(),
        "ringway.toml:7: timeouts.connect: invalid duration \"10x\" (use 250ms, 10s, 15m, 1h)"
    );
}

mod errors;
mod tokens;
