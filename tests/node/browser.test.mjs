// A real headless Chromium (Debian's, driven by playwright-core) loads a page that uses MQTT.js's
// browser bundle to subscribe over WebSocket, and receives a message published from Node.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { closeAll, connect, PUB, startFirehose, tempDir, TIMEOUT, withTimeout } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const BUNDLE = path.join(here, 'node_modules', 'mqtt', 'dist', 'mqtt.min.js');

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Firehose browser test</title>
<script src="/mqtt.min.js"></script></head>
<body><pre id="out">waiting</pre>
<script>
  const url = new URLSearchParams(location.search).get('ws');
  window.subscribed = false;
  window.result = new Promise((resolve, reject) => {
    const client = mqtt.connect(url, { reconnectPeriod: 0, protocolVersion: 5 });
    client.on('connect', () => client.subscribe('browser/#', { qos: 1 }, (err) => {
      if (err) reject(String(err)); else window.subscribed = true;
    }));
    client.on('message', (topic, payload) => {
      const text = new TextDecoder().decode(payload);
      document.getElementById('out').textContent = topic + ' ' + text;
      resolve({ topic, payload: text });
    });
    client.on('error', (e) => reject(String(e)));
  });
</script></body></html>`;

let server;
let pages;

before(async () => {
  server = await startFirehose();
  // The page and MQTT.js's browser bundle, from a tiny server on another loopback port.
  pages = http.createServer((req, res) => {
    if (req.url.startsWith('/mqtt.min.js')) {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      fs.createReadStream(BUNDLE).pipe(res);
    } else if (req.url.startsWith('/?')) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(PAGE);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => pages.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  pages?.close();
  const code = await server?.stop();
  assert.equal(code, 0);
});

test('Chromium subscribes over WebSocket and receives a published message', async (t) => {
  if (!fs.existsSync(CHROMIUM)) {
    t.skip(`${CHROMIUM} not installed (scripts/test-transports installs it)`);
    return;
  }
  const context = await chromium.launchPersistentContext(tempDir('chromium'), {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  let publisher;
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    const ws = `ws://127.0.0.1:${server.addrs.HTTP.port}/mqtt`;
    await page.goto(`http://127.0.0.1:${pages.address().port}/?ws=${encodeURIComponent(ws)}`);
    await page.waitForFunction(() => window.subscribed === true, null, { timeout: TIMEOUT });
    publisher = await connect(ws, { ...PUB });
    await publisher.publishAsync('browser/hello', 'to the browser', { qos: 1 });
    const got = await withTimeout(page.evaluate(() => window.result), 'message in the browser');
    assert.deepEqual(got, { topic: 'browser/hello', payload: 'to the browser' });
    assert.equal(await page.textContent('#out'), 'browser/hello to the browser');
    assert.deepEqual(errors, []);
    await server.waitForLog('transport="ws"');
  } finally {
    await closeAll(publisher);
    await context.close();
  }
});
