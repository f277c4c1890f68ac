//! The guides in docs/guides/ run as written: every `sh` block, in order, against a real host
//! (its ports put in place of 8080 and 8081), each `# → text` line a text the output must show.

use std::path::Path;
use std::process::Command;

use ferry_tests::Ferry;

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

/// Runs the `sh` blocks of `file` for which `pick` is true.
fn run_guide(file: &str, pick: impl Fn(&str) -> bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guide = std::fs::read_to_string(root.join(file)).unwrap();
    let blocks: Vec<String> = sh_blocks(&guide).into_iter().filter(|b| pick(b)).collect();
    assert!(!blocks.is_empty(), "{file} has its commands in sh blocks");
    let ferry = Ferry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = ferry_tests::ferry_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for block in blocks {
        let script = block
            .replace("http://127.0.0.1:8080", &ferry.public)
            .replace("http://127.0.0.1:8081", &ferry.admin);
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("FERRY_ADMIN", &ferry.admin)
            .env("FERRY_DATA_DIR", &ferry.data_dir)
            .env_remove("FERRY_TOKEN")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in block.lines().filter_map(|l| l.trim().strip_prefix("# → ")) {
            assert!(
                shown.contains(expected),
                "{file}: after\n{block}\nthe output does not show {expected:?}:\n{shown}"
            );
        }
    }
}

#[test]
fn the_rust_guide_runs_as_written() {
    run_guide("docs/guides/rust.md", |_| true);
}

/// The quickstart's `ferry new` path, as a newcomer types it (its first block, installing and
/// starting the host, is what the harness does).
#[test]
fn the_quickstart_runs_as_written() {
    run_guide("docs/quickstart.md", |block| block.contains("ferry new"));
}
