//! github-push: an event function for GitHub's `push` webhook (`[[trigger.webhook]]` with
//! `scheme = "github"`). It summarises the push into a new event, `com.example.push.summary`:
//! the repository, the branch, who pushed, how many commits, and the first line of each message.
//! Other GitHub events (a `ping` when the webhook is set up, say) are acknowledged with no event.
//!
//! Try it: see `ferry.toml` beside this file.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ferry:function/event-function",
        generate_all,
    });
}

use bindings::exports::ferry::function::handler::Guest;
use bindings::ferry::function::types::{Error, Event};
use serde_json::{json, Value};

struct GithubPush;

fn summary(push: &Value) -> Value {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let commits = push["commits"].as_array().cloned().unwrap_or_default();
    json!({
        "repository": text(&push["repository"]["full_name"]),
        "branch": text(&push["ref"]).trim_start_matches("refs/heads/"),
        "pusher": text(&push["pusher"]["name"]),
        "commits": commits.len(),
        "messages": commits
            .iter()
            .map(|c| text(&c["message"]).lines().next().unwrap_or("").to_string())
            .collect::<Vec<_>>(),
        "compare": text(&push["compare"]),
    })
}

impl Guest for GithubPush {
    fn handle(event: Event) -> Result<Option<Event>, Error> {
        if event.type_ != "com.github.push" {
            return Ok(None);
        }
        let push: Value = serde_json::from_slice(event.data.as_deref().unwrap_or_default())
            .map_err(|e| Error::InvalidEvent(format!("github-push: the push is not JSON: {e}")))?;
        let data = serde_json::to_vec(&summary(&push)).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Some(Event {
            id: format!("{}-summary", event.id),
            source: "/ferry/github-push".to_string(),
            specversion: "1.0".to_string(),
            type_: "com.example.push.summary".to_string(),
            datacontenttype: Some("application/json".to_string()),
            dataschema: None,
            subject: push["repository"]["full_name"].as_str().map(str::to_string),
            time: event.time,
            extensions: Vec::new(),
            data: Some(data),
        }))
    }
}

bindings::export!(GithubPush with_types_in bindings);
