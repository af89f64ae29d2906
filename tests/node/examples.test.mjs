// The JavaScript examples of docs/consumers.md, run as a user would, so they never rot:
// - docs/examples/mqttjs-consumer.mjs in Node over wss:// (a CA made in the test, trusted with
//   NODE_EXTRA_CA_CERTS): it prints what is published, and after a restart exactly what was
//   published while it was down (a persistent session);
// - docs/examples/eventsource.js in a real headless Chromium: it logs each event, and after a
//   network error reconnects with Last-Event-ID and gets what it missed, nothing twice.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import {
  closeAll, connect, makePki, PUB, REPO, startFirehose, tempDir, TIMEOUT, withTimeout,
} from './lib.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const EXAMPLES = path.join(REPO, 'docs', 'examples');

let server;
let pki;
let publisher;

before(async () => {
  pki = makePki();
  server = await startFirehose({
    args: ['--https', '127.0.0.1:0', '--tls-cert', pki.cert, '--tls-key', pki.key],
    expect: ['MQTT', 'HTTP', 'HTTPS'],
  });
  publisher = await connect(`mqtt://127.0.0.1:${server.addrs.MQTT.port}`, { ...PUB });
});

after(async () => {
  await closeAll(publisher);
  const code = await server?.stop();
  assert.equal(code, 0, 'firehose exits 0 on SIGTERM');
});

/** Resolves once the server counts `n` connected clients (read from /metrics). */
async function waitClients(n) {
  const url = `http://127.0.0.1:${server.addrs.HTTP.port}/metrics`;
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const body = await (await fetch(url)).text();
    if (body.split('\n').includes(`firehose_clients_connected ${n}`)) break;
    if (Date.now() > deadline) throw new Error(`never ${n} connected clients:\n${body}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // SUBSCRIBE follows CONNACK on the same connection: give it a moment.
  await new Promise((r) => setTimeout(r, 200));
}

/**
 * The Node example, unchanged, in a directory whose node_modules is this package's (Node
 * resolves `import 'mqtt'` from the file's own directory).
 */
function nodeExample() {
  const dir = tempDir('example');
  fs.symlinkSync(path.join(REPO, 'tests', 'node', 'node_modules'), path.join(dir, 'node_modules'));
  const file = path.join(dir, 'mqttjs-consumer.mjs');
  fs.copyFileSync(path.join(EXAMPLES, 'mqttjs-consumer.mjs'), file);
  return file;
}

/** Starts the example; `done` resolves with its stdout lines once it exits with status 0. */
function runNodeExample(file, url, count) {
  const proc = spawn(process.execPath, [file, url, String(count)], {
    env: { ...process.env, NODE_EXTRA_CA_CERTS: pki.ca },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout.on('data', (c) => { out += c; });
  proc.stderr.on('data', (c) => { err += c; });
  const exited = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  const done = withTimeout(exited, `${path.basename(file)} printing ${count} messages`)
    .then((code) => {
      assert.equal(code, 0, `the example exited with ${code}; stderr:\n${err}\nstdout:\n${out}`);
      return out.split('\n').filter(Boolean);
    })
    .catch((e) => {
      proc.kill('SIGKILL');
      throw new Error(`${e.message}; stdout so far:\n${out}\nstderr:\n${err}`);
    });
  return { done };
}

test('docs/examples/mqttjs-consumer.mjs receives events and resumes its session after a restart', async () => {
  const file = nodeExample();
  const url = `wss://localhost:${server.addrs.HTTPS.port}/mqtt`;
  const topic = 'gerrit/openstack/nova/comment-added';
  const line = (n) => `${topic} {"n":${n}}`;

  const first = runNodeExample(file, url, 1);
  await waitClients(2); // the publisher and the example
  await publisher.publishAsync(topic, '{"n":1}', { qos: 1 });
  assert.deepEqual(await first.done, [line(1)]);

  // Published while it is down: the restarted example gets exactly these, in order, and not
  // the one it already printed.
  await waitClients(1);
  await publisher.publishAsync(topic, '{"n":2}', { qos: 1 });
  await publisher.publishAsync('gerrit/openstack/nova/patchset-created', '{"n":3}', { qos: 1 });
  const second = runNodeExample(file, url, 2);
  assert.deepEqual(await second.done, [line(2), 'gerrit/openstack/nova/patchset-created {"n":3}']);

  // And it is still subscribed live after the replay.
  const third = runNodeExample(file, url, 1);
  await waitClients(2);
  await publisher.publishAsync(topic, '{"n":4}', { qos: 1 });
  assert.deepEqual(await third.done, [line(4)]);
});

test('docs/examples/eventsource.js in Chromium logs events and resumes after a network error', async (t) => {
  if (!fs.existsSync(CHROMIUM)) {
    t.skip(`${CHROMIUM} not installed (scripts/test-transports installs it)`);
    return;
  }
  // The example runs as-is except for its one setting, the server's address: a small front
  // server on another loopback port that serves the page and passes /api/ to Firehose (the
  // same origin, as Firehose sends no CORS headers), and can cut the stream like a network
  // error would.
  const example = fs.readFileSync(path.join(EXAMPLES, 'eventsource.js'), 'utf8');
  const placeholder = "const FIREHOSE = 'https://firehose.example.org';";
  assert.ok(example.includes(placeholder), 'the example names its server in one line');
  const streams = []; // {lastEventId, res} per stream request
  let streamOpened;
  const front = http.createServer((req, res) => {
    if (req.url === '/example') {
      const origin = `http://127.0.0.1:${front.address().port}`;
      const script = example.replace(placeholder, `const FIREHOSE = ${JSON.stringify(origin)};`);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!doctype html><meta charset="utf-8"><title>EventSource example</title>
<script>${script}</script>`);
      return;
    }
    if (!req.url.startsWith('/api/')) {
      res.writeHead(404);
      res.end();
      return;
    }
    const entry = { lastEventId: req.headers['last-event-id'], res };
    streams.push(entry);
    const upstream = http.request({
      host: '127.0.0.1',
      port: server.addrs.HTTP.port,
      path: req.url,
      headers: { ...req.headers, host: `127.0.0.1:${server.addrs.HTTP.port}` },
    }, (up) => {
      res.writeHead(up.statusCode, up.headers);
      res.flushHeaders();
      up.pipe(res);
      streamOpened?.(entry);
    });
    upstream.on('error', () => res.destroy());
    res.on('close', () => upstream.destroy());
    upstream.end();
  });
  await new Promise((resolve) => front.listen(0, '127.0.0.1', resolve));
  const nextStream = () => withTimeout(
    new Promise((resolve) => { streamOpened = resolve; }),
    'an EventSource stream through the front server',
  );

  const context = await chromium.launchPersistentContext(tempDir('chromium-examples'), {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    const logged = [];
    page.on('console', async (msg) => {
      if (msg.type() !== 'log') return;
      logged.push(await msg.args()[0].jsonValue());
    });
    const waitLogged = async (n, what) => {
      const deadline = Date.now() + TIMEOUT;
      while (logged.length < n) {
        if (Date.now() > deadline) throw new Error(`${what}: logged ${JSON.stringify(logged)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };

    const opened = nextStream();
    await page.goto(`http://127.0.0.1:${front.address().port}/example`);
    const first = await opened;
    assert.equal(first.lastEventId, undefined, 'a fresh page starts live, with no Last-Event-ID');
    await publisher.publishAsync('gerrit/demo/comment-added', '{"n":1}', { qos: 1 });
    await publisher.publishAsync('other/topic', '{"n":0}', { qos: 1 });
    await waitLogged(1, 'the first event in the page');
    const [one] = logged;
    assert.equal(one.topic, 'gerrit/demo/comment-added');
    assert.deepEqual(one.payload, { n: 1 });
    assert.equal(typeof one.id, 'number');
    assert.equal(typeof one.time, 'string');

    // A network error: the stream is cut; meanwhile an event is published. EventSource
    // reconnects by itself (about 3 s later) with the id of the last event it got.
    const reopened = nextStream();
    first.res.destroy();
    await publisher.publishAsync('gerrit/demo/comment-added', '{"n":2}', { qos: 1 });
    const second = await reopened;
    assert.equal(second.lastEventId, String(one.id));
    await waitLogged(2, 'the event published while disconnected');
    await publisher.publishAsync('gerrit/demo/comment-added', '{"n":3}', { qos: 1 });
    await waitLogged(3, 'a live event after the reconnect');
    await new Promise((r) => setTimeout(r, 300)); // room for a wrongly repeated event
    assert.deepEqual(logged.map((e) => e.payload.n), [1, 2, 3]);
    assert.ok(logged[1].id > one.id && logged[2].id > logged[1].id, 'ids increase');
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    front.closeAllConnections();
    front.close();
  }
});

test('docs/consumers.md quotes the JavaScript examples verbatim', () => {
  const doc = fs.readFileSync(path.join(REPO, 'docs', 'consumers.md'), 'utf8');
  for (const name of ['eventsource.js', 'mqttjs-consumer.mjs']) {
    const text = fs.readFileSync(path.join(EXAMPLES, name), 'utf8');
    assert.ok(doc.includes(`(examples/${name}):\n\`\`\`js\n${text}\`\`\``), `${name} as in consumers.md`);
  }
});
