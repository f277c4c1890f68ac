//! The guides in docs/guides/ and the quickstart run as written: every `sh` block, in order,
//! against a real host (its ports put in place of 8080 and 8081), each `# → text` line a text
//! the output must show. (Blocks fenced as `shell` are what the harness does itself: installing
//! `ferry`, starting `ferry serve`.)
//!
//! A block that is `ferry dev` runs in the background, as in a second terminal, until the guide
//! ends; while it runs, a later block whose output does not show what it should yet (the new
//! version is still building) is run again until it does, within a deadline.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_tests::Ferry;

/// How long a block may take to show what it should while `ferry dev` rebuilds.
const SETTLE: Duration = Duration::from_secs(240);

/// The `sh` blocks of a Markdown file.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The texts a block's output must show.
fn expected(block: &str) -> Vec<&str> {
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# → "))
        .collect()
}

/// Whether a block starts `ferry dev` (a command that keeps running).
fn runs_dev(block: &str) -> bool {
    block
        .lines()
        .any(|l| l.split('#').next().unwrap_or("").trim() == "ferry dev")
}

/// A block running in the background, its output gathered; stopped with Ctrl-C (SIGINT to its
/// process group) when dropped.
struct Background {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Background {
    fn shown(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-s", "INT", "--", &group])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

/// `program --version`'s first number (the major version), when it runs.
fn major_version(program: &str) -> Option<u32> {
    let out = Command::new(program).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let digits: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    Some(digits.parse().unwrap_or(0))
}

/// Runs the `sh` blocks of `file`, unless a program in `needs` (program, lowest major
/// version, what installs it) is missing or older: then the test says so (on the process's
/// stderr, which the test harness does not capture) and passes without running them.
fn run_guide(file: &str, needs: &[(&str, u32, &str)]) {
    for (program, lowest, install) in needs {
        if major_version(program).is_none_or(|v| v < *lowest) {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {file}: `{program}` {lowest} or newer is not installed ({install}; \
                 scripts/test.sh installs it and says why it could not)"
            );
            return;
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join(file)).unwrap();
    let blocks = sh_blocks(&guide);
    assert!(!blocks.is_empty(), "{file} has its commands in sh blocks");
    // The guide's commands and what they print are under test here, not which compiler made
    // the code answering them (tiers.rs tests that): the host serves baseline code only. Each
    // deploy of an 18 MB Python or 13 MB JavaScript component would otherwise compile its
    // optimized code behind it, 5-10 s of CPU that nothing here waits for.
    let ferry = Ferry::start_with(&["--optimized-compile", "false"]);
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = ferry_tests::ferry_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Every block is bounded: one that never ends fails the test instead of hanging it.
    let shell = |script: &str| {
        let mut cmd = Command::new("timeout");
        ferry_tests::as_a_user(&mut cmd)
            .args(["--signal=KILL", "600", "bash", "-c"])
            .arg(script)
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("FERRY_ADMIN", &ferry.admin)
            .env("FERRY_DATA_DIR", &ferry.data_dir)
            .env_remove("FERRY_TOKEN");
        cmd
    };
    let mut background: Option<Background> = None;
    for block in blocks {
        let script = block
            .replace("http://127.0.0.1:8080", &ferry.public)
            .replace("http://127.0.0.1:8081", &ferry.admin);
        let wanted = expected(&block);
        if runs_dev(&block) {
            let mut cmd = shell(&script);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let output = Arc::new(Mutex::new(String::new()));
            for mut stream in [
                Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                Box::new(child.stderr.take().unwrap()),
            ] {
                let output = output.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        output
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                });
            }
            let dev = Background { child, output };
            let deadline = Instant::now() + SETTLE;
            let mut dev = dev;
            while !wanted.iter().all(|w| dev.shown().contains(w)) {
                let exited = dev.child.try_wait().unwrap();
                assert!(
                    Instant::now() < deadline && exited.is_none(),
                    "{file}: after\n{block}\nthe output does not show {wanted:?} ({}):\n{}",
                    exited.map_or("still running".to_string(), |s| format!("it ended: {s}")),
                    dev.shown()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            background = Some(dev);
            continue;
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            let out = shell(&script).output().unwrap();
            let shown = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let missing: Vec<&&str> = wanted.iter().filter(|w| !shown.contains(**w)).collect();
            if missing.is_empty() {
                break;
            }
            let dev = background
                .as_ref()
                .map(Background::shown)
                .unwrap_or_default();
            assert!(
                background.is_some() && Instant::now() < deadline,
                "{file}: after\n{block}\nthe output does not show {missing:?}:\n{shown}\n\
                 (ferry dev's output:\n{dev})"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

#[test]
fn the_rust_guide_runs_as_written() {
    run_guide("docs/guides/rust.md", &[]);
}

#[test]
fn the_python_guide_runs_as_written() {
    run_guide(
        "docs/guides/python.md",
        &[("componentize-py", 0, "pip install componentize-py")],
    );
}

#[test]
fn the_javascript_guide_runs_as_written() {
    run_guide(
        "docs/guides/javascript.md",
        &[
            ("node", 20, "install Node.js 20 or newer"),
            ("npm", 0, "install Node.js 20 or newer"),
        ],
    );
}

/// The quickstart, as a newcomer types it: `ferry new`, `ferry dev`, a call, an edit, the new
/// version served (installing `ferry` and starting a host are what the harness does).
#[test]
fn the_quickstart_runs_as_written() {
    run_guide("docs/quickstart.md", &[]);
}
