// Unit tests on your machine: `npm test` (Node's own test runner).
import test from 'node:test';
import assert from 'node:assert/strict';

import { respond } from './app.js';

const event = (data) => ({
  id: '1',
  source: '/test',
  specversion: '1.0',
  type: 'com.example.thing',
  datacontenttype: 'application/json',
  extensions: [],
  data,
});

test('an event with data is answered', () => {
  const out = respond(event(new TextEncoder().encode('{}')));
  assert.equal(out.type, 'com.example.thing.handled');
  assert.deepEqual(out.data, new TextEncoder().encode('{}'));
});

test('an event without data is invalid', () => {
  assert.throws(() => respond(event(undefined)), { tag: 'invalid-event' });
});
