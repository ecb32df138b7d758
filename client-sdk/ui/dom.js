// DOM building and formatting helpers. Every text from the API is hostile (names, messages,
// file names come from other people), so nodes are built with createElement and text nodes,
// never with innerHTML.

/**
 * Creates an element. `attrs` become attributes (true → present, false/null/undefined →
 * absent), except `on`, an object of event listeners. Children are nodes or strings (strings
 * become text nodes); null, undefined and false children are skipped.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'on') {
      for (const [type, listener] of Object.entries(value)) node.addEventListener(type, listener);
    } else if (value !== false && value !== null && value !== undefined) {
      node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

export const byId = (id) => document.getElementById(id);

/** Shows or hides an element with the `hidden` attribute. */
export function setShown(node, shown) {
  node.hidden = !shown;
}

/** A user, device or conversation id cut to something a person can compare. */
export const shortId = (hex) => String(hex ?? '').slice(0, 8);

/** The first letter of a name, for an avatar. */
export const initial = (name) => (Array.from(String(name ?? '').trim())[0] ?? '?').toUpperCase();

/** Reads a form field's trimmed value. */
export const fieldValue = (id) => byId(id).value.trim();

// ---------------------------------------------------------------------------------------------
// Times

const clockFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const dateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });
const yearDateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: 'numeric' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'short' });

const isSameDay = (a, b) => a.toDateString() === b.toDateString();

/** "2 min ago", "3 h ago", "yesterday", then a date; `seconds` since the epoch. */
export function relativeTime(seconds, now = Date.now()) {
  const date = new Date(seconds * 1000);
  const ago = Math.max(0, Math.round((now - date.getTime()) / 1000));
  if (ago < 45) return 'just now';
  if (ago < 3600) return `${Math.max(1, Math.round(ago / 60))} min ago`;
  if (ago < 86400) return `${Math.round(ago / 3600)} h ago`;
  const yesterday = new Date(now - 86400 * 1000);
  if (isSameDay(date, yesterday)) return 'yesterday';
  return shortDate(date, now);
}

function shortDate(date, now) {
  return date.getFullYear() === new Date(now).getFullYear() ? dateFormat.format(date) : yearDateFormat.format(date);
}

/** A message's time: the clock time today, the date and time before. `ms` since the epoch. */
export function messageTime(ms, now = Date.now()) {
  const date = new Date(ms);
  const clock = clockFormat.format(date);
  return isSameDay(date, new Date(now)) ? clock : `${shortDate(date, now)}, ${clock}`;
}

export const fullTime = (ms) => fullFormat.format(new Date(ms));

/**
 * A <time> element that keeps its relative text current (see refreshRelativeTimes).
 * `prefix` goes before the relative words ("last seen 5 min ago").
 */
export function relativeTimeElement(seconds, prefix = '') {
  const node = el('time', {
    datetime: new Date(seconds * 1000).toISOString(),
    title: fullTime(seconds * 1000),
    'data-relative': seconds,
    'data-prefix': prefix,
  });
  node.textContent = prefix + relativeTime(seconds);
  return node;
}

/** Updates every relative time on the page; called once a minute. */
export function refreshRelativeTimes() {
  for (const node of document.querySelectorAll('time[data-relative]')) {
    node.textContent = (node.dataset.prefix ?? '') + relativeTime(Number(node.dataset.relative));
  }
}

// ---------------------------------------------------------------------------------------------
// Sizes and durations

export function formatBytes(bytes) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = unit === 0 || value >= 10 ? 0 : 1;
  return `${value.toFixed(digits)} ${units[unit]}`;
}

/** "45 s", "2 min", "1 h 5 min". */
export function formatDuration(seconds) {
  const total = Math.max(0, Math.round(Number(seconds) || 0));
  if (total < 60) return `${total} s`;
  const minutes = Math.round(total / 60);
  if (minutes < 60) return `${minutes} min`;
  const rest = minutes % 60;
  return rest ? `${Math.floor(minutes / 60)} h ${rest} min` : `${minutes / 60} h`;
}

/** "0:42", "12:03", for a running call. */
export function formatClock(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const minutes = Math.floor(total / 60);
  return `${minutes}:${String(total % 60).padStart(2, '0')}`;
}
