// MQTT.js (npm `mqtt`) over ws:// and wss:// against a real Firehose.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import { closeAll, connect, makePki, nextMessage, PUB, startFirehose } from './lib.mjs';

let server;
let pki;

before(async () => {
  pki = makePki();
  server = await startFirehose({
    args: ['--https', '127.0.0.1:0', '--tls-cert', pki.cert, '--tls-key', pki.key],
    expect: ['MQTT', 'HTTP', 'HTTPS'],
  });
});

after(async () => {
  const code = await server?.stop();
  assert.equal(code, 0, 'firehose exits 0 on SIGTERM');
});

for (const protocolVersion of [4, 5]) {
  test(`ws:// publish and subscribe, MQTT ${protocolVersion === 5 ? '5' : '3.1.1'}`, async () => {
    const { port } = server.addrs.HTTP;
    const url = `ws://127.0.0.1:${port}/mqtt`;
    const sub = await connect(url, { protocolVersion });
    const pub = await connect(url, { protocolVersion, ...PUB });
    try {
      await sub.subscribeAsync('node/ws/#', { qos: 1 });
      const got = nextMessage(sub);
      await pub.publishAsync('node/ws/a', 'hello from MQTT.js', { qos: 1 });
      assert.deepEqual(await got, { topic: 'node/ws/a', payload: 'hello from MQTT.js', qos: 1 });
    } finally {
      await closeAll(sub, pub);
    }
  });
}

test('wss:// with a CA made in the test', async () => {
  const { port } = server.addrs.HTTPS;
  const url = `wss://localhost:${port}/mqtt`;
  const tls = { ca: fs.readFileSync(pki.ca), rejectUnauthorized: true };
  const sub = await connect(url, { protocolVersion: 5, ...tls });
  const pub = await connect(url, { protocolVersion: 4, ...PUB, ...tls });
  try {
    await sub.subscribeAsync('node/wss/#', { qos: 0 });
    const got = nextMessage(sub);
    await pub.publishAsync('node/wss/b', 'secure hello', { qos: 1 });
    assert.deepEqual(await got, { topic: 'node/wss/b', payload: 'secure hello', qos: 0 });
  } finally {
    await closeAll(sub, pub);
  }
});

test('wss:// refuses a client that does not trust the certificate', async () => {
  const { port } = server.addrs.HTTPS;
  await assert.rejects(connect(`wss://localhost:${port}/mqtt`, { rejectUnauthorized: true }));
});

test('anonymous publish over ws:// is refused (MQTT 5 reason 0x87)', async () => {
  const { port } = server.addrs.HTTP;
  const anon = await connect(`ws://127.0.0.1:${port}/mqtt`, { protocolVersion: 5 });
  try {
    // MQTT.js turns a PUBACK with an error reason code into a rejected publish.
    await assert.rejects(anon.publishAsync('node/anon', 'nope', { qos: 1 }), (err) => {
      assert.equal(err.code, 0x87);
      return true;
    });
  } finally {
    await closeAll(anon);
  }
});
