//! Between the CloudEvents the triggers speak ([`ferry_triggers::cloudevents::CloudEvent`]) and
//! the WIT `event` record that event functions receive and return. Data passes as the same bytes
//! both ways; extension values reach the guest as text.

use ferry_triggers::cloudevents::{CloudEvent, ExtensionValue, Invalid};

use crate::bindings::GuestEvent;

/// The WIT record for an event.
pub fn to_guest(event: &CloudEvent) -> GuestEvent {
    GuestEvent {
        id: event.id.clone(),
        source: event.source.clone(),
        specversion: event.specversion.clone(),
        type_: event.ty.clone(),
        datacontenttype: event.datacontenttype.clone(),
        dataschema: event.dataschema.clone(),
        subject: event.subject.clone(),
        time: event.time.clone(),
        extensions: event
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
        data: event.data.as_ref().map(|d| d.to_vec()),
    }
}

/// An event from a guest's WIT record, validated like any incoming event.
pub fn from_guest(g: GuestEvent) -> Result<CloudEvent, Invalid> {
    let mut extensions: Vec<(String, ExtensionValue)> = g
        .extensions
        .into_iter()
        .map(|(k, v)| (k, ExtensionValue::String(v)))
        .collect();
    extensions.sort();
    extensions.dedup_by(|a, b| a.0 == b.0);
    let event = CloudEvent {
        id: g.id,
        source: g.source,
        specversion: g.specversion,
        ty: g.type_,
        datacontenttype: g.datacontenttype,
        dataschema: g.dataschema,
        subject: g.subject,
        time: g.time,
        extensions,
        data: g.data.map(bytes::Bytes::from),
    };
    event.validate()?;
    Ok(event)
}
