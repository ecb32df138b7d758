// The Me view (#view-me): handle, profile name, presence, ids for support.

import { get, post } from './api.js';
import { byId, fieldValue } from './dom.js';
import { store } from './store.js';

export function initMe() {
  byId('handle-form').addEventListener('submit', takeHandle);
  byId('profile-form').addEventListener('submit', saveName);
  byId('presence-visible').addEventListener('change', setPresenceVisible);
}

export async function loadMe() {
  store.me = await get('/api/me');
  renderMe();
}

function renderMe() {
  const me = store.me;
  if (!me) return;
  byId('my-handle').textContent = me.handle || 'No handle yet';
  byId('my-user').textContent = me.user;
  byId('my-device').textContent = me.device;
  byId('my-device-name').textContent = me.device_name ?? '';
  byId('presence-visible').checked = Boolean(me.presence_visible);
  // Do not overwrite a name being typed.
  const profileName = byId('profile-name');
  if (document.activeElement !== profileName) profileName.value = me.name ?? '';
}

async function takeHandle(event) {
  event.preventDefault();
  const { handle } = await post('/api/handle', { name: fieldValue('handle-name') });
  store.me = { ...store.me, handle };
  byId('handle-name').value = '';
  renderMe();
}

async function saveName(event) {
  event.preventDefault();
  const name = fieldValue('profile-name');
  await post('/api/profile', { name });
  store.me = { ...store.me, name };
  renderMe();
}

async function setPresenceVisible(event) {
  const checkbox = event.target;
  try {
    await post('/api/presence', { visible: checkbox.checked });
    store.me = { ...store.me, presence_visible: checkbox.checked };
  } catch (error) {
    checkbox.checked = !checkbox.checked; // the change did not happen
    throw error;
  }
}

const MY_KINDS = new Set(['handle_changed', 'profile_changed', 'presence_visibility']);

/** A `people` event about this user (from another of their devices too): reload ME. */
export function onMeChanged(event) {
  if (!MY_KINDS.has(event.kind)) return;
  if (event.user && store.me && event.user !== store.me.user) return;
  loadMe().catch(() => {});
}
