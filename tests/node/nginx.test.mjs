// Firehose behind a real nginx reverse proxy on loopback: MQTT over WebSocket through the proxy
// (with X-Forwarded-For from a trusted proxy), /healthz, and an SSE-like stream that must reach
// the client event by event (the proxy settings docs/transports.md gives for SSE).

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
let stream;
let releaseSecond;

function nginxConfig(dir, firehose, streamPort) {
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
    # Streaming responses (SSE): no buffering, long reads (as in docs/transports.md)
    location /stream {
      proxy_pass http://127.0.0.1:${streamPort};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 1h;
    }
    location / {
      proxy_pass http://${firehose};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
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
  // An SSE-like stream: the second event is sent only after the test saw the first, so a
  // buffering proxy would hold the first back and the test would time out.
  const gate = new Promise((resolve) => { releaseSecond = resolve; });
  stream = http.createServer(async (req, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    res.write('id: 1\ndata: first\n\n');
    await gate;
    res.end('id: 2\ndata: second\n\n');
  });
  await new Promise((resolve) => stream.listen(0, '127.0.0.1', resolve));
  nginxPort = await freePort();
  const dir = tempDir('nginx');
  const firehose = `127.0.0.1:${server.addrs.HTTP.port}`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), nginxConfig(dir, firehose, stream.address().port));
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
  releaseSecond?.();
  stream?.close();
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

test('an SSE-like stream passes nginx event by event', async () => {
  const events = await withTimeout(new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: nginxPort, path: '/stream' }, (res) => {
      assert.equal(res.headers['content-type'], 'text/event-stream');
      let text = '';
      res.on('data', (chunk) => {
        text += chunk;
        if (text.includes('data: first\n\n')) releaseSecond();
      });
      res.on('end', () => resolve(text));
    }).on('error', reject);
  }), 'both events through nginx (a buffering proxy would hold the first back)');
  assert.equal(events, 'id: 1\ndata: first\n\nid: 2\ndata: second\n\n');
});
