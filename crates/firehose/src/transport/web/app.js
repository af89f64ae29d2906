// Firehose web page: live tail over Server-Sent Events, history search, permalinks.
// Uses only the public HTTP API; no libraries, works offline.
'use strict';

const $ = (id) => document.getElementById(id);
const MAX_LIVE = 500;

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

// Pretty JSON with colours.
function pretty(value) {
  const text = JSON.stringify(value, null, 2) ?? '';
  return esc(text).replace(/(&quot;(?:[^&]|&(?!quot;))*?&quot;)(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g,
    (m, str, colon, lit, num) => {
      if (str) return colon ? `<span class="k">${str}</span>${colon}` : `<span class="s">${str}</span>`;
      if (lit) return `<span class="b">${lit}</span>`;
      return `<span class="n">${num}</span>`;
    });
}

function topicsParam(text) {
  return text.split(',').map((t) => t.trim()).filter(Boolean)
    .map((t) => 'topic=' + encodeURIComponent(t)).join('&');
}

function eventItem(event, open) {
  const li = document.createElement('li');
  li.className = 'event';
  li.dataset.id = event.id;
  li.dataset.topic = event.topic;
  li.innerHTML = `<div class="head"><span class="topic">${esc(event.topic)}</span>` +
    `<span class="time">${esc(event.time || '')}</span>` +
    `<a class="id" href="/events/${event.id}" title="permalink">#${event.id}</a></div>` +
    `<pre class="json"${open ? '' : ' hidden'}>${pretty(event.payload)}</pre>`;
  li.querySelector('.head').addEventListener('click', (e) => {
    if (e.target.closest('a')) return;
    const pre = li.querySelector('pre');
    pre.hidden = !pre.hidden;
  });
  return li;
}

// ---- live tail ----
const live = { source: null, paused: false, held: [], lastId: null, times: new Map() };

function setState(state, text) {
  const el = $('state');
  el.dataset.state = state;
  el.textContent = text || state;
}

function connect() {
  if (live.source) live.source.close();
  const query = topicsParam($('live-topics').value);
  const url = '/api/v1/stream?' + query;
  setState('connecting');
  // EventSource reconnects by itself and sends Last-Event-ID: no event is lost or repeated.
  const source = new EventSource(url);
  live.source = source;
  source.onopen = () => setState(live.paused ? 'paused' : 'live', live.paused ? 'paused' : 'live');
  source.onerror = () => setState('reconnecting');
  source.onmessage = (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch { return; }
    live.lastId = event.id;
    countRate(event.topic);
    if (live.paused) {
      live.held.push(event);
      $('buffered').textContent = `${live.held.length} new while paused`;
    } else {
      show(event);
    }
  };
}

function show(event) {
  const list = $('live-events');
  list.prepend(eventItem(event, list.children.length < 3));
  while (list.children.length > MAX_LIVE) list.lastChild.remove();
}

function countRate(topic) {
  const now = Date.now();
  const times = live.times.get(topic) || [];
  times.push(now);
  live.times.set(topic, times);
}

function renderRates() {
  const now = Date.now();
  const rows = [];
  for (const [topic, times] of live.times) {
    while (times.length && times[0] < now - 10000) times.shift();
    if (!times.length) { live.times.delete(topic); continue; }
    rows.push([topic, times.length / 10]);
  }
  rows.sort((a, b) => b[1] - a[1]);
  $('rates').tBodies[0].innerHTML = rows.slice(0, 20)
    .map(([t, r]) => `<tr><td>${r.toFixed(1)}/s</td><td>${esc(t)}</td></tr>`).join('') ||
    '<tr><td class="muted">no messages in the last 10 s</td></tr>';
}

$('live-form').addEventListener('submit', (e) => {
  e.preventDefault();
  $('live-events').innerHTML = '';
  live.times.clear();
  connect();
});

$('pause').addEventListener('click', () => {
  live.paused = !live.paused;
  $('pause').textContent = live.paused ? 'Resume' : 'Pause';
  if (!live.paused) {
    live.held.forEach(show);
    live.held = [];
    $('buffered').textContent = '';
  }
  setState(live.paused ? 'paused' : 'live');
});

// ---- history ----
const history = { next: null };

async function searchHistory(fresh) {
  const params = [topicsParam($('history-topics').value), 'limit=50'];
  const since = $('history-since').value.trim();
  const until = $('history-until').value.trim();
  if (since) params.push('since=' + encodeURIComponent(since));
  if (until) params.push('until=' + encodeURIComponent(until));
  if (!fresh && history.next !== null) params.push('after=' + history.next);
  const list = $('history-events');
  if (fresh) list.innerHTML = '';
  $('history-status').textContent = 'searching…';
  try {
    const res = await fetch('/api/v1/events?' + params.filter(Boolean).join('&'));
    const page = await res.json();
    if (!res.ok) throw new Error(page.error || res.statusText);
    const text = $('history-text').value.trim().toLowerCase();
    const events = page.events.filter((e) => !text || JSON.stringify(e.payload).toLowerCase().includes(text));
    events.forEach((e) => list.append(eventItem(e, false)));
    history.next = page.more ? page.next_after : null;
    $('history-more').hidden = history.next === null;
    $('history-status').textContent = `${list.children.length} events` + (history.next === null ? '' : ', more on the next page');
  } catch (err) {
    $('history-status').textContent = 'error: ' + err.message;
  }
}

$('history-form').addEventListener('submit', (e) => { e.preventDefault(); searchHistory(true); });
$('history-more').addEventListener('click', () => searchHistory(false));

// ---- views ----
function view(name) {
  for (const v of ['live', 'history', 'event']) $('view-' + v).hidden = v !== name;
  document.querySelectorAll('.tab').forEach((t) => t.classList.toggle('active', t.dataset.view === name));
}
document.querySelectorAll('.tab').forEach((t) => t.addEventListener('click', () => {
  if (location.pathname !== '/') { location.href = '/'; return; }
  view(t.dataset.view);
}));

async function showEvent(id) {
  view('event');
  setState('live', 'permalink');
  const box = $('event-detail');
  try {
    const res = await fetch('/api/v1/events/' + id);
    const event = await res.json();
    if (!res.ok) throw new Error(event.error || res.statusText);
    box.innerHTML = '';
    const ol = document.createElement('ol');
    ol.className = 'events';
    ol.append(eventItem(event, true));
    box.append(ol);
    document.title = `Firehose #${id} ${event.topic}`;
  } catch (err) {
    box.textContent = 'error: ' + err.message;
  }
}

const permalink = location.pathname.match(/^\/events\/(\d+)$/);
if (permalink) {
  showEvent(permalink[1]);
} else {
  connect();
  setInterval(renderRates, 1000);
  renderRates();
}
