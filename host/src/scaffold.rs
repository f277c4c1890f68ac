//! `ferry new` and `ferry wit`: project templates and Ferry's WIT, embedded in the binary (no
//! network is needed to scaffold) and versioned with it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Ferry's WIT package and the WASI packages it uses, as `wit/` holds them (relative paths).
pub const WIT: &[(&str, &str)] = &[
    ("world.wit", include_str!("../../wit/world.wit")),
    ("deps/cli.wit", include_str!("../../wit/deps/cli.wit")),
    ("deps/clocks.wit", include_str!("../../wit/deps/clocks.wit")),
    (
        "deps/filesystem.wit",
        include_str!("../../wit/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../wit/deps/io.wit")),
    ("deps/random.wit", include_str!("../../wit/deps/random.wit")),
    (
        "deps/sockets.wit",
        include_str!("../../wit/deps/sockets.wit"),
    ),
];

/// What kind of function a template makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// An HTTP function (the `wasi:http/proxy` world).
    Http,
    /// An event function (CloudEvents in, optionally one out).
    Event,
}

/// The language of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust: cargo (`wasm32-wasip2`) or cargo component.
    Rust,
}

/// One file of a template: its path in the project and its text, with `{{name}}` (the function
/// name) and `{{crate}}` (the name as a Rust library file name) to fill in.
type Template = &'static [(&'static str, &'static str)];

const RUST_HTTP: Template = &[
    (
        "Cargo.toml",
        include_str!("../templates/rust-http/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/rust-http/src/lib.rs"),
    ),
    (
        "ferry.toml",
        include_str!("../templates/rust-http/ferry.toml"),
    ),
    (
        "README.md",
        include_str!("../templates/rust-http/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../templates/rust-http/gitignore"),
    ),
];

const RUST_EVENT: Template = &[
    (
        "Cargo.toml",
        include_str!("../templates/rust-event/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../templates/rust-event/src/lib.rs"),
    ),
    (
        "ferry.toml",
        include_str!("../templates/rust-event/ferry.toml"),
    ),
    (
        "README.md",
        include_str!("../templates/rust-event/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../templates/rust-event/gitignore"),
    ),
];

/// Writes Ferry's WIT into `dir` (`dir/world.wit`, `dir/deps/*.wit`); returns the files written.
pub fn write_wit(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (path, text) in WIT {
        let to = dir.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&to, text).with_context(|| format!("cannot write {}", to.display()))?;
        written.push(to);
    }
    Ok(written)
}

/// Makes a new function project `name` of `kind` in `lang` at `dir` (which must not exist, or be
/// empty); returns the files written, relative to `dir`.
pub fn new_project(kind: Kind, lang: Lang, name: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
    crate::manifest::validate_name(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "{} already exists and is not empty: choose another name or --dir",
                dir.display()
            );
        }
    }
    let template = match (lang, kind) {
        (Lang::Rust, Kind::Http) => RUST_HTTP,
        (Lang::Rust, Kind::Event) => RUST_EVENT,
    };
    let lib = name.replace('-', "_");
    let mut written = Vec::new();
    for (path, text) in template {
        let to = dir.join(path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text.replace("{{name}}", name).replace("{{crate}}", &lib);
        std::fs::write(&to, text).with_context(|| format!("cannot write {}", to.display()))?;
        written.push((*path).to_string());
    }
    if kind == Kind::Event {
        // The event world's bindings are generated from these at compile time.
        write_wit(&dir.join("wit"))?;
        written.extend(WIT.iter().map(|(p, _)| format!("wit/{p}")));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_wit_is_the_repositorys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk = Vec::new();
        for sub in ["", "deps"] {
            for entry in std::fs::read_dir(root.join(sub)).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "wit") {
                    let rel = path
                        .strip_prefix(&root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    on_disk.push(rel);
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = WIT.iter().map(|(p, _)| (*p).to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "add new WIT files to scaffold::WIT");
    }

    #[test]
    fn a_project_is_written_with_its_name_and_refused_over_one_that_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hi-there");
        let files = new_project(Kind::Event, Lang::Rust, "hi-there", &dir).unwrap();
        assert!(files.contains(&"wit/world.wit".to_string()));
        let manifest = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
        assert!(manifest.contains("name = \"hi-there\""));
        assert!(manifest.contains("release/hi_there.wasm"));
        assert!(!std::fs::read_to_string(dir.join("src/lib.rs"))
            .unwrap()
            .contains("{{"));
        let again = new_project(Kind::Http, Lang::Rust, "hi-there", &dir).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
        let bad = new_project(Kind::Http, Lang::Rust, "Bad Name", &tmp.path().join("x"));
        assert!(bad.is_err());
    }
}
