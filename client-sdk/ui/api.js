// The local HTTP API of `ferry ui`, and the #errors list where its failures are shown.

import { byId, el } from './dom.js';

const NOT_RUNNING = 'Ferry is not running (the ferry ui process stopped)';
const ERROR_SECONDS = 10;

/** A failed request; its message has already been shown in #errors. */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

// Callers await requests without a catch where there is nothing more to do than show the
// error (done already): keep those rejections out of the console.
window.addEventListener('unhandledrejection', (event) => {
  if (event.reason instanceof ApiError) event.preventDefault();
});

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: 'same-origin', ...options });
  } catch {
    throw reported(new ApiError(NOT_RUNNING, 0, 'not_running'));
  }
  const body = await readJson(response);
  if (!response.ok) {
    const message = body?.error || `${response.status} ${response.statusText}`.trim();
    throw reported(new ApiError(message, response.status, body?.code));
  }
  return body;
}

async function readJson(response) {
  const text = await response.text().catch(() => '');
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function reported(error) {
  showError(error.message);
  return error;
}

export const get = (path) => request(path, { headers: { Accept: 'application/json' } });

export const post = (path, body = {}) =>
  request(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
  });

/** Sends a file's bytes as the request body. */
export const postFile = (path, file) =>
  request(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/octet-stream', Accept: 'application/json' },
    body: file,
  });

/** `/api/convs/ID/…` with every part escaped. */
export const path = (...parts) => '/api/' + parts.map((part) => encodeURIComponent(part)).join('/');

// ---------------------------------------------------------------------------------------------
// #errors

/**
 * Shows a message in #errors for 10 s, with a button to dismiss it sooner. The same message
 * twice is shown once (its time restarts), so a failing refresh does not pile up.
 */
export function showError(message) {
  const list = byId('errors');
  for (const existing of list.querySelectorAll('p')) {
    if (existing.firstChild?.textContent === message) existing.remove();
  }
  const item = el('p', {}, el('span', {}, message));
  // The × is drawn by CSS, so the item's text is the message alone.
  const dismiss = el('button', { type: 'button', class: 'dismiss', 'aria-label': 'Dismiss this error' });
  dismiss.addEventListener('click', () => item.remove());
  item.append(dismiss);
  list.append(item);
  setTimeout(() => item.remove(), ERROR_SECONDS * 1000);
}
