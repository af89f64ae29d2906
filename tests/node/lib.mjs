// Helpers for the Node transport tests: start `firehose serve` on loopback port 0 and read the
// addresses it logs, make a CA and a server certificate with `openssl`, wrap MQTT.js in
// promises. Every wait is bounded by TIMEOUT.

import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import mqtt from 'mqtt';

export const TIMEOUT = 10_000;
export const PUB = { username: 'pub', password: 'pub-secret' };

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..');

/** The binary under test: $FIREHOSE_BIN, else the debug build. */
export function firehoseBin() {
  if (process.env.FIREHOSE_BIN) return process.env.FIREHOSE_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(REPO, 'target');
  return path.join(target, 'debug', 'firehose');
}

/** A fresh temporary directory, removed at exit. */
export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `firehose-node-${prefix}-`));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Rejects after `ms` with a message naming `what`. */
export function withTimeout(promise, what, ms = TIMEOUT) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

let cachedHash;
function pubHash() {
  cachedHash ??= execFileSync(firehoseBin(), ['passwd'], {
    input: `${PUB.password}\n`,
    timeout: 60_000,
  })
    .toString()
    .trim();
  if (!cachedHash.startsWith('$argon2id$')) throw new Error(`firehose passwd printed ${cachedHash}`);
  return cachedHash;
}

/**
 * Starts `firehose serve` with MQTT and HTTP on 127.0.0.1:0 (plus `args`), a users file with
 * user `pub`, and `config` as its config file. Resolves when every listener in `expect` logged
 * its address.
 */
export async function startFirehose({ config = '', args = [], expect = ['MQTT', 'HTTP'] } = {}) {
  const dir = tempDir('broker');
  fs.writeFileSync(
    path.join(dir, 'users.toml'),
    `[[user]]\nname = "${PUB.username}"\npassword = "${pubHash()}"\npublish = ["#"]\n`,
  );
  const argv = [
    'serve', '--mqtt', '127.0.0.1:0', '--http', '127.0.0.1:0',
    '--data-dir', path.join(dir, 'data'), '--users', path.join(dir, 'users.toml'),
  ];
  if (config) {
    fs.writeFileSync(path.join(dir, 'firehose.toml'), config);
    argv.push('--config', path.join(dir, 'firehose.toml'));
  }
  argv.push(...args);
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => k !== 'RUST_LOG' && !k.startsWith('FIREHOSE_')),
  );
  const proc = spawn(firehoseBin(), argv, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const addrs = {};
  const bound = new Promise((resolve, reject) => {
    proc.stderr.on('data', (chunk) => {
      log += chunk.toString();
      for (const m of log.matchAll(/(\w+) listener bound addr=(\S+)/g)) {
        const [host, port] = [m[2].slice(0, m[2].lastIndexOf(':')), Number(m[2].slice(m[2].lastIndexOf(':') + 1))];
        addrs[m[1]] = { host, port };
      }
      if (expect.every((name) => addrs[name])) resolve();
    });
    proc.on('exit', (code) => reject(new Error(`firehose exited with ${code}; log:\n${log}`)));
  });
  await withTimeout(bound, 'firehose listener addresses');
  const server = {
    addrs,
    log: () => log,
    async stop() {
      if (proc.exitCode !== null) return proc.exitCode;
      const exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
      proc.kill('SIGTERM');
      return withTimeout(exited, 'firehose exit after SIGTERM').catch((e) => {
        proc.kill('SIGKILL');
        throw e;
      });
    },
    async waitForLog(needle) {
      const deadline = Date.now() + TIMEOUT;
      while (!log.includes(needle)) {
        if (Date.now() > deadline) throw new Error(`no ${JSON.stringify(needle)} in the log:\n${log}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
  return server;
}

/** A CA and a server certificate for localhost and 127.0.0.1, made with `openssl`. */
export function makePki() {
  const dir = tempDir('pki');
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe', timeout: 60_000 });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  run('req', '-x509', ...ec, '-days', '2', '-subj', '/CN=node-test-ca', '-keyout', 'ca.key', '-out', 'ca.pem');
  run('req', '-new', ...ec, '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr');
  fs.writeFileSync(
    path.join(dir, 'server.ext'),
    'basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n',
  );
  run('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
    '-days', '2', '-extfile', 'server.ext', '-out', 'server.pem');
  return {
    ca: path.join(dir, 'ca.pem'),
    cert: path.join(dir, 'server.pem'),
    key: path.join(dir, 'server.key'),
  };
}

/** A free TCP port on 127.0.0.1 (for programs that cannot bind port 0 and report it). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Connects MQTT.js to `url`; resolves with the client once CONNACK came. */
export function connect(url, options = {}) {
  const client = mqtt.connect(url, {
    reconnectPeriod: 0,
    connectTimeout: TIMEOUT,
    clientId: `node-${process.pid}-${Math.random().toString(16).slice(2, 10)}`,
    ...options,
  });
  const connected = new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client));
    client.once('error', reject);
    client.once('close', () => reject(new Error(`connection to ${url} closed before CONNACK`)));
  });
  return withTimeout(connected, `MQTT connect to ${url}`).catch((e) => {
    client.end(true);
    throw e;
  });
}

/** The next message a client receives, as {topic, payload (string), qos}. */
export function nextMessage(client, what = 'message') {
  return withTimeout(
    new Promise((resolve) => {
      client.once('message', (topic, payload, packet) =>
        resolve({ topic, payload: payload.toString(), qos: packet.qos }));
    }),
    what,
  );
}

/** Closes clients, ignoring errors. */
export async function closeAll(...clients) {
  await Promise.all(clients.filter(Boolean).map((c) => c.endAsync(true).catch(() => {})));
}
