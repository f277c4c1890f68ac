//! {{name}}: an event function for Ferry (world `ferry:function/event-function`). It gets one
//! CloudEvent at a time and may answer with one; `wit/` holds Ferry's WIT (`ferry wit` writes it
//! again).

/// The world's bindings, generated from `wit/` by wit-bindgen (what `wit_bindgen::generate!`
/// would make at each build, written once, so that no proc macro has to be compiled).
mod world;

use world::exports::ferry::function::handler::Guest;
use world::ferry::function::types::{Error, Event};

/// The answer to `event`: an event of type `<type>.handled` with the same data, or the typed
/// error `invalid-event` for an event without data (such an event will never succeed, so
/// Ferry does not retry it).
pub fn respond(event: Event) -> Result<Option<Event>, Error> {
    let Some(data) = event.data else {
        return Err(Error::InvalidEvent(format!(
            "{{name}} needs events with data; {} from {} has none",
            event.id, event.source
        )));
    };
    Ok(Some(Event {
        id: format!("{}-handled", event.id),
        source: "/{{name}}".to_string(),
        specversion: "1.0".to_string(),
        type_: format!("{}.handled", event.type_),
        datacontenttype: event.datacontenttype,
        dataschema: None,
        subject: event.subject,
        time: None,
        extensions: Vec::new(),
        data: Some(data),
    }))
}

struct Function;

impl Guest for Function {
    fn handle(event: Event) -> Result<Option<Event>, Error> {
        // What a function prints goes to its log: `ferry logs {{name}}`.
        println!("event {} of type {} from {}", event.id, event.type_, event.source);
        respond(event)
    }
}

world::export!(Function with_types_in world);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: Option<&[u8]>) -> Event {
        Event {
            id: "1".into(),
            source: "/test".into(),
            specversion: "1.0".into(),
            type_: "com.example.thing".into(),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            subject: None,
            time: None,
            extensions: Vec::new(),
            data: data.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn an_event_with_data_is_answered_and_one_without_is_invalid() {
        let out = respond(event(Some(b"{}"))).unwrap().unwrap();
        assert_eq!(out.type_, "com.example.thing.handled");
        assert_eq!(out.data.as_deref(), Some(&b"{}"[..]));
        assert!(matches!(respond(event(None)), Err(Error::InvalidEvent(_))));
    }
}
