//! The admin API's bearer token: where `ferry serve` gets it (a flag, the environment, a file, or
//! generated on first start into `admin.token` in the data directory) and where the CLI finds
//! it (the same flags, else the data directory of a host on this machine).

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The file in the data directory that holds the admin token in use (mode 0600).
pub const TOKEN_FILE: &str = "admin.token";

/// A token and where it came from, for messages that must not show the token itself.
#[derive(Clone)]
pub struct Token {
    /// The token.
    pub value: String,
    /// Where it came from: "--token", "FERRY_TOKEN", or a file's path.
    pub source: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<redacted> from {})", self.source)
    }
}

/// How a token may be given on the command line or in the environment.
#[derive(Default)]
pub struct Given {
    /// `--token` or `FERRY_TOKEN`.
    pub token: Option<String>,
    /// `--token-file` or `FERRY_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
}

impl Given {
    /// The token given by value or by file, checked: an empty token is an error, never "no
    /// authentication".
    pub fn resolve(&self) -> anyhow::Result<Option<Token>> {
        if let Some(t) = &self.token {
            let source = if std::env::var_os("FERRY_TOKEN").is_some_and(|v| v == t.as_str()) {
                "FERRY_TOKEN"
            } else {
                "--token"
            };
            return check(t.trim(), source).map(Some);
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read the admin token file {} (--token-file, FERRY_TOKEN_FILE)",
                    path.display()
                )
            })?;
            return check(text.trim(), &path.display().to_string()).map(Some);
        }
        Ok(None)
    }
}

/// A token is one header-safe word: printable ASCII, no spaces.
fn check(value: &str, source: &str) -> anyhow::Result<Token> {
    if value.is_empty() {
        bail!(
            "the admin token from {source} is empty; an empty token does not turn authentication \
             off: give a token, or leave {source} unset (serve: --insecure-no-admin-auth turns \
             authentication off on a loopback admin listener)"
        );
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("the admin token from {source} must be printable ASCII without spaces");
    }
    Ok(Token {
        value: value.to_string(),
        source: source.to_string(),
    })
}

/// Refuses `--insecure-no-admin-auth` together with a token, or on an admin listener that is
/// not a loopback address.
pub fn check_no_auth(
    token: Option<&Token>,
    insecure_no_auth: bool,
    admin_listen: SocketAddr,
) -> anyhow::Result<()> {
    if !insecure_no_auth {
        return Ok(());
    }
    if let Some(t) = token {
        bail!(
            "--insecure-no-admin-auth and an admin token (from {}) contradict each other; give one",
            t.source
        );
    }
    if !admin_listen.ip().is_loopback() {
        bail!(
            "--insecure-no-admin-auth is refused: the admin listener {admin_listen} is not a \
             loopback address, so anyone who can reach it could deploy code. Keep \
             authentication on (the default), or listen on 127.0.0.1 with --admin-listen"
        );
    }
    Ok(())
}

/// The token `ferry serve` requires, or None with `--insecure-no-admin-auth` (see
/// [`check_no_auth`]). A given token is kept in `admin.token` so that the CLI on this machine
/// finds it; without one, the kept token is used, or a new one is generated and kept.
pub fn for_serve(
    token: Option<Token>,
    insecure_no_auth: bool,
    data_dir: &Path,
) -> anyhow::Result<Option<Token>> {
    if insecure_no_auth {
        return Ok(None);
    }
    let file = data_dir.join(TOKEN_FILE);
    if let Some(t) = token {
        if read_kept(&file)?.as_deref() != Some(t.value.as_str()) {
            write_private(&file, &t.value)?;
        }
        return Ok(Some(t));
    }
    if let Some(value) = read_kept(&file)? {
        return check(&value, &file.display().to_string()).map(Some);
    }
    let value = generate()?;
    write_private(&file, &value)?;
    Ok(Some(Token {
        value,
        source: file.display().to_string(),
    }))
}

/// The kept token, None when there is no file.
fn read_kept(file: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// A new token: `ferry_` and 32 bytes from the operating system's generator, hex-encoded.
fn generate() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("the operating system's random generator failed: {e}"))?;
    Ok(format!("ferry_{}", hex::encode(key)))
}

/// Writes `value` to `file` with mode 0600: a new file, synced, renamed into place.
fn write_private(file: &Path, value: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = file.with_extension("token.tmp");
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(value.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        crate::store::durable::sync_dir(dir)
    })();
    written.with_context(|| format!("cannot write the admin token to {}", file.display()))
}

/// The token the CLI sends: the one given, else — when the admin API is on this machine — the
/// one kept in the host's data directory (`--data-dir`/`FERRY_DATA_DIR`, else the nearest
/// `.ferry` from the current directory upwards). The second value says where it looked, for the
/// message after a 401.
pub fn for_cli(
    given: &Given,
    admin_url: &str,
    data_dir: Option<&Path>,
) -> anyhow::Result<(Option<Token>, String)> {
    if let Some(t) = given.resolve()? {
        let looked = format!("the token from {}", t.source);
        return Ok((Some(t), looked));
    }
    if !is_local(admin_url) {
        return Ok((
            None,
            format!(
                "no token was given for {admin_url}: pass --token, FERRY_TOKEN or --token-file"
            ),
        ));
    }
    let candidates: Vec<PathBuf> = match data_dir {
        Some(d) => vec![d.join(TOKEN_FILE)],
        None => std::env::current_dir()
            .map(|cwd| {
                cwd.ancestors()
                    .map(|d| d.join(".ferry").join(TOKEN_FILE))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for file in &candidates {
        if let Some(value) = read_kept(file)? {
            let t = check(&value, &file.display().to_string())?;
            return Ok((Some(t), format!("the token kept in {}", file.display())));
        }
    }
    let looked = match data_dir {
        Some(d) => format!("no {TOKEN_FILE} in {}", d.display()),
        None => format!("no .ferry/{TOKEN_FILE} in this directory or above it"),
    };
    Ok((
        None,
        format!("{looked}: pass the host's --data-dir (FERRY_DATA_DIR), or --token, FERRY_TOKEN or --token-file"),
    ))
}

/// Whether the admin URL names this machine (a loopback address or `localhost`).
fn is_local(admin_url: &str) -> bool {
    let Ok(url) = url::Url::parse(admin_url) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_token_is_an_error_not_auth_off() {
        let g = Given {
            token: Some("  ".into()),
            token_file: None,
        };
        let e = g.resolve().unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn serve_generates_keeps_and_reuses_a_private_token() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let t1 = for_serve(None, false, dir.path()).unwrap().unwrap();
        assert!(t1.value.starts_with("ferry_") && t1.value.len() == 70);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let t2 = for_serve(None, false, dir.path()).unwrap().unwrap();
        assert_eq!(t1.value, t2.value);
        let (found, _) =
            for_cli(&Given::default(), "http://127.0.0.1:8081", Some(dir.path())).unwrap();
        assert_eq!(found.unwrap().value, t1.value);
        let (remote, why) = for_cli(
            &Given::default(),
            "http://ferry.example.com:8081",
            Some(dir.path()),
        )
        .unwrap();
        assert!(remote.is_none(), "a remote host never gets the local token");
        assert!(why.contains("--token"), "{why}");
    }

    #[test]
    fn no_auth_is_refused_off_loopback() {
        let e = check_no_auth(None, true, "0.0.0.0:8081".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a loopback address"), "{e}");
        check_no_auth(None, true, "127.0.0.1:8081".parse().unwrap()).unwrap();
        check_no_auth(None, true, "[::1]:8081".parse().unwrap()).unwrap();
    }
}
