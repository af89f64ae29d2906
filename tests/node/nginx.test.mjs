// Firehose behind a real nginx reverse proxy on loopback, configured as docs/transports.md says:
// MQTT over WebSocket through the proxy (with X-Forwarded-For from a trusted proxy), /healthz,
// /metrics, and Firehose's SSE stream, which must reach the client event by event.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  closeAll, connect, freePort, nextMessage, PUB, startFirehose, tempDir, TIMEOUT, withTimeout,
} from './lib.mjs';

const NGINX = process.env.NGINX || '/usr/sbin/nginx';

let server;
let nginx;
let nginxPort;
let nginxLog;

function nginxConfig(dir, firehose) {
  const t = (name) => path.join(dir, name);
  return `
worker_processes 1;
daemon off;
pid ${t('nginx.pid')};
error_log ${t('error.log')} warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${t('body')};
  proxy_temp_path ${t('proxy')};
  fastcgi_temp_path ${t('fastcgi')};
  uwsgi_temp_path ${t('uwsgi')};
  scgi_temp_path ${t('scgi')};
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:${nginxPort};
    # MQTT over WebSocket (as in docs/transports.md)
    location /mqtt {
      proxy_pass http://${firehose};
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
    # History API, SSE, metrics: no buffering, so SSE passes event by event
    location / {
      proxy_pass http://${firehose};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 1h;
    }
  }
}
`;
}

/** GET through nginx; resolves with {status, body}. */
function get(urlPath) {
  return withTimeout(new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: nginxPort, path: urlPath }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  }), `GET ${urlPath} through nginx`);
}

before(async () => {
  server = await startFirehose({ config: '[http]\nlisten = "off"\ntrusted_proxies = ["127.0.0.1"]\n' });
  nginxPort = await freePort();
  const dir = tempDir('nginx');
  const firehose = `127.0.0.1:${server.addrs.HTTP.port}`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), nginxConfig(dir, firehose));
  nginxLog = path.join(dir, 'error.log');
  nginx = spawn(NGINX, ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  nginx.stderr.on('data', (c) => { stderr += c; });
  // Ready when /healthz answers through it.
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    if (nginx.exitCode !== null) throw new Error(`nginx exited ${nginx.exitCode}: ${stderr}`);
    try {
      const { status } = await get('/healthz');
      if (status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`nginx not ready: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
});

after(async () => {
  if (nginx && nginx.exitCode === null) {
    const exited = new Promise((resolve) => nginx.once('exit', resolve));
    nginx.kill('SIGQUIT');
    await withTimeout(exited, 'nginx exit').catch(() => nginx.kill('SIGKILL'));
  }
  const code = await server?.stop();
  assert.equal(code, 0);
});

test('healthz and metrics through nginx', async () => {
  assert.deepEqual(await get('/healthz'), { status: 200, body: 'ok\n' });
  const { status, body } = await get('/metrics');
  assert.equal(status, 200);
  assert.match(body, /^firehose_connections_open\{transport="ws"\} \d+$/m);
});

test('MQTT over WebSocket through nginx, client address from X-Forwarded-For', async () => {
  const url = `ws://127.0.0.1:${nginxPort}/mqtt`;
  // The client claims an address; nginx appends the real one (127.0.0.1, trusted), so Firehose
  // takes the claimed one as the client's. (A client reaching Firehose directly could not.)
  const sub = await connect(url, {
    protocolVersion: 5,
    wsOptions: { headers: { 'X-Forwarded-For': '203.0.113.50' } },
  });
  const pub = await connect(url, { protocolVersion: 4, ...PUB });
  try {
    await sub.subscribeAsync('nginx/#', { qos: 1 });
    const got = nextMessage(sub);
    await pub.publishAsync('nginx/a', 'through the proxy', { qos: 1 });
    assert.deepEqual(await got, { topic: 'nginx/a', payload: 'through the proxy', qos: 1 });
    await server.waitForLog('peer=203.0.113.50');
  } finally {
    await closeAll(sub, pub);
  }
  assert.doesNotMatch(fs.readFileSync(nginxLog, 'utf8'), /\[(error|crit|alert|emerg)\]/);
});

test('the SSE stream passes nginx event by event', async () => {
  const pub = await connect(`ws://127.0.0.1:${nginxPort}/mqtt`, { protocolVersion: 5, ...PUB });
  let request;
  try {
    // Each event is published only after the previous one arrived through nginx: a buffering
    // proxy would hold the first back and the test would time out.
    const payloads = await withTimeout(new Promise((resolve, reject) => {
      request = http.get(
        { host: '127.0.0.1', port: nginxPort, path: '/api/v1/stream?topic=nginx-sse/%23' },
        (res) => {
          if (res.statusCode !== 200) reject(new Error(`SSE status ${res.statusCode}`));
          assert.match(res.headers['content-type'], /^text\/event-stream/);
          const got = [];
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk) => {
            text += chunk;
            let end;
            while ((end = text.indexOf('\n\n')) >= 0) {
              const block = text.slice(0, end);
              text = text.slice(end + 2);
              const data = block.split('\n').filter((l) => l.startsWith('data:'))
                .map((l) => l.slice(5).trim()).join('\n');
              if (!data || data === 'heartbeat') continue;
              got.push(JSON.parse(data).payload);
              if (got.length === 3) resolve(got);
              else pub.publishAsync(`nginx-sse/${got.length}`, `event ${got.length}`, { qos: 1 }).catch(reject);
            }
          });
          res.on('error', reject);
          // Headers are through: the stream is open, publish the first event.
          pub.publishAsync('nginx-sse/0', 'event 0', { qos: 1 }).catch(reject);
        },
      ).on('error', reject);
    }), 'three SSE events through nginx, one at a time');
    assert.deepEqual(payloads, ['event 0', 'event 1', 'event 2']);
  } finally {
    request?.destroy();
    await closeAll(pub);
  }
});
