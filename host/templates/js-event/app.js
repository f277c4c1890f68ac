// {{name}}: an event function for Ferry, in JavaScript (componentize-js).
//
// It targets Ferry's `event-function` world: it gets one CloudEvent at a time and may answer
// with one. `wit/` holds Ferry's WIT (`ferry wit --wasi 0.2.10` writes it again).

/**
 * The answer to `event`: an event of type `<type>.handled` with the same data. An event without
 * data is refused with the typed error `invalid-event` (thrown as `{ tag, val }`): it will never
 * succeed, so Ferry does not retry it.
 */
export function respond(event) {
  if (event.data === undefined) {
    throw {
      tag: 'invalid-event',
      val: `{{name}} needs events with data; ${event.id} from ${event.source} has none`,
    };
  }
  return {
    id: `${event.id}-handled`,
    source: '/{{name}}',
    specversion: '1.0',
    type: `${event.type}.handled`,
    datacontenttype: event.datacontenttype,
    subject: event.subject,
    extensions: [],
    data: event.data,
  };
}

/** Ferry's `handler` interface. */
export const handler = {
  handle(event) {
    // What a function prints goes to its log: `ferry logs {{name}}`.
    console.log(`event ${event.id} of type ${event.type} from ${event.source}`);
    return respond(event);
  },
};
