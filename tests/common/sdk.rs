//! The official Python SDKs for the SDK tests (`sdk_smoke`, `sdk_responses`, `convert_sdk`,
//! `client_tls`): one set of rules for finding an interpreter that has a package, and for what
//! happens when none has it.
//!
//! The interpreter: `$RINGWAY_PYTHON` if set, else `.ci/venv/bin/python` if `.ci/run` made that
//! venv, else `python3`. Without the package (`openai`, `anthropic`) a test FAILS when `CI` or
//! `RINGWAY_REQUIRE_SDK` is set, and otherwise skips, saying so on the real stderr in a banner
//! that shows even though cargo test hides a passing test's output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The interpreter to run the SDK with, and where that choice came from.
pub fn python() -> (PathBuf, &'static str) {
    if let Some(p) = std::env::var_os("RINGWAY_PYTHON").filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), "RINGWAY_PYTHON");
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv/bin/python");
    if venv.exists() {
        return (venv, ".ci/venv (made by .ci/run)");
    }
    (PathBuf::from("python3"), "PATH")
}

/// Whether `CI` or `RINGWAY_REQUIRE_SDK` asks for a failure instead of a skip (set, and not
/// empty, `0` or `false`).
pub fn sdk_required() -> Option<&'static str> {
    ["RINGWAY_REQUIRE_SDK", "CI"].into_iter().find(|var| {
        std::env::var(var)
            .map(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
            .unwrap_or(false)
    })
}

/// `Err` with the reason when `python -c 'import PACKAGE'` does not succeed.
pub fn package_available(python: &Path, package: &str) -> Result<(), String> {
    match Command::new(python)
        .args(["-c", &format!("import {package}")])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("import failed")
            .to_string()),
        Err(e) => Err(format!("cannot run it: {e}")),
    }
}

/// The interpreter that can import `package` (one name, or several as in `"openai, httpx"`),
/// or `None` after printing the skip banner for `test` (its full name, `file::function`);
/// panics instead when the SDK is required.
pub fn python_with(package: &str, test: &str) -> Option<PathBuf> {
    let (python, from) = python();
    let Err(why) = package_available(&python, package) else {
        return Some(python);
    };
    let noun = if package.contains(',') {
        "packages are"
    } else {
        "package is"
    };
    let what = format!(
        "the {package} Python {noun} not importable by {} (from {from}): {why}",
        python.display()
    );
    if let Some(var) = sdk_required() {
        panic!("{var} is set, so {test} may not skip: {what}. `bash .ci/run` installs it into .ci/venv; or set RINGWAY_PYTHON to an interpreter that has it");
    }
    // Straight to fd 2: eprintln! would be captured, and a passing test's output hidden.
    let banner = "=".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{banner}\nSKIPPED {test} (reported as ok): {what}\n\
         To run it: python3 -m venv .ci/venv && .ci/venv/bin/pip install openai anthropic\n\
         (or set RINGWAY_PYTHON). With CI or RINGWAY_REQUIRE_SDK set this is a failure.\n{banner}"
    );
    None
}

/// Runs `script` (`python -c`) with `args` and no stdin; panics with its stdout and stderr if it
/// fails; returns its stdout.
pub fn run_script(python: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sdk script failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}
