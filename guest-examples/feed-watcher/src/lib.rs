//! feed-watcher: an event function for a URL poll of a JSON feed (`[[trigger.poll]]` with
//! `url`, `split` and `item_id`): each new item arrives as a `dev.ferry.poll.item` event, and
//! feed-watcher answers with `com.example.feed.new-item` carrying the item's id, title and link.
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

struct FeedWatcher;

impl Guest for FeedWatcher {
    fn handle(event: Event) -> Result<Option<Event>, Error> {
        let item: Value = serde_json::from_slice(event.data.as_deref().unwrap_or_default())
            .map_err(|e| Error::InvalidEvent(format!("feed-watcher: the item is not JSON: {e}")))?;
        let field = |k: &str| item.get(k).cloned().unwrap_or(Value::Null);
        let data = json!({
            "id": field("id"),
            "title": field("title"),
            "link": item.get("url").or_else(|| item.get("link")).cloned().unwrap_or(Value::Null),
            "feed": event.source,
        });
        Ok(Some(Event {
            id: format!("{}-new", event.id),
            source: "/ferry/feed-watcher".to_string(),
            specversion: "1.0".to_string(),
            type_: "com.example.feed.new-item".to_string(),
            datacontenttype: Some("application/json".to_string()),
            dataschema: None,
            subject: item.get("title").and_then(Value::as_str).map(str::to_string),
            time: event.time,
            extensions: Vec::new(),
            data: Some(serde_json::to_vec(&data).map_err(|e| Error::Internal(e.to_string()))?),
        }))
    }
}

bindings::export!(FeedWatcher with_types_in bindings);
