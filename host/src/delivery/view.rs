//! The status document of an invocation: what the public status URL answers, what callbacks
//! carry, what the admin API lists as dead letters and what the CLI prints. One type for all.

use serde::{Deserialize, Serialize};

use super::record::{rfc3339, CallbackStatus, Invocation, Status};
use crate::model::DeliveryMode;

/// An invocation as its callers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationView {
    pub id: String,
    pub function: String,
    pub mode: DeliveryMode,
    pub status: Status,
    pub attempts: u32,
    /// The function's result: `{status, headers, body}` for HTTP functions, the result event
    /// (JSON event format) or null for event functions.
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub created: String,
    pub updated: String,
    pub status_url: String,
    pub history: Vec<AttemptView>,
    /// When the next attempt is due, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
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
    pub attempt: u32,
    pub started: String,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// Where the callback stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackView {
    pub url: String,
    pub status: CallbackStatus,
    pub attempts: u32,
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
