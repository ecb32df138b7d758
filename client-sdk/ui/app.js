// The Ferry web app: boots the page, keeps the event stream open and routes its events.
// All cryptography stays in the SDK behind /api; this page only shows and sends.

import { get } from './api.js';
import { byId, refreshRelativeTimes } from './dom.js';
import { store } from './store.js';
import { currentView, initNav, onViewShown, showView } from './nav.js';
import { initSetup, onSetupEvent, setupHoldsScreen, showSetup } from './setup.js';
import { initMe, loadMe, onMeChanged } from './me.js';
import { initContacts, loadContacts, onPeopleEvent } from './contacts.js';
import { initDevices, loadDevices, onPairingEvent } from './devices.js';
import { initSyncLog, loadLog, onLogEvent } from './synclog.js';
import { initChats, loadConvs, onConvEvent, onUploadEvent, refreshOpenChat, reloadConvsSoon } from './chats.js';
import { initCalls, onCallEvent, loadCalls } from './calls.js';

let running = false;
let mode = null; // /api/state's mode: setup, joining, running

// ---------------------------------------------------------------------------------------------
// #connection

/** Shows the relay connection from a STATUS. */
function showStatus(status) {
  if (!status) return;
  if (status.stopped) {
    setConnection('stopped', `Stopped: ${status.stopped}`);
  } else if (status.connected) {
    setConnection('connected', 'Connected');
  } else if (mode === 'setup') {
    setConnection('reconnecting', 'Not connected yet'); // no relay to reconnect to before setup
  } else {
    setConnection('reconnecting', status.last_error ? `Reconnecting… ${status.last_error}` : 'Reconnecting…');
  }
}

function setConnection(state, text) {
  const node = byId('connection');
  node.dataset.state = state;
  node.textContent = text;
}

// ---------------------------------------------------------------------------------------------
// Loading

/** Fetches /api/state and shows the screen it calls for. */
async function loadState() {
  const state = await get('/api/state');
  mode = state.mode;
  showStatus(state.status);
  if (state.mode === 'running' && !setupHoldsScreen()) {
    await enterApp(state.me);
  } else if (state.mode !== 'running') {
    running = false;
    byId('app').hidden = true;
    showSetup(state);
  }
}

/** Shows the app and loads what it displays. */
async function enterApp(me) {
  byId('setup').hidden = true;
  byId('app').hidden = false;
  if (me) store.me = me;
  const firstTime = !running;
  running = true;
  await Promise.all([loadMe(), loadContacts(), loadConvs()]);
  const reloads = [refreshOpenChat(), loadCalls()];
  // Showing the view loads its data; later, only the data is fetched again.
  if (firstTime) showView(currentView());
  else reloads.push(loadCurrentView());
  await Promise.all(reloads);
}

/** Loads the data of the view on screen (the chats view is always loaded). */
function loadCurrentView() {
  switch (currentView()) {
    case 'devices':
      return loadDevices();
    case 'sync':
      return loadLog();
    default:
      return Promise.resolve();
  }
}

/** After the event stream reconnects: fetch again everything shown, since events were missed. */
function refreshAll() {
  loadState().catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// Events

const HANDLERS = {
  status: showStatus,
  log: onLogEvent,
  caught_up: () => {},
  // The page fell behind the event stream: what it shows may be stale.
  lagged: refreshAll,
  people: (event) => {
    onPeopleEvent(event);
    onMeChanged(event);
    reloadConvsSoon(); // names and presence show in the conversations too
  },
  conv: onConvEvent,
  call: onCallEvent,
  pairing: onPairingEvent,
  setup: onSetupEvent,
  upload: onUploadEvent,
  setting: (event) => {
    // A device was renamed (from any of the user's devices).
    if (event.device_name === undefined) return;
    loadMe().catch(() => {});
    if (currentView() === 'devices') loadDevices().catch(() => {});
  },
};

function dispatch(message) {
  let event;
  try {
    event = JSON.parse(message.data);
  } catch {
    return;
  }
  const handler = HANDLERS[event?.type];
  if (!handler) return;
  try {
    handler(event);
  } catch (error) {
    console.error(`handling a ${event.type} event`, error);
  }
}

let streamOpenedBefore = false;

function connectEvents() {
  const source = new EventSource('/api/events');
  source.addEventListener('message', dispatch);
  source.addEventListener('open', () => {
    if (streamOpenedBefore) refreshAll();
    streamOpenedBefore = true;
  });
  source.addEventListener('error', () => {
    setConnection('reconnecting', 'Reconnecting…');
    // The browser retries by itself unless the server refused the stream (closed).
    if (source.readyState === EventSource.CLOSED) setTimeout(connectEvents, 3000);
  });
}

// ---------------------------------------------------------------------------------------------
// Start

function rememberRelayFlag() {
  // `?relay=1` forces calls through TURN (the tests use it). The server drops the query when
  // it redirects /?token=T to /, so the flag is remembered for the tab.
  const relay = new URLSearchParams(location.search).get('relay');
  if (relay !== null) sessionStorage.setItem('ferry-relay', relay === '1' ? '1' : '0');
}

function start() {
  rememberRelayFlag();
  initNav();
  initSetup({ onDone: () => loadState().catch(() => {}) });
  initMe();
  initContacts();
  initDevices();
  initSyncLog();
  initChats();
  initCalls();
  onViewShown('devices', () => loadDevices().catch(() => {}));
  onViewShown('sync', () => loadLog().catch(() => {}));
  onViewShown('me', () => loadMe().catch(() => {}));
  onViewShown('contacts', () => loadContacts().catch(() => {}));
  setInterval(refreshRelativeTimes, 30_000);
  connectEvents();
  loadState().catch(() => setConnection('reconnecting', 'Reconnecting…'));
}

start();
