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
    /// Python: componentize-py.
    Python,
    /// JavaScript: componentize-js (the engine of `jco componentize`).
    #[value(alias = "javascript")]
    Js,
}

/// One file of a template: its path in the project and its text, with `{{name}}` (the function
/// name) and `{{crate}}` (the name as a Rust library file name) to fill in.
type Template = &'static [(&'static str, &'static str)];

/// A template's files from `host/templates/DIR`: (path in the project, file in DIR).
macro_rules! template {
    ($dir:literal: $($to:literal <- $from:literal),* $(,)?) => {
        &[$(($to, include_str!(concat!("../templates/", $dir, "/", $from)))),*]
    };
}

const RUST_HTTP: Template = template!("rust-http":
    "Cargo.toml" <- "Cargo.toml",
    "src/lib.rs" <- "src/lib.rs",
    "ferry.toml" <- "ferry.toml",
    "README.md" <- "README.md",
    ".gitignore" <- "gitignore",
);

const RUST_EVENT: Template = template!("rust-event":
    "Cargo.toml" <- "Cargo.toml",
    "src/lib.rs" <- "src/lib.rs",
    "src/world.rs" <- "src/world.rs",
    "ferry.toml" <- "ferry.toml",
    "README.md" <- "README.md",
    ".gitignore" <- "gitignore",
);

const PYTHON_HTTP: Template = template!("python-http":
    "app.py" <- "app.py",
    "test_app.py" <- "test_app.py",
    "ferry.toml" <- "ferry.toml",
    "README.md" <- "README.md",
    ".gitignore" <- "gitignore",
);

const PYTHON_EVENT: Template = template!("python-event":
    "app.py" <- "app.py",
    "test_app.py" <- "test_app.py",
    "ferry.toml" <- "ferry.toml",
    "README.md" <- "README.md",
    ".gitignore" <- "gitignore",
);

const JS_HTTP: Template = template!("js-http":
    "app.js" <- "app.js",
    "app.test.js" <- "app.test.js",
    "package.json" <- "package.json",
    "ferry.toml" <- "ferry.toml",
    "README.md" <- "README.md",
    ".gitignore" <- "gitignore",
);

const JS_EVENT: Template = template!("js-event":
    "app.js" <- "app.js",
    "app.test.js" <- "app.test.js",
    "package.json" <- "package.json",
    "ferry.toml" <- "ferry.toml",
    "README.md" <- "README.md",
    ".gitignore" <- "gitignore",
);

/// The WASI version of the packages in `wit/deps` (what Ferry's WIT imports).
pub const WASI: &str = "0.2.12";

/// The WASI 0.2 patch release JavaScript projects bind to: componentize-js's engine exports
/// `wasi:http/incoming-handler@0.2.10` and refuses WIT of any other version.
pub const JS_WASI_PATCH: u32 = 10;

/// Parses a `--wasi` version: `0.2.N`, N at most the vendored patch release.
pub fn parse_wasi(version: &str) -> anyhow::Result<u32> {
    let newest = newest_patch();
    version
        .strip_prefix("0.2.")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p <= newest)
        .with_context(|| {
            format!(
                "--wasi {version}: Ferry's WIT is WASI {WASI}, and can be written for 0.2.0 to \
                 {WASI} (a host serves every 0.2 release up to {WASI})"
            )
        })
}

fn newest_patch() -> u32 {
    WASI.rsplit('.')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// Ferry's WIT with the WASI packages at `0.2.{patch}` (the vendored release when `None`):
/// versions rewritten, items newer than that release left out, newer deprecations dropped.
pub fn wit_files(patch: Option<u32>) -> Vec<(&'static str, String)> {
    WIT.iter()
        .map(|(path, text)| {
            let text = match patch {
                Some(p) if p != newest_patch() => retarget(text, p),
                _ => (*text).to_string(),
            };
            (*path, text)
        })
        .collect()
}

/// `@since(version = 0.2.N)` or `@deprecated(version = 0.2.N)`: which, and N.
fn gate(line: &str) -> Option<(&'static str, u32)> {
    for kind in ["since", "deprecated"] {
        if let Some(rest) = line
            .strip_prefix('@')
            .and_then(|l| l.strip_prefix(kind))
            .and_then(|l| l.strip_prefix("(version = 0.2."))
        {
            let patch = rest.split(')').next()?.parse().ok()?;
            return Some((kind, patch));
        }
    }
    None
}

/// One WIT file for WASI `0.2.{patch}`: tools such as componentize-js refuse a feature gate that
/// names a release newer than the package's, so a newer function or interface goes (with its
/// docs), a newer type alias only loses its gate (other items name it; an alias adds nothing to
/// a component's interface), and a newer deprecation is dropped.
fn retarget(text: &str, patch: u32) -> String {
    let text = text.replace(&format!("@{WASI}"), &format!("@0.2.{patch}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<&str> = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some((kind, since)) = gate(line.trim()) else {
            out.push(line);
            continue;
        };
        if since <= patch {
            out.push(line);
            continue;
        }
        let item = lines[i..]
            .iter()
            .find(|l| !l.trim().starts_with('@'))
            .map_or("", |l| l.trim());
        if kind == "deprecated" || item.starts_with("type ") {
            continue;
        }
        // The item is newer than the release: leave it out with its docs and annotations.
        while out
            .last()
            .is_some_and(|l| l.trim().starts_with("///") || l.trim().starts_with('@'))
        {
            out.pop();
        }
        while i < lines.len() && lines[i].trim().starts_with('@') {
            i += 1;
        }
        let mut depth = 0i64;
        while i < lines.len() {
            let l = lines[i];
            i += 1;
            depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
            let end = l.trim_end();
            if depth <= 0 && (end.ends_with(';') || end.ends_with('}')) {
                break;
            }
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Writes Ferry's WIT into `dir` (`dir/world.wit`, `dir/deps/*.wit`), its WASI packages at
/// `0.2.{patch}` (see [`wit_files`]); returns the files written.
pub fn write_wit(dir: &Path, patch: Option<u32>) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (path, text) in wit_files(patch) {
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

/// The text of `path` in `template`.
fn template_file(template: Template, path: &str) -> Option<&'static str> {
    template
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, text)| *text)
}

/// Writes the Rust bindings of the `event-function` world (what `ferry new event` puts in
/// `src/world.rs`) to `file`, creating its folder.
pub fn write_rust_bindings(file: &Path) -> anyhow::Result<()> {
    let text = template_file(RUST_EVENT, "src/world.rs")
        .context("the Rust event template has no src/world.rs")?;
    if file.is_dir() {
        bail!(
            "{} is a folder: --rust names the file to write, such as src/world.rs",
            file.display()
        );
    }
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(file, text).with_context(|| format!("cannot write {}", file.display()))
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
        (Lang::Python, Kind::Http) => PYTHON_HTTP,
        (Lang::Python, Kind::Event) => PYTHON_EVENT,
        (Lang::Js, Kind::Http) => JS_HTTP,
        (Lang::Js, Kind::Event) => JS_EVENT,
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
    // The projects whose bindings come from Ferry's WIT get it in `wit/`: Python's and
    // JavaScript's tools generate them at build time; Rust's event template ships them
    // (src/world.rs, generated from this WIT) and cargo component reads `wit/` (Rust's HTTP world
    // comes with the `wasip2` crate).
    let wit = match (lang, kind) {
        (Lang::Rust, Kind::Http) => None,
        (Lang::Rust | Lang::Python, _) => Some(None),
        (Lang::Js, _) => Some(Some(JS_WASI_PATCH)),
    };
    if let Some(patch) = wit {
        write_wit(&dir.join("wit"), patch)?;
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

    /// The Rust event template's bindings (`src/world.rs`) name the hash of the WIT they were
    /// generated from: world.wit, then the other files by path, as `scripts/rust-bindings.sh`
    /// hashes them. A change to the WIT without running that script fails here, and so does a
    /// template that depends on another wit-bindgen release than the one that generated them.
    #[test]
    fn the_rust_event_bindings_are_generated_from_this_wit() {
        use sha2::Digest as _;
        let mut files: Vec<&(&str, &str)> = WIT.iter().collect();
        files.sort_by_key(|(path, _)| (*path != "world.wit", *path));
        let mut hash = sha2::Sha256::new();
        for (_, text) in files {
            hash.update(text.as_bytes());
        }
        let wanted = format!("sha256 {}", hex::encode(hash.finalize()));
        let bindings = template_file(RUST_EVENT, "src/world.rs").unwrap();
        let header: String = bindings.lines().take(5).collect::<Vec<_>>().join("\n");
        assert!(
            header.contains(&wanted),
            "host/templates/rust-event/src/world.rs was not generated from this wit/ ({wanted}): \
             run scripts/rust-bindings.sh"
        );
        // "wit-bindgen 0.62.0's" in the header; `version = "0.62"` in the template.
        let generator = header
            .split("wit-bindgen ")
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap();
        let minor: Vec<&str> = generator.split('.').take(2).collect();
        let manifest = template_file(RUST_EVENT, "Cargo.toml").unwrap();
        let dependency = format!("wit-bindgen = {{ version = \"{}\"", minor.join("."));
        assert!(
            manifest.contains(&dependency),
            "the template's Cargo.toml must depend on the wit-bindgen that generated \
             src/world.rs ({generator}): {dependency} ...}}"
        );
    }

    #[test]
    fn the_wit_parses_at_every_wasi_release_it_can_be_written_for() {
        for patch in 0..=newest_patch() {
            let tmp = tempfile::tempdir().unwrap();
            write_wit(tmp.path(), Some(patch)).unwrap();
            let mut resolve = wit_parser::Resolve::default();
            let (pkg, _) = resolve
                .push_dir(tmp.path())
                .unwrap_or_else(|e| panic!("WASI 0.2.{patch}: {e:?}"));
            for world in ["http-function", "event-function"] {
                resolve
                    .select_world(&[pkg], Some(world))
                    .unwrap_or_else(|e| panic!("WASI 0.2.{patch}, {world}: {e:?}"));
            }
            let http = std::fs::read_to_string(tmp.path().join("deps/http.wit")).unwrap();
            assert!(http.contains(&format!("package wasi:http@0.2.{patch};")));
        }
        let js = wit_files(Some(JS_WASI_PATCH));
        let all: String = js.iter().map(|(_, t)| t.as_str()).collect();
        assert!(!all.contains("0.2.12"), "a newer release is named");
        assert!(
            !all.contains("exit-with-code"),
            "0.2.12's function is left out"
        );
        assert!(all.contains("type field-name"), "0.2.1's alias is kept");
        assert!(parse_wasi("0.2.13").is_err() && parse_wasi("0.3.0").is_err());
        assert_eq!(parse_wasi("0.2.10").unwrap(), 10);
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
