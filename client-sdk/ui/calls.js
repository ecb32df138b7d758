// Voice and video calls (#call). The page runs WebRTC; the SDK carries the signaling (offer,
// answer, ICE candidates) end-to-end encrypted, and the relay's TURN server the media when a
// direct path fails.
//
// Caller: media → offer → wait for ICE gathering (at most 2 s) → POST /api/calls with the SDP;
// candidates found later are trickled. `answered` brings the answer.
// Callee: `incoming` rings; Accept → media → offer as remote description → answer → accept.

import { get, post, path, showError } from './api.js';
import { byId, formatClock } from './dom.js';
import { nameOf } from './store.js';

const GATHER_WAIT_MS = 2000;
const ENDED_SHOWN_MS = 3000;
const STATS_EVERY_MS = 1000;

/** The call on screen, or null. One at a time. */
let call = null;
// Events for a call id the page does not know yet: the caller learns its id only when
// POST /api/calls answers, and `ringing` may come first.
const earlyEvents = new Map();

const isLive = (c) => c !== null && c.state !== 'ended';
const forceRelay = () => sessionStorage.getItem('ferry-relay') === '1';

export function initCalls() {
  byId('call-accept').addEventListener('click', () => acceptCall().catch(() => {}));
  byId('call-decline').addEventListener('click', () => declineCall().catch(() => {}));
  byId('call-hangup').addEventListener('click', () => hangUp().catch(() => {}));
  window.addEventListener('pagehide', hangUpOnLeave);
}

function newCall(fields) {
  return {
    id: null,
    conv: null,
    peer: null,
    peerName: '',
    video: false,
    outgoing: false,
    offer: null,
    state: 'outgoing',
    status: '',
    pc: null,
    localStream: null,
    sdpTaken: false, // candidates surfaced before the SDP was read are in it
    canSendCandidates: false, // the SDK knows the call (and, callee, that it accepted)
    localCandidates: [],
    remoteCandidates: [],
    connectedAt: 0,
    timers: [],
    cancelled: false,
    ...fields,
  };
}

// ---------------------------------------------------------------------------------------------
// Placing a call

/** Calls the peer of a 1:1 conversation. */
export async function startCall({ conv, peer, peerName, video }) {
  if (isLive(call)) {
    showError('You are already in a call.');
    return;
  }
  const current = show(newCall({ conv, peer, peerName, video, outgoing: true, state: 'outgoing', status: 'Calling…' }));
  try {
    const pc = await preparePeerConnection(current);
    if (current.cancelled) return;
    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc, GATHER_WAIT_MS);
    if (current.cancelled) return;
    current.sdpTaken = true;
    const { call: id } = await post('/api/calls', { conv, video, offer: pc.localDescription.sdp });
    current.id = id;
    if (current.cancelled) {
      // Hung up while the call was being placed.
      post(path('calls', id, 'hangup')).catch(() => {});
      return;
    }
    current.canSendCandidates = true;
    flushLocalCandidates(current);
    replayEarlyEvents(id);
  } catch (error) {
    if (!current.cancelled) endLocally(current, reasonOf(error));
  }
}

// ---------------------------------------------------------------------------------------------
// Answering a call

function ring(event) {
  if (isLive(call)) return; // busy: the SDK lets the caller know when this one stops ringing
  show(
    newCall({
      id: event.call,
      conv: event.conv,
      peer: event.from,
      peerName: nameOf(event.from),
      video: Boolean(event.video),
      offer: event.offer,
      state: 'incoming',
      status: event.video ? 'Incoming video call' : 'Incoming voice call',
    }),
  );
}

async function acceptCall() {
  const current = call;
  if (!current || current.state !== 'incoming') return;
  setState(current, 'connecting', 'Connecting…');
  try {
    const pc = await preparePeerConnection(current);
    if (current.cancelled) return;
    await pc.setRemoteDescription({ type: 'offer', sdp: current.offer });
    await flushRemoteCandidates(current);
    await pc.setLocalDescription(await pc.createAnswer());
    current.sdpTaken = true;
    await post(path('calls', current.id, 'accept'), { answer: pc.localDescription.sdp });
    current.canSendCandidates = true;
    flushLocalCandidates(current);
  } catch (error) {
    if (current.cancelled) return;
    // Not accepted yet (no microphone, say): decline; accepted: hang up.
    const action = current.canSendCandidates ? 'hangup' : 'decline';
    post(path('calls', current.id, action)).catch(() => {});
    endLocally(current, reasonOf(error));
  }
}

async function declineCall() {
  const current = call;
  if (!current || current.state !== 'incoming') return;
  teardown(current);
  hide(current);
  await post(path('calls', current.id, 'decline'));
}

async function hangUp() {
  const current = call;
  if (!isLive(current)) return;
  current.cancelled = true;
  endLocally(current, 'hung up');
  if (current.id) await post(path('calls', current.id, 'hangup'));
}

/** Leaving the page ends the call: the other side should not wait for media that is gone. */
function hangUpOnLeave() {
  // A call in progress loses its media with the page: hang up. One that only rings goes on
  // ringing (on the user's other devices too, and here again if the page comes back).
  if (!isLive(call) || !call.id || call.state === 'incoming') return;
  fetch(path('calls', call.id, 'hangup'), {
    method: 'POST',
    keepalive: true,
    headers: { 'Content-Type': 'application/json' },
    body: '{}',
  }).catch(() => {});
}

// ---------------------------------------------------------------------------------------------
// The peer connection

async function iceServers() {
  try {
    const turn = await get('/api/turn');
    const urls = [turn?.urls ?? []].flat();
    return urls.length ? [{ urls, username: turn.username, credential: turn.credential }] : [];
  } catch {
    return []; // shown in #errors; a direct connection may still work
  }
}

/** TURN credentials, the RTCPeerConnection, and the microphone (and camera) on it. */
async function preparePeerConnection(current) {
  const pc = new RTCPeerConnection({
    iceServers: await iceServers(),
    iceTransportPolicy: forceRelay() ? 'relay' : 'all',
  });
  current.pc = pc;
  pc.addEventListener('icecandidate', (event) => onLocalCandidate(current, event.candidate));
  pc.addEventListener('track', (event) => showRemoteMedia(event));
  pc.addEventListener('iceconnectionstatechange', () => onIceState(current));
  byId('call').dataset.ice = pc.iceConnectionState;

  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: current.video });
  if (current.cancelled || current.pc !== pc) {
    stopStream(stream);
    throw new Error('the call ended');
  }
  current.localStream = stream;
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  if (current.video) showLocalMedia(stream);
  return pc;
}

/** Resolves when ICE gathering is complete, or after `ms`, whichever is first. */
function gatheringDone(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(finish, ms);
    function finish() {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', onChange);
      resolve();
    }
    function onChange() {
      if (pc.iceGatheringState === 'complete') finish();
    }
    pc.addEventListener('icegatheringstatechange', onChange);
  });
}

function onLocalCandidate(current, candidate) {
  // null (or an empty candidate) marks the end of gathering: nothing to send.
  if (!candidate || !candidate.candidate || !current.sdpTaken) return;
  current.localCandidates.push(JSON.stringify(candidate.toJSON()));
  flushLocalCandidates(current);
}

function flushLocalCandidates(current) {
  if (!current.canSendCandidates || !current.id || !isLive(current)) return;
  for (const candidate of current.localCandidates.splice(0)) {
    post(path('calls', current.id, 'candidate'), { candidate }).catch(() => {});
  }
}

/** A candidate as the other page sent it: `candidate.toJSON()` as JSON, or a bare line. */
function parseCandidate(text) {
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed.candidate === 'string') {
      if (parsed.sdpMid == null && parsed.sdpMLineIndex == null) parsed.sdpMLineIndex = 0;
      return parsed;
    }
  } catch {
    // not JSON: a bare candidate line
  }
  return { candidate: text, sdpMLineIndex: 0 };
}

/** Remote candidates wait until the remote description is set. */
function onRemoteCandidate(current, text) {
  const init = parseCandidate(text);
  if (current.pc?.remoteDescription) addRemoteCandidate(current.pc, init);
  else current.remoteCandidates.push(init);
}

async function flushRemoteCandidates(current) {
  for (const init of current.remoteCandidates.splice(0)) await addRemoteCandidate(current.pc, init);
}

function addRemoteCandidate(pc, init) {
  return pc.addIceCandidate(init).catch((error) => console.warn('ICE candidate refused', error));
}

function onIceState(current) {
  if (current !== call || !current.pc) return;
  const state = current.pc.iceConnectionState;
  byId('call').dataset.ice = state;
  if (state === 'connected' || state === 'completed') {
    if (current.state !== 'connected') markConnected(current);
  } else if (state === 'disconnected' && current.state === 'connected') {
    current.status = 'Reconnecting…';
    render();
  } else if (state === 'failed') {
    current.cancelled = true;
    if (current.id) post(path('calls', current.id, 'hangup')).catch(() => {});
    endLocally(current, 'the connection failed');
  }
}

function markConnected(current) {
  if (!current.connectedAt) current.connectedAt = Date.now();
  setState(current, 'connected', 'Connected');
  startTimer(current, updateCallTimer, 1000);
  startTimer(current, () => checkRelay(current), STATS_EVERY_MS);
  updateCallTimer();
  checkRelay(current);
}

/** data-relay: whether the selected candidate pair goes through the TURN relay. */
async function checkRelay(current) {
  if (!current.pc || current !== call) return;
  let stats;
  try {
    stats = await current.pc.getStats();
  } catch {
    return; // the connection closed meanwhile
  }
  const pair = selectedPair(stats);
  const local = pair && stats.get(pair.localCandidateId);
  if (local) byId('call').dataset.relay = String(local.candidateType === 'relay');
}

function selectedPair(stats) {
  let selected = null;
  stats.forEach((report) => {
    if (report.type === 'transport' && report.selectedCandidatePairId) selected = stats.get(report.selectedCandidatePairId);
  });
  if (selected) return selected;
  stats.forEach((report) => {
    if (!selected && report.type === 'candidate-pair' && report.state === 'succeeded' && report.nominated) selected = report;
  });
  return selected;
}

// ---------------------------------------------------------------------------------------------
// Media

function showRemoteMedia(event) {
  const video = byId('remote-video');
  const stream = event.streams[0] ?? new MediaStream([event.track]);
  if (video.srcObject !== stream) video.srcObject = stream;
  video.play().catch(() => {}); // autoplay may wait for a gesture; the click on Call/Accept is one
}

function showLocalMedia(stream) {
  const video = byId('local-video');
  video.srcObject = stream;
  video.play().catch(() => {});
}

function stopStream(stream) {
  for (const track of stream?.getTracks() ?? []) track.stop();
}

/** Closes the connection, stops the camera and microphone, clears the videos and timers. */
function teardown(current) {
  for (const timer of current.timers) clearInterval(timer);
  current.timers = [];
  current.pc?.close();
  current.pc = null;
  stopStream(current.localStream);
  current.localStream = null;
  for (const id of ['remote-video', 'local-video']) byId(id).srcObject = null;
}

// ---------------------------------------------------------------------------------------------
// `call` events

export function onCallEvent(event) {
  if (event.kind === 'incoming') {
    ring(event);
    return;
  }
  if (!call || call.id !== event.call) {
    // Possibly this page's own call, before POST /api/calls told it the id.
    if (call?.outgoing && !call.id && isLive(call)) rememberEarlyEvent(event);
    return;
  }
  applyCallEvent(call, event);
}

function applyCallEvent(current, event) {
  switch (event.kind) {
    case 'ringing':
      if (current.state === 'outgoing') setState(current, 'outgoing', 'Ringing…');
      break;
    case 'answered':
      onAnswered(current, event).catch((error) => endLocally(current, reasonOf(error)));
      break;
    case 'connected':
      // The callee: the caller confirmed this device. Media follows once ICE connects.
      if (current.state !== 'connected') setState(current, 'connecting', 'Connecting…');
      break;
    case 'candidate':
      onRemoteCandidate(current, event.candidate);
      break;
    case 'ended':
      if (isLive(current)) endLocally(current, event.reason || 'ended');
      break;
    default:
      break;
  }
}

/** The caller: a device of the callee answered. (Its other devices get `ended`.) */
async function onAnswered(current, event) {
  if (!current.outgoing || !current.pc) return;
  setState(current, 'connecting', 'Connecting…');
  await current.pc.setRemoteDescription({ type: 'answer', sdp: event.answer });
  await flushRemoteCandidates(current);
}

function rememberEarlyEvent(event) {
  const list = earlyEvents.get(event.call) ?? [];
  list.push(event);
  earlyEvents.set(event.call, list);
}

function replayEarlyEvents(id) {
  const events = earlyEvents.get(id) ?? [];
  earlyEvents.clear();
  for (const event of events) applyCallEvent(call, event);
}

/** At start and after a reconnect: a call that rings here is shown; one this page shows that the SDK no longer has has ended. */
export async function loadCalls() {
  const calls = await get('/api/calls');
  if (!isLive(call)) {
    // A call that rang while the page was away (reloaded, opened late) rings here now.
    const ringing = calls.find((c) => c.state === 'incoming' && c.offer);
    if (ringing) ring({ call: ringing.call, conv: ringing.conv, from: ringing.peer, video: ringing.video, offer: ringing.offer });
    return;
  }
  if (!call.id) return;
  const known = calls.find((c) => c.call === call.id);
  if (!known || String(known.state).startsWith('ended')) endLocally(call, known ? known.state.replace(/^ended:\s*/, '') : 'ended');
}

// ---------------------------------------------------------------------------------------------
// The overlay

function show(current) {
  for (const timer of call?.timers ?? []) clearInterval(timer);
  clearTimeout(hideTimer);
  earlyEvents.clear();
  call = current;
  const overlay = byId('call');
  delete overlay.dataset.relay;
  delete overlay.dataset.ice;
  overlay.classList.toggle('video-call', current.video);
  render();
  return current;
}

function setState(current, state, status) {
  current.state = state;
  current.status = status;
  if (current === call) render();
}

function render() {
  const overlay = byId('call');
  if (!call) {
    overlay.hidden = true;
    return;
  }
  overlay.hidden = false;
  overlay.dataset.state = call.state;
  byId('call-peer').textContent = call.peerName;
  byId('call-status').textContent = call.status;
  byId('call-accept').hidden = call.state !== 'incoming';
  byId('call-decline').hidden = call.state !== 'incoming';
  byId('call-hangup').hidden = call.state === 'incoming' || call.state === 'ended';
  if (call.state !== 'connected') byId('call-timer').textContent = '';
}

function updateCallTimer() {
  if (call?.state === 'connected') byId('call-timer').textContent = formatClock((Date.now() - call.connectedAt) / 1000);
}

function startTimer(current, tick, ms) {
  current.timers.push(setInterval(tick, ms));
}

let hideTimer = null;

/** Ends the call on this page: shows why for 3 s, then hides the overlay. */
function endLocally(current, reason) {
  teardown(current);
  if (current.state === 'ended') return;
  setState(current, 'ended', `Call ended: ${reason}`);
  if (current !== call) return;
  clearTimeout(hideTimer);
  hideTimer = setTimeout(() => hide(current), ENDED_SHOWN_MS);
}

function hide(current) {
  if (call !== current) return;
  call = null;
  render();
}

function reasonOf(error) {
  if (error?.name === 'NotAllowedError') return 'the microphone or camera was not allowed';
  if (error?.name === 'NotFoundError') return 'no microphone or camera was found';
  return error?.message || 'something went wrong';
}
