//! The command line: `ringway --config PATH [--takeover]`, `check-config`, `demo`, `mock`,
//! `top`.
//! `demo` and `mock` need the default cargo feature `demo` (the `ringway-mock` crate); a build
//! without it says so and exits 2.
//!
//! Owns: argument parsing, the commands, and exit codes
//! (0 ok, 2 bad config or usage, 1 runtime failure, including an address another process
//! listens on). Config warnings are printed by `check-config` (stderr, exit status still 0)
//! and logged once as WARN when the relay starts. Must not: contain relay logic.

use std::path::Path;

use crate::config;
use crate::server::start_with;

const USAGE_HEAD: &str = "\
ringway — OpenAI-compatible LLM API relay (monoio/io_uring, thread-per-core)

USAGE:
    ringway --config PATH            run the relay (foreground; logs to stderr)
    ringway --config PATH --takeover run the relay, taking the listening sockets over from the
                                     ringway of the same user on server.listen, if one runs
                                     there (binary upgrade without a refused connection; then
                                     SIGTERM the old process; docs/upgrade.md)
    ringway check-config PATH        validate, print a one-screen summary, exit 0; on error exit 2
";

/// The lines for `demo` and `mock`, which exist only in a build with the `demo` feature.
#[cfg(feature = "demo")]
const USAGE_DEMO: &str = "    ringway demo [--port N]          relay + built-in mock upstream on loopback, no API key needed
    ringway mock --listen ADDR       the mock upstream alone (tests, benches, fault injection)
        [--tls-cert CERT.pem --tls-key KEY.pem]   serve it over TLS (PEM chain, leaf first)
    ringway mock --help              the mock's models (its fault injection menu)
";
#[cfg(not(feature = "demo"))]
const USAGE_DEMO: &str =
    "    (demo and mock: not in this binary, built without the `demo` cargo feature)
";

const USAGE_TAIL: &str =
    "    ringway top [URL]                live terminal view of a running relay's health (q quits)
    ringway top [URL] --once [--json]  one reading (text, or the health JSON) and exit
    ringway --version | --help

SIGNALS:
    SIGTERM, SIGINT                  drain ([server] drain) and exit 0
    SIGHUP                           reload the config, reopen the access log
    SIGUSR2                          start this binary's path with --takeover, hand it the
                                     listeners, then drain (binary upgrade in place)

ENVIRONMENT:
    RELAY_TIMEOUT=SECONDS            overrides [timeouts] total
    RINGWAY_FORCE_EPOLL=1            skip io_uring and use the epoll driver
";

/// The text of `ringway --help`.
pub fn usage() -> String {
    format!("{USAGE_HEAD}{USAGE_DEMO}{USAGE_TAIL}")
}

pub fn main(args: Vec<String>) -> i32 {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["--help"] | ["-h"] | ["help"] => {
            print!("{}", usage());
            0
        }
        ["--version"] | ["-V"] => {
            println!("ringway {}", env!("CARGO_PKG_VERSION"));
            0
        }
        ["--config", path] | ["-c", path] => run_relay(Path::new(path), false),
        ["--config" | "-c", path, "--takeover"] | ["--takeover", "--config" | "-c", path] => {
            run_relay(Path::new(path), true)
        }
        ["check-config", path] => check_config(Path::new(path)),
        #[cfg(feature = "demo")]
        ["demo"] => crate::demo::run(3000),
        #[cfg(feature = "demo")]
        ["demo", "--port", port] => match port.parse() {
            Ok(p) => crate::demo::run(p),
            Err(_) => usage_error(&format!("--port: not a port number: {port}")),
        },
        #[cfg(feature = "demo")]
        ["mock", rest @ ..] => mock(rest),
        #[cfg(not(feature = "demo"))]
        [command @ ("demo" | "mock"), ..] => {
            eprintln!(
                "ringway: `{command}` is not in this binary: it was built without the `demo` \
                 cargo feature (cargo build --no-default-features). Build with the default \
                 features (cargo build --release) for `ringway demo` and `ringway mock`."
            );
            2
        }
        ["top", rest @ ..] => top(rest),
        _ => usage_error(&format!("unrecognised arguments: {}", args.join(" "))),
    }
}

#[cfg(feature = "demo")]
const MOCK_USAGE: &str = "\
USAGE:
    ringway mock --listen ADDR [--tls-cert CERT.pem --tls-key KEY.pem]
        the fault-injecting mock upstream alone, until killed; with both TLS flags it serves
        https (PEM chain, leaf first, and its key)
";

/// `ringway mock --listen ADDR [--tls-cert CERT.pem --tls-key KEY.pem]`, flags in any order;
/// `ringway mock --help` prints the model table.
#[cfg(feature = "demo")]
fn mock(args: &[&str]) -> i32 {
    if matches!(args, ["--help"] | ["-h"]) {
        print!("{MOCK_USAGE}\n{}\n", ringway_mock::MODELS_DOC);
        return 0;
    }
    let (mut listen, mut cert, mut key) = (None, None, None);
    for pair in args.chunks(2) {
        let slot = match pair[0] {
            "--listen" => &mut listen,
            "--tls-cert" => &mut cert,
            "--tls-key" => &mut key,
            other => return usage_error(&format!("mock: unrecognised argument {other}")),
        };
        let Some(value) = pair.get(1) else {
            return usage_error(&format!("mock: {} needs a value", pair[0]));
        };
        if slot.replace(*value).is_some() {
            return usage_error(&format!("mock: {} given twice", pair[0]));
        }
    }
    let Some(listen) = listen else {
        return usage_error("mock: --listen ADDR is required");
    };
    let result = match (cert, key) {
        (None, None) => ringway_mock::run(listen),
        (Some(cert), Some(key)) => ringway_mock::run_tls(listen, cert, key),
        _ => return usage_error("mock: --tls-cert and --tls-key go together"),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringway mock: {e}");
            1
        }
    }
}

/// `ringway top [URL] [--once [--json]]`, flags in any order.
fn top(args: &[&str]) -> i32 {
    let (mut url, mut once, mut json) = (None, false, false);
    for &a in args {
        match a {
            "--once" => once = true,
            "--json" => json = true,
            flag if flag.starts_with('-') => {
                return usage_error(&format!("top: unrecognised flag {flag}"))
            }
            u if url.is_none() => url = Some(u),
            u => return usage_error(&format!("top: a second URL {u}")),
        }
    }
    let url = url.unwrap_or("http://127.0.0.1:3000");
    match (once, json) {
        (true, json) => crate::top::once(url, json),
        (false, true) => usage_error("top: --json goes with --once"),
        (false, false) => crate::top::run(url),
    }
}

fn usage_error(msg: &str) -> i32 {
    eprintln!("ringway: {msg}\n\n{}", usage());
    2
}

fn check_config(path: &Path) -> i32 {
    match config::load(path) {
        Ok(c) => {
            print!("{}", c.summary());
            let fds = crate::listen::FdBudget::of(&c);
            let limit = |n: u64| {
                if n == u64::MAX {
                    "unlimited".to_string()
                } else {
                    n.to_string()
                }
            };
            print!(
                "fds       about {} needed (max_connections + max_inflight + {} for the process); RLIMIT_NOFILE {}, hard {}",
                fds.needed,
                fds.reserve,
                limit(fds.soft),
                limit(fds.hard)
            );
            if fds.target_soft() > fds.soft {
                print!(" (raised to {} at start)", fds.target_soft());
            }
            println!();
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            if let Some(w) = fds.warning(&c) {
                eprintln!("warning: {}: {w}", c.path.display());
            }
            println!("config OK");
            0
        }
        Err(e) => {
            eprintln!("config error: {e}");
            2
        }
    }
}

fn run_relay(path: &Path, takeover: bool) -> i32 {
    // Before any thread exists, so that every thread inherits the mask (see `signals`).
    if let Err(e) = crate::signals::block() {
        crate::log::error(&format!("cannot block signals: {e}"));
        return 1;
    }
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return 2;
        }
    };
    crate::log::set_format(config.log.format);
    crate::takeover::remember_config_path(path);
    for w in &config.warnings {
        crate::log::warn(&format!("config: {w}"));
    }
    match start_with(config, takeover) {
        Ok(running) => {
            if let Err(e) = crate::signals::spawn(running.lifecycle) {
                crate::log::error(&format!("cannot start the signal thread: {e}"));
                return 1;
            }
            running.wait();
            0
        }
        Err(e) => {
            crate::log::error(&format!("cannot start: {e}"));
            1
        }
    }
}
