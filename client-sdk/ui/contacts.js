// The Contacts view (#view-contacts): requests, contacts, blocked people.

import { get, post } from './api.js';
import { byId, el, fieldValue, initial, relativeTimeElement } from './dom.js';
import { store } from './store.js';
import { setNavBadge } from './nav.js';
import { openChatWith } from './chats.js';

/** The buttons of a contact by state: [class, visible text, aria-label for a name]. */
const ACTIONS = {
  incoming: [
    ['accept', 'Accept', (name) => `Accept ${name}`],
    ['decline', 'Decline', (name) => `Decline ${name}`],
    ['block', 'Block', (name) => `Block ${name}`],
  ],
  outgoing: [
    ['cancel', 'Cancel request', (name) => `Cancel request to ${name}`],
    ['block', 'Block', (name) => `Block ${name}`],
  ],
  contact: [
    ['chat', 'Message', (name) => `Message ${name}`],
    ['remove', 'Remove', (name) => `Remove ${name}`],
    ['block', 'Block', (name) => `Block ${name}`],
  ],
  blocked: [['unblock', 'Unblock', (name) => `Unblock ${name}`]],
};

const STATE_WORDS = {
  incoming: 'Wants to be your contact',
  outgoing: 'Request sent',
  contact: '',
  blocked: 'Blocked',
};

const ORDER = ['incoming', 'contact', 'outgoing', 'blocked'];

// Notes of contact requests, from `people` events (CONTACT does not carry them).
const requestNotes = new Map();

export function initContacts() {
  byId('contact-add-form').addEventListener('submit', sendRequest);
  byId('contact-list').addEventListener('click', onListClick);
}

export async function loadContacts() {
  const contacts = await get('/api/contacts');
  store.contacts = new Map(contacts.map((contact) => [contact.user, contact]));
  renderContacts();
}

let reloadTimer = null;

/** Every `people` event may change the list: reload it (once for a burst of events). */
export function onPeopleEvent(event) {
  if (event.kind === 'request_received' && event.user && event.note) requestNotes.set(event.user, event.note);
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => loadContacts().catch(() => {}), 100);
}

function renderContacts() {
  const contacts = [...store.contacts.values()].sort(
    (a, b) => ORDER.indexOf(a.state) - ORDER.indexOf(b.state) || a.name.localeCompare(b.name),
  );
  byId('contact-list').replaceChildren(...contacts.map(contactItem));
  byId('contacts-empty').hidden = contacts.length > 0;
  setNavBadge('contacts', contacts.filter((contact) => contact.state === 'incoming').length);
}

function contactItem(contact) {
  const name = contact.name;
  const details = [contact.handle, STATE_WORDS[contact.state]].filter(Boolean).join(' · ');
  return el(
    'li',
    { class: 'contact card', 'data-user': contact.user, 'data-state': contact.state },
    el('span', { class: 'avatar', 'aria-hidden': 'true' }, initial(name)),
    el(
      'div',
      { class: 'contact-main' },
      el(
        'p',
        { class: 'contact-name' },
        el('strong', {}, name),
        ' ',
        presenceDot(contact.online),
      ),
      details && el('p', { class: 'subtle' }, details),
      lastSeen(contact),
      contact.state === 'incoming' && requestNotes.has(contact.user) &&
        el('p', { class: 'note' }, `“${requestNotes.get(contact.user)}”`),
      contact.state === 'contact' && contact.safety_number && safetyNumber(contact),
    ),
    el('div', { class: 'button-row' }, ...ACTIONS[contact.state].map((action) => actionButton(action, name))),
  );
}

function presenceDot(online) {
  return el('span', {
    class: 'presence',
    'data-online': online ? 'true' : 'false',
    role: 'img',
    'aria-label': online ? 'online' : 'offline',
  });
}

function lastSeen(contact) {
  if (contact.online) return el('p', { class: 'subtle last-seen' }, 'Online now');
  if (contact.last_seen) return el('p', { class: 'subtle last-seen' }, relativeTimeElement(contact.last_seen, 'Last seen '));
  return null;
}

function safetyNumber(contact) {
  return el(
    'details',
    { class: 'safety' },
    el('summary', {}, 'Safety number'),
    el('p', { class: 'mono safety-number' }, contact.safety_number),
    el('p', { class: 'hint' }, `Compare it with the one ${contact.name} sees, in person or on a call. If they match, nobody is in between.`),
  );
}

const BUTTON_STYLE = { accept: 'primary', chat: 'primary', remove: 'secondary danger-text', block: 'secondary danger-text' };

function actionButton([action, text, label], name) {
  const style = BUTTON_STYLE[action] ?? 'secondary';
  return el('button', { type: 'button', class: `${action} ${style}`, 'data-action': action, 'aria-label': label(name) }, text);
}

async function onListClick(event) {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const user = button.closest('li[data-user]').dataset.user;
  const action = button.dataset.action;
  if (action === 'chat') {
    await openChatWith(user);
    return;
  }
  button.disabled = true;
  try {
    await post(`/api/contacts/${action}`, { user });
  } finally {
    button.disabled = false;
  }
  await loadContacts();
}

async function sendRequest(event) {
  event.preventDefault();
  await post('/api/contacts/request', { handle: fieldValue('contact-handle'), note: fieldValue('contact-note') });
  byId('contact-handle').value = '';
  byId('contact-note').value = '';
  await loadContacts();
}
