// The Sync view (#view-sync): the user's own sync log, as `ferry send` / `ferry watch` see it.

import { get, post } from './api.js';
import { byId, el, fieldValue, shortId } from './dom.js';
import { store } from './store.js';

const KEEP = 500; // as many as GET /api/log returns

export function initSyncLog() {
  byId('log-send-form').addEventListener('submit', appendEvent);
}

export async function loadLog() {
  const events = await get('/api/log');
  const list = byId('log-list');
  list.replaceChildren(...[...events].sort((a, b) => a.seq - b.seq).map(logItem));
  scrollToEnd();
}

/** A live `log` event: add it in seq order, once. */
export function onLogEvent(event) {
  const list = byId('log-list');
  if (list.querySelector(`li[data-seq="${Number(event.seq)}"]`)) return;
  const stick = isAtEnd();
  const later = [...list.children].find((item) => Number(item.dataset.seq) > event.seq);
  list.insertBefore(logItem(event), later ?? null);
  while (list.children.length > KEEP) list.firstElementChild.remove();
  if (stick) scrollToEnd();
}

function logItem(event) {
  const thisDevice = store.me && event.device === store.me.device;
  return el(
    'li',
    { 'data-seq': event.seq },
    el('span', { class: 'log-seq' }, `#${event.seq}`),
    el('span', { class: 'log-device mono', title: event.device }, thisDevice ? 'this device' : shortId(event.device)),
    el('span', { class: 'log-text' }, event.text),
  );
}

function isAtEnd() {
  const box = byId('log');
  return box.scrollHeight - box.scrollTop - box.clientHeight < 40;
}

function scrollToEnd() {
  const box = byId('log');
  box.scrollTop = box.scrollHeight;
}

async function appendEvent(event) {
  event.preventDefault();
  await post('/api/log', { text: fieldValue('log-text') });
  byId('log-text').value = '';
}
