//! Between the CloudEvents the triggers speak ([`ferry_triggers::cloudevents`]) and the WIT
//! `event` record that event functions receive and return.

use cloudevents::Event;
use ferry_triggers::cloudevents::{from_parts, to_parts, Invalid, Parts};

use crate::bindings::GuestEvent;

/// The WIT record for an event.
pub fn to_guest(event: &Event) -> GuestEvent {
    let p = to_parts(event);
    GuestEvent {
        id: p.id,
        source: p.source,
        specversion: p.specversion,
        type_: p.ty,
        datacontenttype: p.datacontenttype,
        dataschema: p.dataschema,
        subject: p.subject,
        time: p.time,
        extensions: p.extensions,
        data: p.data,
    }
}

/// An event from a guest's WIT record, validated like any incoming event.
pub fn from_guest(g: GuestEvent) -> Result<Event, Invalid> {
    from_parts(Parts {
        id: g.id,
        source: g.source,
        specversion: g.specversion,
        ty: g.type_,
        datacontenttype: g.datacontenttype,
        dataschema: g.dataschema,
        subject: g.subject,
        time: g.time,
        extensions: g.extensions,
        data: g.data,
    })
}
