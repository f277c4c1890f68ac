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

/// Builds the project in `args.dir`.
pub fn run(args: &BuildArgs) -> anyhow::Result<Built> {
    let dir = &args.dir;
    if !dir.join("Cargo.toml").exists() {
        if dir.join("package.json").exists() || dir.join("pyproject.toml").exists() {
            bail!(
                "{} is not a Rust project: `ferry build` builds Rust projects so far (build a \
                 JavaScript or Python component with jco or componentize-py, then `ferry deploy`)",
                dir.display()
            );
        }
        bail!(
            "{} has no Cargo.toml: run this in a function project's folder, or give it with \
             --dir (make one with `ferry new http NAME`)",
            dir.display()
        );
    }
    if !have("cargo", &["--version"]) {
        bail!("cargo is not installed: install Rust with rustup (https://rustup.rs), then run `ferry build` again");
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
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir);
    if args.component {
        cmd.args(["component", "build", "--release"]);
    } else {
        cmd.args(["build", "--target", "wasm32-wasip2", "--release"]);
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("the build failed (cargo's errors are above)");
    }
    let component = component_path(dir, target)?;
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
