//! enrich-order: an event function that reads a JSON order and returns an enriched one.
//!
//! In:  any event whose data is a JSON order `{"id": …, "items": [{"sku", "qty", "price"}, …]}`.
//! Out: an event of type `com.example.order.enriched` (id `<id>-enriched`, source
//!      `/ferry/enrich-order`, same subject) whose data is the order plus `total` (the sum of
//!      qty × price, rounded to cents) and `item_count` (the sum of qty).
//! Data that is not such an order gets the typed error `invalid-event`: retrying cannot help.
//!
//! Build:  `cargo build --target wasm32-wasip2 --release`   (or `cargo component build --release`)
//! Deploy: `ferry deploy target/wasm32-wasip2/release/enrich_order.wasm --name enrich-order`,
//!         with a `[[trigger.nats]]` in a ferry.toml to consume orders from NATS.

mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "ferry:function/event-function",
        generate_all,
    });
}

use bindings::exports::ferry::function::handler::Guest;
use bindings::ferry::function::types::{Error, Event};
use serde_json::Value;

struct EnrichOrder;

fn enrich(data: &[u8]) -> Result<Value, String> {
    let mut order: Value = serde_json::from_slice(data).map_err(|e| format!("data is not JSON: {e}"))?;
    let items = order
        .get("items")
        .and_then(Value::as_array)
        .ok_or("the order has no `items` array")?;
    let (mut total, mut count) = (0.0f64, 0u64);
    for (i, item) in items.iter().enumerate() {
        let qty = item.get("qty").and_then(Value::as_u64).ok_or(format!("items[{i}].qty is not a whole number"))?;
        let price = item.get("price").and_then(Value::as_f64).ok_or(format!("items[{i}].price is not a number"))?;
        total += qty as f64 * price;
        count += qty;
    }
    let obj = order.as_object_mut().ok_or("the order is not a JSON object")?;
    obj.insert("total".into(), Value::from((total * 100.0).round() / 100.0));
    obj.insert("item_count".into(), Value::from(count));
    Ok(order)
}

impl Guest for EnrichOrder {
    fn handle(event: Event) -> Result<Option<Event>, Error> {
        let data = event.data.as_deref().unwrap_or_default();
        let order = enrich(data).map_err(|e| Error::InvalidEvent(format!("enrich-order: {e}")))?;
        Ok(Some(Event {
            id: format!("{}-enriched", event.id),
            source: "/ferry/enrich-order".to_string(),
            specversion: "1.0".to_string(),
            type_: "com.example.order.enriched".to_string(),
            datacontenttype: Some("application/json".to_string()),
            dataschema: None,
            subject: event.subject,
            time: event.time,
            extensions: event.extensions,
            data: Some(serde_json::to_vec(&order).map_err(|e| Error::Internal(e.to_string()))?),
        }))
    }
}

bindings::export!(EnrichOrder with_types_in bindings);
