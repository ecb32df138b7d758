// First start (#setup): create a user, or join one with a pairing code from another device.

import { post, showError } from './api.js';
import { byId, fieldValue } from './dom.js';

let onDone = () => {};
// 'recovery' while the recovery key is on screen: the app must not replace it, although the
// mode is already `running`. 'joining' while the confirmation string is shown.
let holding = null;

export const setupHoldsScreen = () => holding === 'recovery';

export function initSetup(options) {
  onDone = options.onDone;
  byId('create-form').addEventListener('submit', createAccount);
  byId('join-form').addEventListener('submit', joinAccount);
  byId('recovery-confirm').addEventListener('change', (event) => {
    byId('recovery-done').disabled = !event.target.checked;
  });
  byId('recovery-done').addEventListener('click', finishRecovery);
}

/** Shows the first-start screen for a /api/state in mode `setup` or `joining`. */
export function showSetup(state) {
  byId('setup').hidden = false;
  prefillRelay(state.defaults ?? {});
  if (state.mode === 'joining') {
    if (holding !== 'joining') showJoinConfirmation(null);
  } else if (holding !== 'recovery') {
    showForms();
  }
}

/** Relay fields come from `ferry ui --relay/--relay-key`; what the person typed stays. */
function prefillRelay(defaults) {
  for (const prefix of ['create', 'join']) {
    fillIfEmpty(`${prefix}-relay-url`, defaults.relay_url);
    fillIfEmpty(`${prefix}-relay-key`, defaults.relay_key);
  }
}

function fillIfEmpty(id, value) {
  const input = byId(id);
  if (!input.value && value) input.value = value;
}

function showForms() {
  holding = null;
  byId('setup-forms').hidden = false;
  byId('join-confirmation').hidden = true;
  byId('recovery').hidden = true;
}

async function createAccount(event) {
  event.preventDefault();
  const form = event.currentTarget;
  await whileBusy(form, async () => {
    const created = await post('/api/setup/create', {
      relay_url: fieldValue('create-relay-url'),
      relay_key: fieldValue('create-relay-key'),
      device_name: fieldValue('create-device-name'),
      name: fieldValue('create-name'),
    });
    showRecovery(created.recovery_key);
  });
}

async function joinAccount(event) {
  event.preventDefault();
  const form = event.currentTarget;
  await whileBusy(form, async () => {
    const joined = await post('/api/setup/join', {
      relay_url: fieldValue('join-relay-url'),
      relay_key: fieldValue('join-relay-key'),
      code: fieldValue('join-code'),
      device_name: fieldValue('join-device-name'),
    });
    showJoinConfirmation(joined.confirmation);
  });
}

/** Disables a form's submit button while `work` runs, so a slow request is not sent twice. */
async function whileBusy(form, work) {
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await work();
  } finally {
    button.disabled = false;
  }
}

function showJoinConfirmation(confirmation) {
  holding = 'joining';
  byId('setup-forms').hidden = true;
  const code = byId('join-confirmation-code');
  code.textContent = confirmation ?? '';
  code.hidden = !confirmation;
  byId('join-confirmation').hidden = false;
}

function showRecovery(recoveryKey) {
  holding = 'recovery';
  byId('setup-forms').hidden = true;
  byId('recovery-key').textContent = recoveryKey;
  byId('recovery-confirm').checked = false;
  byId('recovery-done').disabled = true;
  byId('recovery').hidden = false;
}

function finishRecovery() {
  // The key is shown once: take it out of the page before going on.
  byId('recovery-key').textContent = '';
  byId('recovery').hidden = true;
  holding = null;
  onDone();
}

/** `setup` events: the join finished (`joined`) or did not (`failed`). */
export function onSetupEvent(event) {
  if (event.kind === 'joined') {
    holding = null;
    byId('join-confirmation').hidden = true;
    onDone();
  } else if (event.kind === 'failed') {
    showError(event.error || 'Joining failed');
    showForms();
  }
}
