//! `ferry build`: builds the function project in a folder with its toolchain and says what came
//! out (the component, its size and its world), or how to install what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::bindings::{EVENT_EXPORT, HTTP_EXPORT_PREFIX};

/// What `ferry build` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// The project folder.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Build with `cargo component build` (wasm32-wasip1 and the preview-1 adapter) instead of
    /// plain cargo for wasm32-wasip2.
    #[arg(long)]
    pub component: bool,
}

/// What was built.
#[derive(Debug, serde::Serialize)]
pub struct Built {
    /// The component file.
    pub component: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// `http` or `event`.
    pub world: &'static str,
}

/// Which Ferry world a component targets, from its exports (no compiling).
pub fn world_of(bytes: &[u8]) -> anyhow::Result<&'static str> {
    let mut exports = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::ComponentExportSection(reader) =
            payload.context("the file is not a valid WebAssembly component")?
        {
            for export in reader {
                exports.push(export?.name.name.to_string());
            }
        }
    }
    if exports.iter().any(|e| e.starts_with(HTTP_EXPORT_PREFIX)) {
        Ok("http")
    } else if exports.iter().any(|e| e == EVENT_EXPORT) {
        Ok("event")
    } else if exports.is_empty() {
        bail!("the file exports nothing: is it a component (not a core module)?")
    } else {
        bail!(
            "the component exports neither {HTTP_EXPORT_PREFIX}.x/incoming-handler nor {EVENT_EXPORT}: {}",
            exports.join(", ")
        )
    }
}

fn have(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `program` is on PATH (or, with a slash, a file relative to `dir`).
fn on_path(program: &str, dir: &Path) -> bool {
    if program.contains('/') {
        return dir.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// What to tell someone whose `program` is missing.
fn install_hint(program: &str) -> String {
    match program {
        "componentize-py" => "componentize-py is not installed: `pip install componentize-py` \
                              (Python 3.10 or newer), then run `ferry build` again"
            .to_string(),
        "npm" | "npx" | "node" => format!(
            "Node.js is not installed (`{program}` is not on PATH): install Node.js 20 or newer \
             (https://nodejs.org), then run `ferry build` again"
        ),
        "cargo" => "cargo is not installed: install Rust with rustup (https://rustup.rs), then \
                    run `ferry build` again"
            .to_string(),
        _ => format!(
            "`{program}` (the first word of ferry.toml's [build] command) is not installed or \
             not on PATH"
        ),
    }
}

/// A command whose output goes to this process's stderr: what `ferry build` prints on stdout
/// (or as JSON) is its result alone.
fn quiet_command(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).stdout(std::io::stderr());
    cmd
}

/// Builds the project in `args.dir`: with the `[build]` command of its `ferry.toml` when it has
/// one, else as a Rust project.
pub fn run(args: &BuildArgs) -> anyhow::Result<Built> {
    let dir = &args.dir;
    let manifest_path = dir.join("ferry.toml");
    let manifest = if manifest_path.exists() {
        let text = std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?;
        Some(
            crate::manifest::Manifest::parse(&text)
                .with_context(|| format!("in {}", manifest_path.display()))?,
        )
    } else {
        None
    };
    if let Some((manifest, build)) = manifest
        .as_ref()
        .and_then(|m| m.build.as_ref().map(|b| (m, b)))
    {
        if args.component {
            bail!(
                "--component builds a Rust project with cargo component; this project builds \
                 with the [build] command of its ferry.toml"
            );
        }
        let component = manifest.component.as_deref().with_context(|| {
            format!(
                "{} has a [build] command but no `component`: name the file the command makes",
                manifest_path.display()
            )
        })?;
        return run_command(dir, &build.command, &dir.join(component));
    }
    if !dir.join("Cargo.toml").exists() {
        bail!(
            "{} has no Cargo.toml and no ferry.toml with a [build] command: run this in a \
             function project's folder, or give it with --dir (make one with `ferry new http \
             NAME`)",
            dir.display()
        );
    }
    if !have("cargo", &["--version"]) {
        bail!("{}", install_hint("cargo"));
    }
    let target = if args.component {
        if !have("cargo", &["component", "--version"]) {
            bail!("cargo component is not installed: `cargo install cargo-component --locked`, or build without --component");
        }
        "wasm32-wasip1"
    } else {
        "wasm32-wasip2"
    };
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Some(list) = installed {
        if !list.lines().any(|l| l.trim() == target) {
            bail!("the Rust target {target} is not installed: `rustup target add {target}`");
        }
    }
    let mut cmd = quiet_command("cargo", dir);
    if args.component {
        cmd.args(["component", "build", "--release"]);
    } else {
        cmd.args(["build", "--target", "wasm32-wasip2", "--release"]);
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("the build failed (cargo's errors are above)");
    }
    built(component_path(dir, target)?)
}

/// Runs a `[build]` command in `dir` (installing a JavaScript project's packages first when it
/// has none), then reads `component`.
fn run_command(dir: &Path, command: &str, component: &Path) -> anyhow::Result<Built> {
    let program = command.split_whitespace().next().unwrap_or("");
    if program.is_empty() {
        bail!("ferry.toml's [build] command is empty");
    }
    if dir.join("package.json").exists() && !dir.join("node_modules").exists() {
        if !on_path("npm", dir) {
            bail!("{}", install_hint("npm"));
        }
        eprintln!("ferry build: installing the project's packages (npm install)…");
        let status = quiet_command("npm", dir)
            .args(["install", "--no-audit", "--no-fund", "--prefer-offline"])
            .status()
            .context("cannot run npm")?;
        if !status.success() {
            bail!("npm install failed (its errors are above)");
        }
    }
    // A plain program name is looked for first, to say how to install it; a command that
    // starts with shell syntax (`cd web && …`, `FOO=1 make`) is left to the shell.
    let plain = program
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c))
        && !matches!(
            program,
            "cd" | "exec" | "export" | "set" | "env" | "true" | "."
        );
    if plain && !on_path(program, dir) {
        bail!("{}", install_hint(program));
    }
    eprintln!("ferry build: {command}");
    let status = quiet_command("sh", dir)
        .args(["-c", command])
        .status()
        .context("cannot run sh")?;
    if status.code() == Some(127) {
        bail!(
            "the build failed: a program `{command}` runs was not found (exit code 127; the \
             shell named it above)"
        );
    }
    if !status.success() {
        bail!(
            "the build failed: `{command}` {} (its errors are above)",
            status
                .code()
                .map_or("was killed".to_string(), |c| format!("exited with {c}"))
        );
    }
    built(component.to_path_buf())
}

/// Reads what a build made.
fn built(component: PathBuf) -> anyhow::Result<Built> {
    let bytes = std::fs::read(&component)
        .with_context(|| format!("cannot read the built component {}", component.display()))?;
    let world = world_of(&bytes)?;
    Ok(Built {
        size: bytes.len() as u64,
        component,
        world,
    })
}

/// Where the build put the component: `target/TARGET/release/LIB.wasm` (or under
/// `CARGO_TARGET_DIR`), LIB from the package name in Cargo.toml.
fn component_path(dir: &Path, target: &str) -> anyhow::Result<PathBuf> {
    let manifest =
        std::fs::read_to_string(dir.join("Cargo.toml")).context("cannot read Cargo.toml")?;
    let cargo: toml::Value = toml::from_str(&manifest).context("Cargo.toml is not valid TOML")?;
    let package = cargo
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("Cargo.toml has no [package] name")?;
    let lib = cargo
        .get("lib")
        .and_then(|l| l.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or(package)
        .replace('-', "_");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| dir.join(d))
        .unwrap_or_else(|| dir.join("target"));
    Ok(target_dir
        .join(target)
        .join("release")
        .join(format!("{lib}.wasm")))
}
