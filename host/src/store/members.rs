//! A cluster's members: every host writes a heartbeat record to the KV bucket `<prefix>_hosts`
//! (key: its host id) every [`HEARTBEAT`]; a host whose last heartbeat is older than [`GONE`]
//! is shown as gone, one that stopped cleanly as stopped. Records expire a day after their last
//! heartbeat.
//!
//! A host joins only if the cluster's stored format (kept in `<prefix>_state` under
//! `cluster.format`, written by the first host) is the one it reads and writes: hosts of
//! different Ferry versions whose stored formats differ refuse to share a cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::cluster::{ttl_bucket, write, Names};
use crate::delivery::record::now_ms;

/// The format of what a cluster stores (records, keys, streams). Raise it whenever a change
/// makes older hosts misread what newer ones write, or the other way round.
pub const FORMAT: u32 = 1;

/// How often a host writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// A host whose last heartbeat is older than this is shown as gone.
pub const GONE: Duration = Duration::from_secs(10);

/// How long a member's record outlives its last heartbeat.
const FORGET: Duration = Duration::from_secs(24 * 3600);

/// One host's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// The host id (kept in its data directory).
    pub id: String,
    /// Its Ferry version.
    pub version: String,
    /// The stored format it reads and writes.
    pub format: u32,
    /// Its public listener, as it sees it.
    pub public_url: String,
    /// Its admin listener, as it sees it.
    pub admin_url: String,
    /// When it started (ms since the Unix epoch).
    pub started_ms: u64,
    /// When it last wrote this record (ms since the Unix epoch).
    pub heartbeat_ms: u64,
    /// Its load when it wrote this record.
    pub load: Load,
    /// Set by a clean stop.
    #[serde(default)]
    pub stopped: bool,
}

/// What a host is doing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Load {
    /// Store-and-forward attempts running now.
    pub running: usize,
    /// Attempts taken and waiting for a worker.
    pub queued: usize,
    /// Component instances in use.
    pub instances: u64,
    /// Functions it serves.
    pub functions: usize,
}

/// The cluster's stored format, as kept by the first host.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    format: u32,
    /// The Ferry version that wrote it.
    by: String,
}

/// This host's membership.
pub struct Members {
    hosts: kv::Store,
    js: jetstream::Context,
    me: std::sync::Mutex<Member>,
}

impl Members {
    /// Checks the cluster's stored format (writing it when this host is the first), then
    /// writes this host's first heartbeat.
    pub async fn join(
        client: async_nats::Client,
        names: &Names,
        replicas: usize,
        me: Member,
    ) -> anyhow::Result<Arc<Self>> {
        let js = jetstream::new(client);
        let state = js
            .get_key_value(&names.state)
            .await
            .with_context(|| format!("cannot open the bucket {}", names.state))?;
        let mine = Stored {
            format: me.format,
            by: me.version.clone(),
        };
        let key = "cluster.format";
        match write(
            &js,
            &state,
            key,
            Bytes::from(serde_json::to_vec(&mine)?),
            None,
            Some(0),
        )
        .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                let stored = state
                    .get(key)
                    .await?
                    .context("the cluster's stored format vanished while it was read")?;
                let theirs: Stored = serde_json::from_slice(&stored)
                    .context("the cluster's stored format record is not valid JSON")?;
                check_format(&theirs, &mine)?;
            }
            Err(e) => return Err(e.into()),
        }
        let hosts = ttl_bucket(&js, &names.hosts, "Ferry cluster members", replicas).await?;
        let this = Arc::new(Self {
            hosts,
            js,
            me: std::sync::Mutex::new(me),
        });
        this.beat(Load::default(), false).await?;
        Ok(this)
    }

    /// Writes this host's record with its load now.
    async fn beat(&self, load: Load, stopped: bool) -> anyhow::Result<()> {
        let record = {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            me.heartbeat_ms = now_ms();
            me.load = load;
            me.stopped = stopped;
            me.clone()
        };
        write(
            &self.js,
            &self.hosts,
            &record.id,
            Bytes::from(serde_json::to_vec(&record)?),
            Some(FORGET),
            None,
        )
        .await?;
        Ok(())
    }

    /// Writes a heartbeat every [`HEARTBEAT`] with the load `load` reports, until `stopping`;
    /// then one saying the host stopped.
    pub fn spawn_heartbeat(
        self: Arc<Self>,
        load: impl Fn() -> Load + Send + 'static,
        mut stopping: ferry_triggers::Shutdown,
    ) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopping.requested() => break,
                }
                if let Err(e) = self.beat(load(), false).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot write this host's cluster heartbeat");
                }
            }
            if let Err(e) = self.beat(load(), true).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot tell the cluster this host stopped");
            }
        });
    }

    /// Every member the cluster knows, with its state (`up`, `gone` or `stopped`), by id.
    pub async fn list(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let now = now_ms();
        let mut out = Vec::new();
        let mut keys = self.hosts.keys().await?;
        while let Some(key) = keys.next().await {
            let key = key?;
            let Some(v) = self.hosts.get(&key).await? else {
                continue;
            };
            let Ok(m) = serde_json::from_slice::<Member>(&v) else {
                continue;
            };
            let age = now.saturating_sub(m.heartbeat_ms);
            let state = if m.stopped {
                "stopped"
            } else if age > GONE.as_millis() as u64 {
                "gone"
            } else {
                "up"
            };
            let mut value = serde_json::to_value(&m)?;
            value["state"] = state.into();
            value["heartbeat_age_ms"] = age.into();
            out.push(value);
        }
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(out)
    }

    /// This host's id.
    pub fn id(&self) -> String {
        self.me.lock().unwrap_or_else(|e| e.into_inner()).id.clone()
    }
}

/// Refuses a host whose stored format is not the cluster's.
fn check_format(theirs: &Stored, mine: &Stored) -> anyhow::Result<()> {
    if theirs.format != mine.format {
        return Err(super::cluster::Refused(format!(
            "this cluster stores format {} (written by Ferry {}), but this Ferry {} reads and \
             writes format {}: it cannot join. Run one Ferry version across the cluster, or give \
             this host its own cluster with --cluster-prefix",
            theirs.format, theirs.by, mine.by, mine.format
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_different_format_is_refused_naming_both() {
        let cluster = Stored {
            format: 2,
            by: "0.9.0".into(),
        };
        let me = Stored {
            format: 1,
            by: "0.8.0".into(),
        };
        let e = check_format(&cluster, &me).unwrap_err().to_string();
        assert!(
            e.contains("format 2") && e.contains("0.9.0") && e.contains("0.8.0"),
            "{e}"
        );
        check_format(&me, &me).unwrap();
    }
}
