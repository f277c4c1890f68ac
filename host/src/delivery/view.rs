//! The status document of an invocation: what the public status URL answers, what callbacks
//! carry, what the admin API lists as dead letters and what the CLI prints. One type for all.

use serde::{Deserialize, Serialize};

use super::record::{rfc3339, CallbackStatus, Invocation, Status};
use crate::model::DeliveryMode;

/// An invocation as its callers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationView {
    /// The invocation's id.
    pub id: String,
    /// The name of the function it runs.
    pub function: String,
    /// The delivery guarantee it was submitted with.
    pub mode: DeliveryMode,
    /// Where it stands; `running` while an attempt runs in this process.
    pub status: Status,
    /// Attempts started so far.
    pub attempts: u32,
    /// The function's result: `{status, headers, body}` for HTTP functions, the result event
    /// (JSON event format) or null for event functions.
    pub result: Option<serde_json::Value>,
    /// Why the latest attempt failed, or why the invocation was lost.
    pub error: Option<String>,
    /// When it was submitted (RFC 3339).
    pub created: String,
    /// When it last changed (RFC 3339).
    pub updated: String,
    /// Where this document is served on the public listener.
    pub status_url: String,
    /// The admin API path of what this invocation wrote to stdout and stderr (admin token
    /// required; kept in memory, within the function's log bound).
    #[serde(default)]
    pub logs: String,
    /// Every attempt so far, oldest first.
    pub history: Vec<AttemptView>,
    /// When the next attempt is due, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// Where the callback stands, when the caller gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackView>,
    /// The new invocation a replay of this dead letter made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_as: Option<String>,
    /// The stored request or event (dead-letter listings of the admin API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// One attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// How long it ran.
    pub duration_ms: u64,
    /// Why it failed; null when it succeeded.
    pub error: Option<String>,
}

/// Where the callback stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackView {
    /// Where the status document is POSTed.
    pub url: String,
    /// Where the delivery stands.
    pub status: CallbackStatus,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Why the latest attempt failed.
    pub last_error: Option<String>,
}

impl InvocationView {
    /// The view of `inv`; `running` when an attempt is under way in this process.
    pub fn of(inv: &Invocation, running: bool, status_url: String) -> Self {
        let status = if running { Status::Running } else { inv.status };
        InvocationView {
            id: inv.id.clone(),
            function: inv.function.clone(),
            mode: inv.mode,
            status,
            attempts: inv.attempts,
            result: inv.result.clone(),
            error: inv.error.clone(),
            created: rfc3339(inv.created_ms),
            updated: rfc3339(inv.updated_ms),
            status_url,
            logs: format!("/v1/functions/{}/logs?invocation={}", inv.function, inv.id),
            history: inv
                .history
                .iter()
                .map(|a| AttemptView {
                    attempt: a.number,
                    started: rfc3339(a.started_ms),
                    duration_ms: a.duration_ms,
                    error: a.error.clone(),
                })
                .collect(),
            next_attempt: match (inv.due_ms, status) {
                (Some(due), Status::Pending) => Some(rfc3339(due)),
                _ => None,
            },
            callback: inv.callback.as_ref().map(|cb| CallbackView {
                url: cb.url.clone(),
                status: cb.status,
                attempts: cb.attempts,
                last_error: cb.last_error.clone(),
            }),
            replayed_as: inv.replayed_as.clone(),
            payload: None,
        }
    }

    /// Why it is a dead letter: its last error, or its callback's (`callback: …`).
    pub fn dead_letter_reason(&self) -> String {
        match &self.callback {
            Some(cb) if cb.status == CallbackStatus::DeadLettered => {
                format!("callback: {}", cb.last_error.as_deref().unwrap_or(""))
            }
            _ => self.error.clone().unwrap_or_default(),
        }
    }
}
