// The Devices view (#view-devices): the user's devices, revoking, renaming, pairing a new one.

import { get, post } from './api.js';
import { byId, el, fieldValue, relativeTimeElement } from './dom.js';
import { store } from './store.js';

const QR_PATH = '/api/pair/qr.svg';

let revoking = null; // { device, name } while #revoke-dialog is open
let invites = 0; // pairing codes made by this page, to reload the QR code of a new one
let expiryTimer = null;

export function initDevices() {
  byId('device-list').addEventListener('click', onListClick);
  byId('revoke-confirm').addEventListener('click', confirmRevoke);
  byId('revoke-cancel').addEventListener('click', () => byId('revoke-dialog').close());
  byId('revoke-dialog').addEventListener('close', () => (revoking = null));
  byId('rename-form').addEventListener('submit', renameThisDevice);
  byId('pair-start').addEventListener('click', startPairing);
  byId('pair-admit').addEventListener('click', () => answerPairing('admit'));
  byId('pair-refuse').addEventListener('click', () => answerPairing('refuse'));
}

export async function loadDevices() {
  const devices = await get('/api/devices');
  renderDevices(devices);
}

// ---------------------------------------------------------------------------------------------
// The list

/** This device first, then the others, revoked ones last. */
function deviceOrder(a, b) {
  return Number(b.this_device) - Number(a.this_device) || Number(a.revoked) - Number(b.revoked) || a.created_at - b.created_at;
}

function renderDevices(devices) {
  byId('device-list').replaceChildren(...[...devices].sort(deviceOrder).map(deviceItem));
  const mine = devices.find((device) => device.this_device);
  const rename = byId('rename-name');
  if (mine && document.activeElement !== rename) rename.value = mine.name;
}

function deviceItem(device) {
  const seen = ['Added ', relativeTimeElement(device.created_at)];
  if (device.last_seen && !device.this_device) seen.push(' · ', relativeTimeElement(device.last_seen, 'last seen '));
  return el(
    'li',
    {
      class: 'device card',
      'data-device': device.id,
      'data-this': String(Boolean(device.this_device)),
      'data-revoked': String(Boolean(device.revoked)),
    },
    el(
      'div',
      { class: 'device-main' },
      el(
        'p',
        { class: 'device-name' },
        el('strong', {}, device.name),
        device.this_device && el('span', { class: 'tag' }, 'this device'),
        device.revoked && el('span', { class: 'tag tag-danger' }, 'revoked'),
      ),
      el('p', { class: 'subtle' }, ...seen),
    ),
    !device.this_device && !device.revoked &&
      el('button', { type: 'button', class: 'revoke secondary danger-text', 'aria-label': `Revoke ${device.name}`, 'data-name': device.name }, 'Revoke'),
  );
}

function onListClick(event) {
  const button = event.target.closest('button.revoke');
  if (!button) return;
  revoking = { device: button.closest('li[data-device]').dataset.device, name: button.dataset.name };
  byId('revoke-warning').textContent =
    `The device “${revoking.name}” can no longer connect or read anything new. This cannot be undone.`;
  byId('revoke-dialog').showModal();
}

async function confirmRevoke() {
  if (!revoking) return;
  const { device } = revoking;
  byId('revoke-dialog').close();
  await post('/api/devices/revoke', { device });
  await loadDevices();
}

async function renameThisDevice(event) {
  event.preventDefault();
  const name = fieldValue('rename-name');
  await post('/api/devices/rename', { name });
  if (store.me) store.me = { ...store.me, device_name: name };
  await loadDevices();
}

// ---------------------------------------------------------------------------------------------
// Pairing a new device

async function startPairing() {
  const invite = await post('/api/pair/invite');
  invites += 1;
  byId('pair-code').textContent = invite.code;
  showExpiry(invite.expires_at);
  // The first QR code has the plain address; a later one needs a new address to be fetched again.
  byId('pair-qr').src = invites === 1 ? QR_PATH : `${QR_PATH}?invite=${invites}`;
  byId('pair-panel').hidden = false;
  byId('pair-joined').hidden = true;
  byId('pair-result').textContent = '';
}

function showExpiry(expiresAt) {
  clearTimeout(expiryTimer);
  const expires = byId('pair-expires');
  const clock = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' }).format(expiresAt * 1000);
  expires.textContent = `Valid until ${clock}`;
  const left = expiresAt * 1000 - Date.now();
  expiryTimer = setTimeout(() => {
    expires.textContent = 'This code has expired: choose “Add a device” for a new one.';
  }, Math.max(0, left));
}

async function answerPairing(answer) {
  for (const id of ['pair-admit', 'pair-refuse']) byId(id).disabled = true;
  try {
    await post(`/api/pair/${answer}`);
  } finally {
    for (const id of ['pair-admit', 'pair-refuse']) byId(id).disabled = false;
  }
}

/** `pairing` events: a device used the code (`joined`), then the outcome. */
export function onPairingEvent(event) {
  switch (event.kind) {
    case 'joined':
      showJoined(event);
      break;
    case 'paired':
      finishPairing('The new device was added to your account.');
      break;
    case 'refused':
      finishPairing('The device was refused.');
      break;
    case 'failed':
      finishPairing(`Pairing failed: ${event.error || 'unknown error'}`);
      break;
    default:
      break;
  }
}

function showJoined(event) {
  clearTimeout(expiryTimer);
  byId('pair-panel').hidden = true;
  byId('pair-confirmation').textContent = event.confirmation ?? '';
  byId('pair-joined-name').textContent = event.name ? `The device calls itself “${event.name}”.` : '';
  byId('pair-result').textContent = '';
  byId('pair-joined').hidden = false;
}

function finishPairing(result) {
  clearTimeout(expiryTimer);
  byId('pair-panel').hidden = true;
  byId('pair-joined').hidden = true;
  byId('pair-result').textContent = result;
  loadDevices().catch(() => {});
}
