// Unit tests on your machine: `npm test` (Node's own test runner).
import test from 'node:test';
import assert from 'node:assert/strict';

// The function listens for fetch events; catch its listener.
let listener;
globalThis.addEventListener = (type, handler) => {
  if (type === 'fetch') listener = handler;
};
const { greeting } = await import('./app.js');

test('the greeting names the function and the path', () => {
  const text = greeting('/hello?x=1');
  assert.ok(text.startsWith('Hello from {{name}}!'), text);
  assert.ok(text.includes('/hello?x=1'), text);
});

test('a request is answered with the greeting', async () => {
  let answer;
  listener({
    request: new Request('http://127.0.0.1:8080/{{name}}/hello?x=1'),
    respondWith: (response) => {
      answer = response;
    },
  });
  const response = await answer;
  assert.equal(response.status, 200);
  assert.equal(await response.text(), greeting('/{{name}}/hello?x=1'));
});
