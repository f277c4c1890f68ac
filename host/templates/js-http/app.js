// {{name}}: an HTTP function for Ferry, in JavaScript (componentize-js).
//
// It targets Ferry's `http-function` world, the standard `wasi:http/proxy`: componentize-js's
// engine turns each request into a `fetch` event, answered with a standard `Response`.

/** What the function answers to a request for `path` (path and query). */
export function greeting(path) {
  return `Hello from {{name}}! You asked for ${path}\n`;
}

addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  const path = url.pathname + url.search;
  // What a function prints goes to its log: `ferry logs {{name}}`.
  console.log(`request for ${path}`);
  event.respondWith(
    new Response(greeting(path), {
      headers: { 'content-type': 'text/plain; charset=utf-8' },
    }),
  );
});
