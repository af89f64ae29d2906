// The web page served by Firehose at `/`, in a real headless Chromium (Debian's, driven by
// playwright-core): live tail over SSE, topic filter, pause, history search, a permalink, and a
// phone-sized viewport. Screenshots go to target/test-artifacts/.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { chromium } from 'playwright-core';

import { closeAll, connect, PUB, REPO, startFirehose, tempDir, TIMEOUT } from './lib.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO, 'target', 'test-artifacts');

let server;
let publisher;

before(async () => {
  server = await startFirehose();
  publisher = await connect(`mqtt://127.0.0.1:${server.addrs.MQTT.port}`, { ...PUB });
  fs.mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await closeAll(publisher);
  const code = await server?.stop();
  assert.equal(code, 0);
});

async function browser() {
  return chromium.launchPersistentContext(tempDir('chromium-web'), {
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

test('the web page tails live events, filters, pauses, searches history and opens a permalink', async (t) => {
  if (!fs.existsSync(CHROMIUM)) {
    t.skip(`${CHROMIUM} not installed (scripts/test-transports installs it)`);
    return;
  }
  const base = `http://127.0.0.1:${server.addrs.HTTP.port}`;
  const context = await browser();
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    // The page runs under its Content-Security-Policy: whatever it blocks is recorded here
    // (init scripts are not subject to the page's policy).
    await page.addInitScript(() => {
      window.cspViolations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
      });
    });
    const response = await page.goto(base + '/');
    const csp = response.headers()['content-security-policy'] || '';
    assert.match(csp, /script-src 'self'/);
    assert.doesNotMatch(csp, /unsafe-inline/);
    await page.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });

    // Publish, see it appear, pretty and collapsible.
    const comment = { type: 'comment-added', comment: 'recheck', change: { project: 'openstack/nova' } };
    await publisher.publishAsync('gerrit/openstack/nova/comment-added', JSON.stringify(comment), { qos: 1 });
    await publisher.publishAsync('logs/host1/sshd', 'Accepted publickey', { qos: 1 });
    const first = page.locator('#live-events .event[data-topic="gerrit/openstack/nova/comment-added"]');
    await first.waitFor({ timeout: TIMEOUT });
    assert.match(await first.locator('pre.json').textContent(), /"comment": "recheck"/);
    await page.locator('#live-events .event[data-topic="logs/host1/sshd"]').waitFor({ timeout: TIMEOUT });
    await page.waitForFunction(() => document.querySelector('#rates').textContent.includes('/s'), null, { timeout: TIMEOUT });
    await page.screenshot({ path: path.join(ARTIFACTS, 'webpage-live.png'), fullPage: true });

    // Filter the live tail by topic: only gerrit events are shown from now on.
    await page.fill('#live-topics', 'gerrit/#');
    await page.click('#live-form button[type="submit"]');
    await page.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });
    await publisher.publishAsync('logs/host1/sshd', 'filtered out', { qos: 1 });
    await publisher.publishAsync('gerrit/openstack/nova/patchset-created', '{"type":"patchset-created"}', { qos: 1 });
    await page.locator('#live-events .event[data-topic="gerrit/openstack/nova/patchset-created"]').waitFor({ timeout: TIMEOUT });
    const topics = await page.$$eval('#live-events .event', (els) => els.map((e) => e.dataset.topic));
    assert.deepEqual(topics, ['gerrit/openstack/nova/patchset-created']);

    // Pause holds new events back; resume shows them.
    await page.click('#pause');
    await publisher.publishAsync('gerrit/openstack/nova/change-merged', '{"type":"change-merged"}', { qos: 1 });
    await page.waitForFunction(() => document.querySelector('#buffered').textContent.includes('1 new'), null, { timeout: TIMEOUT });
    assert.equal(await page.locator('#live-events .event').count(), 1);
    await page.click('#pause');
    await page.locator('#live-events .event[data-topic="gerrit/openstack/nova/change-merged"]').waitFor({ timeout: TIMEOUT });

    // History search by topic filter and time range.
    await page.click('#tab-history');
    await page.fill('#history-topics', 'logs/#');
    await page.fill('#history-since', '1h');
    await page.click('#history-form button[type="submit"]');
    await page.waitForFunction(() => document.querySelector('#history-status').textContent.startsWith('2 events'), null, { timeout: TIMEOUT });
    const payloads = await page.$$eval('#history-events pre', (els) => els.map((e) => e.textContent));
    assert.deepEqual(payloads, ['"Accepted publickey"', '"filtered out"']);
    await page.screenshot({ path: path.join(ARTIFACTS, 'webpage-history.png'), fullPage: true });

    // The permalink of the first event.
    const href = await page.locator('#history-events .event a.id').first().getAttribute('href');
    assert.match(href, /^\/events\/\d+$/);
    await page.click('#history-events .event a.id >> nth=0');
    await page.waitForURL(base + href, { timeout: TIMEOUT });
    await page.locator('#event-detail .event pre.json').waitFor({ timeout: TIMEOUT });
    assert.match(await page.textContent('#event-detail'), /logs\/host1\/sshd[\s\S]*Accepted publickey/);
    await page.screenshot({ path: path.join(ARTIFACTS, 'webpage-permalink.png'), fullPage: true });
    // Live tail, history and permalink worked without the policy blocking anything...
    assert.deepEqual(await page.evaluate(() => window.cspViolations), []);
    // ...and the policy is in force: an injected inline script does not run.
    const ran = await page.evaluate(() => {
      const script = document.createElement('script');
      script.textContent = 'window.injected = true;';
      document.body.append(script);
      return window.injected === true;
    });
    assert.equal(ran, false, 'an inline script ran despite the Content-Security-Policy');
    await page.waitForFunction(() => window.cspViolations.length > 0, null, { timeout: TIMEOUT });

    // A phone: nothing wider than the screen.
    await page.setViewportSize({ width: 375, height: 740 });
    await page.goto(base + '/');
    await page.waitForSelector('#state[data-state="live"]', { timeout: TIMEOUT });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 375, `page is ${width}px wide on a 375px screen`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'webpage-phone.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
  }
});
