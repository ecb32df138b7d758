// The open conversation (#chat): its header, the message log with paging and receipts, who is
// typing, and the composer with file uploads.

import { get, post, postFile, path, showError } from './api.js';
import { byId, el, formatBytes, formatDuration, fullTime, messageTime, relativeTimeElement } from './dom.js';
import { isMe, nameOf, store } from './store.js';
import { currentView } from './nav.js';
import { startCall } from './calls.js';

const PAGE = 50;
const TYPING_REPEAT_MS = 3000; // say "typing" at most this often
const TYPING_IDLE_MS = 5000; // then "stopped" after this long without a key
const TYPING_SHOWN_MS = 8000; // forget someone's typing if their "stopped" got lost
const NEAR_EDGE_PX = 80;

const chat = {
  conv: null, // the open conversation's id
  messages: new Map(), // seq → MESSAGE
  hasOlder: false,
  loadingOlder: false,
  generation: 0, // grows on each open: answers for a chat no longer open are dropped
  lastReadMarked: 0,
};

// Set by chats.js: the list marks the open chat; reading changes its unread counts.
let onOpenChanged = () => {};
let onRead = () => {};
let onMembersButton = () => {};

export const openConvId = () => chat.conv;

export function initChat(options) {
  onOpenChanged = options.onOpenChanged;
  onRead = options.onRead;
  onMembersButton = options.onMembersButton;
  byId('messages').addEventListener('scroll', onMessagesScroll, { passive: true });
  byId('chat-back').addEventListener('click', closeChat);
  byId('call-audio').addEventListener('click', () => startCallHere(false));
  byId('call-video').addEventListener('click', () => startCallHere(true));
  byId('members-button').addEventListener('click', () => onMembersButton(chat.conv));
  const composer = byId('composer');
  composer.addEventListener('submit', sendMessage);
  byId('composer-text').addEventListener('keydown', onComposerKey);
  byId('composer-text').addEventListener('input', onComposerInput);
  byId('composer-file').addEventListener('change', onFilesChosen);
  document.addEventListener('visibilitychange', markRead);
}

// ---------------------------------------------------------------------------------------------
// Opening and closing

export async function openChat(conv) {
  if (chat.conv === conv && !byId('chat').hidden) {
    byId('composer-text').focus();
    return;
  }
  if (chat.conv) stopTyping();
  chat.conv = conv;
  chat.messages.clear();
  chat.hasOlder = false;
  chat.lastReadMarked = 0;
  chat.generation += 1;
  typers.clear();
  renderTyping();
  byId('message-list').replaceChildren();
  byId('messages-start').hidden = true;
  byId('composer-text').value = '';
  byId('chat').hidden = false;
  byId('chat-empty').hidden = true;
  byId('view-chats').classList.add('chat-open');
  renderChatHeader();
  onOpenChanged();
  await loadLatest();
  byId('composer-text').focus();
}

export function closeChat() {
  stopTyping();
  chat.conv = null;
  chat.generation += 1;
  chat.messages.clear();
  byId('chat').hidden = true;
  byId('chat-empty').hidden = false;
  byId('view-chats').classList.remove('chat-open');
  onOpenChanged();
}

/** The newest page of the open chat, merged with what is shown (at open, after a reconnect). */
async function loadLatest() {
  const { conv, generation } = chat;
  const wasEmpty = chat.messages.size === 0;
  const stick = wasEmpty || isNearBottom();
  const page = await get(messagesPath(conv));
  if (generation !== chat.generation) return;
  if (wasEmpty) chat.hasOlder = page.length === PAGE;
  for (const message of page) putMessage(message);
  updateHistoryStart();
  if (stick) scrollToBottom();
  markRead();
  await fillViewport();
}

/** After the event stream reconnects: the open chat's newest messages again. */
export async function refreshOpenChat() {
  if (!chat.conv) return;
  if (!store.convs.has(chat.conv)) {
    closeChat();
    return;
  }
  renderChatHeader();
  await loadLatest();
}

/** The conversation list changed: the open chat's title, members and receipts may have. */
export function onConvsChanged() {
  if (!chat.conv) return;
  if (!store.convs.has(chat.conv)) {
    closeChat(); // left, or removed from the group
    return;
  }
  renderChatHeader();
  updateReceipts();
}

function messagesPath(conv, before) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (before !== undefined) query.set('before', String(before));
  return `${path('convs', conv, 'messages')}?${query}`;
}

// ---------------------------------------------------------------------------------------------
// The header

function renderChatHeader() {
  const conv = store.convs.get(chat.conv);
  if (!conv) return;
  const oneToOne = conv.kind === 'one_to_one';
  byId('chat-title').textContent = conv.title;
  byId('chat-subtitle').replaceChildren(...chatSubtitle(conv));
  byId('call-audio').hidden = !oneToOne;
  byId('call-video').hidden = !oneToOne;
  byId('members-button').hidden = oneToOne;
}

function chatSubtitle(conv) {
  if (conv.kind !== 'one_to_one') {
    const count = conv.members?.length ?? 0;
    return [`${count} ${count === 1 ? 'member' : 'members'}`];
  }
  const peer = store.contacts.get(conv.peer);
  if (peer?.online) return ['Online'];
  if (peer?.last_seen) return [relativeTimeElement(peer.last_seen, 'Last seen ')];
  return [];
}

function startCallHere(video) {
  const conv = store.convs.get(chat.conv);
  if (conv) startCall({ conv: conv.conv, peer: conv.peer, peerName: conv.title, video });
}

// ---------------------------------------------------------------------------------------------
// Messages

/** Adds or replaces a message's item, in seq order. */
function putMessage(message) {
  const list = byId('message-list');
  const item = messageItem(message);
  const existing = chat.messages.has(message.seq) && list.querySelector(`li[data-seq="${Number(message.seq)}"]`);
  chat.messages.set(message.seq, message);
  if (existing) {
    existing.replaceWith(item);
    return;
  }
  const later = [...list.children].find((child) => Number(child.dataset.seq) > message.seq);
  // Messages still being sent stay last.
  list.insertBefore(item, later ?? list.querySelector('li[data-pending]'));
}

function messageItem(message) {
  const item = el('li', {
    class: 'message',
    'data-seq': message.seq,
    'data-mine': String(Boolean(message.mine)),
    'data-kind': message.kind,
  });
  const bubble = el(
    'div',
    { class: 'bubble' },
    el(
      'p',
      { class: 'meta' },
      el('span', { class: 'sender' }, message.name || nameOf(message.user)),
      ' ',
      el('time', { datetime: new Date(message.sent_at).toISOString(), title: fullTime(message.sent_at) }, messageTime(message.sent_at)),
    ),
    ...messageBody(message),
  );
  if (message.mine) bubble.append(receiptElement(message));
  item.append(bubble);
  return item;
}

function messageBody(message) {
  switch (message.kind) {
    case 'text':
      return [el('p', { class: 'text' }, message.text)];
    case 'file':
      return fileBody(message);
    case 'call':
      return [el('p', { class: 'text call-text' }, callText(message.call))];
    default:
      return [el('p', { class: 'text unsupported' }, 'This message needs a newer version of Ferry.')];
  }
}

function fileBody(message) {
  const file = message.file ?? { name: 'file', size: 0, image: false };
  const href = `${path('convs', message.conv, 'files', String(message.seq))}`;
  const parts = [];
  if (message.text) parts.push(el('p', { class: 'text' }, message.text));
  if (file.image) {
    const preview = el('img', { class: 'preview', src: href, alt: file.name, loading: 'lazy' });
    preview.addEventListener('load', keepBottomAfterImage, { once: true });
    parts.push(preview);
  }
  parts.push(
    el('a', { class: 'download', href: `${href}?download=1`, download: file.name }, `Download ${file.name} (${formatBytes(file.size)})`),
  );
  return parts;
}

function callText(call) {
  if (!call) return 'Call';
  const kind = call.video ? 'Video call' : 'Voice call';
  switch (call.outcome) {
    case 'completed':
      return `${kind}, ${formatDuration(call.seconds)}`;
    case 'missed':
      return 'Missed call';
    case 'declined':
      return `${kind}, declined`;
    case 'busy':
      return `${kind}, busy`;
    default:
      return kind;
  }
}

// ---------------------------------------------------------------------------------------------
// Receipts: from the conversation's members' delivered/read markers (seqs), and the message's
// own lists. A message is delivered/read once every other member's devices fetched/read it.

function receiptOf(message) {
  const conv = store.convs.get(message.conv);
  const others = (conv?.members ?? []).filter((member) => !isMe(member.user));
  if (others.length === 0) return { state: 'sent', readers: [] };
  const has = (list, member, marker) => (list ?? []).includes(member.user) || Number(member[marker] ?? 0) >= message.seq;
  const readers = others.filter((member) => has(message.read, member, 'read'));
  if (readers.length === others.length) return { state: 'read', readers };
  const delivered = others.every((member) => has(message.delivered, member, 'delivered') || has(message.read, member, 'read'));
  return { state: delivered ? 'delivered' : 'sent', readers };
}

const RECEIPT_WORDS = { sent: 'Sent', delivered: 'Delivered', read: 'Read' };

function receiptElement(message) {
  const { state, readers } = receiptOf(message);
  const receipt = el('span', { class: 'receipt', 'data-receipt': state }, RECEIPT_WORDS[state]);
  if (readers.length) receipt.title = `Read by ${readers.map((member) => member.name).join(', ')}`;
  return receipt;
}

function updateReceipts() {
  for (const receipt of byId('message-list').querySelectorAll('li[data-mine="true"] .receipt')) {
    const seq = Number(receipt.closest('li').dataset.seq);
    const message = chat.messages.get(seq);
    if (message) receipt.replaceWith(receiptElement(message));
  }
}

// ---------------------------------------------------------------------------------------------
// Scrolling: the newest at the bottom; scrolling to the top loads older messages.

const messagesBox = () => byId('messages');

function isNearBottom() {
  const box = messagesBox();
  return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_EDGE_PX;
}

function scrollToBottom() {
  const box = messagesBox();
  box.scrollTop = box.scrollHeight;
}

function keepBottomAfterImage(event) {
  // An image that loads grows its message: keep the newest in view if it was.
  const box = messagesBox();
  const item = event.target.closest('li');
  if (item && box.scrollHeight - box.scrollTop - box.clientHeight < item.offsetHeight + NEAR_EDGE_PX) scrollToBottom();
}

function onMessagesScroll() {
  if (messagesBox().scrollTop < NEAR_EDGE_PX) loadOlder().catch(() => {});
}

async function loadOlder() {
  if (!chat.conv || !chat.hasOlder || chat.loadingOlder || chat.messages.size === 0) return;
  chat.loadingOlder = true;
  const { conv, generation } = chat;
  try {
    const oldest = Math.min(...chat.messages.keys());
    const page = await get(messagesPath(conv, oldest));
    if (generation !== chat.generation) return;
    // Keep the messages on screen where they are while older ones go in above them.
    const box = messagesBox();
    const fromBottom = box.scrollHeight - box.scrollTop;
    for (const message of page) putMessage(message);
    box.scrollTop = box.scrollHeight - fromBottom;
    chat.hasOlder = page.length === PAGE;
    updateHistoryStart();
  } finally {
    chat.loadingOlder = false;
  }
  await fillViewport();
}

/** Without a scroll bar, the person cannot scroll up to ask for more: load it now. */
async function fillViewport() {
  const box = messagesBox();
  if (chat.hasOlder && box.clientHeight > 0 && box.scrollHeight <= box.clientHeight) await loadOlder();
}

function updateHistoryStart() {
  const start = byId('messages-start');
  start.hidden = chat.hasOlder;
  start.textContent = chat.messages.size ? 'This is the start of the conversation.' : 'No messages yet. Say hello!';
}

// ---------------------------------------------------------------------------------------------
// Read marks

function markRead() {
  if (!chat.conv || document.visibilityState !== 'visible' || currentView() !== 'chats') return;
  const fromOthers = [...chat.messages.values()].filter((message) => !message.mine).map((message) => message.seq);
  const newestFromOthers = Math.max(0, ...fromOthers);
  if (newestFromOthers <= chat.lastReadMarked) return;
  const newest = Math.max(...chat.messages.keys());
  chat.lastReadMarked = newest;
  post(path('convs', chat.conv, 'read'), { seq: newest }).then(onRead, () => {});
}

/** The chats view came back on screen: what arrived meanwhile is read now. */
export const markOpenChatRead = markRead;

// ---------------------------------------------------------------------------------------------
// Events of the open conversation

/** A `conv` `message` event. Returns nothing; the list of conversations reloads separately. */
export function onMessageEvent(event) {
  const message = event.message;
  if (!message || message.conv !== chat.conv) return;
  const stick = message.mine || isNearBottom();
  putMessage(message);
  typers.delete(message.user);
  renderTyping();
  if (stick) scrollToBottom();
  markRead();
}

/** A `conv` `read_by` event: a member read up to `seq`. */
export function onReadByEvent(event) {
  const conv = store.convs.get(event.conv);
  const member = conv?.members?.find((m) => m.user === event.user);
  if (member) member.read = Math.max(Number(member.read ?? 0), Number(event.seq));
  if (event.conv === chat.conv) updateReceipts();
}

// ---------------------------------------------------------------------------------------------
// Who is typing (#typing)

const typers = new Map(); // user → { name, timer }

export function onTypingEvent(event) {
  if (event.conv !== chat.conv || isMe(event.user)) return;
  clearTimeout(typers.get(event.user)?.timer);
  if (event.typing) {
    const timer = setTimeout(() => {
      typers.delete(event.user);
      renderTyping();
    }, TYPING_SHOWN_MS);
    typers.set(event.user, { name: event.name || nameOf(event.user), timer });
  } else {
    typers.delete(event.user);
  }
  renderTyping();
}

function renderTyping() {
  const names = [...typers.values()].map((typer) => typer.name);
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names.length} people are typing…`;
  byId('typing').textContent = text;
}

// ---------------------------------------------------------------------------------------------
// The composer

let typingSentAt = 0;
let typingConv = null; // where "typing" was said, to say "stopped" there
let typingIdleTimer = null;

function onComposerKey(event) {
  // Enter sends, Shift+Enter is a new line; not while an input method composes a character.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    byId('composer').requestSubmit();
  }
}

function onComposerInput() {
  if (!chat.conv) return;
  if (!byId('composer-text').value.trim()) {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (typingConv !== chat.conv || now - typingSentAt >= TYPING_REPEAT_MS) {
    typingSentAt = now;
    typingConv = chat.conv;
    post(path('convs', chat.conv, 'typing'), { typing: true }).catch(() => {});
  }
  clearTimeout(typingIdleTimer);
  typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  clearTimeout(typingIdleTimer);
  if (!typingConv) return;
  const conv = typingConv;
  typingConv = null;
  typingSentAt = 0;
  post(path('convs', conv, 'typing'), { typing: false }).catch(() => {});
}

async function sendMessage(event) {
  event.preventDefault();
  const textarea = byId('composer-text');
  const text = textarea.value;
  const conv = chat.conv;
  if (!conv || !text.trim()) return;
  stopTyping();
  textarea.value = '';
  await sendText(conv, text);
}

/**
 * Sends `text`, shown at once as "Sending…" (the SDK waits for the relay, through a
 * reconnect if need be); a send that fails stays shown with a Retry button, so nothing typed
 * is lost.
 */
async function sendText(conv, text) {
  const pending = pendingItem(text);
  byId('message-list').append(pending);
  scrollToBottom();
  let sent;
  try {
    sent = await post(path('convs', conv, 'send'), { text });
  } catch (error) {
    markFailed(pending, conv, text);
    throw error;
  }
  pending.remove();
  // The `conv` event normally brings the message; fetch it if it has not come yet.
  if (chat.conv === conv && !chat.messages.has(sent.seq)) await loadLatest();
}

function pendingItem(text) {
  return el(
    'li',
    { class: 'message', 'data-mine': 'true', 'data-kind': 'text', 'data-pending': 'true' },
    el(
      'div',
      { class: 'bubble' },
      el('p', { class: 'text' }, text),
      el('span', { class: 'receipt', 'data-receipt': 'sending' }, 'Sending…'),
    ),
  );
}

function markFailed(pending, conv, text) {
  const receipt = pending.querySelector('.receipt');
  receipt.dataset.receipt = 'failed';
  receipt.textContent = 'Not sent';
  const retry = el('button', { type: 'button', class: 'retry', 'aria-label': 'Send again' }, 'Retry');
  retry.addEventListener('click', () => {
    pending.remove();
    sendText(conv, text).catch(() => {});
  });
  receipt.after(retry);
}

// ---------------------------------------------------------------------------------------------
// Files: the page posts the bytes; `upload` events report the SDK's progress.

const uploads = new Map(); // key (the upload id, or a local key until it is known) → progress
const earlyUploadEvents = new Map(); // events that came before their POST answered
let localUploads = 0;

function onFilesChosen(event) {
  const input = event.target;
  const files = [...input.files];
  input.value = ''; // the same file can be chosen again
  if (chat.conv) for (const file of files) uploadFile(chat.conv, file).catch(() => {});
}

async function uploadFile(conv, file) {
  localUploads += 1;
  const localKey = `local-${localUploads}`;
  uploads.set(localKey, { name: file.name, sent: 0, total: file.size, posting: true });
  renderUploads();
  try {
    const { upload } = await postFile(`${path('convs', conv, 'files')}?name=${encodeURIComponent(file.name)}`, file);
    const id = String(upload);
    uploads.set(id, { name: file.name, sent: 0, total: file.size, posting: false });
    const early = earlyUploadEvents.get(id);
    earlyUploadEvents.delete(id);
    if (early) applyUploadEvent(early);
  } finally {
    uploads.delete(localKey);
    renderUploads();
  }
}

/** An `upload` event: progress of one of this page's uploads. */
export function onUploadEvent(event) {
  const id = String(event.id);
  if (uploads.has(id)) {
    applyUploadEvent(event);
    return;
  }
  earlyUploadEvents.set(id, event);
  if (earlyUploadEvents.size > 20) earlyUploadEvents.delete(earlyUploadEvents.keys().next().value);
}

function applyUploadEvent(event) {
  const id = String(event.id);
  if (event.done) {
    uploads.delete(id);
    if (event.error) showError(event.error);
    else if (event.conv === chat.conv) loadLatest().catch(() => {});
  } else {
    const upload = uploads.get(id);
    upload.sent = Number(event.sent) || 0;
    upload.total = Number(event.total) || upload.total;
  }
  renderUploads();
}

function renderUploads() {
  const progress = byId('upload-progress');
  const label = byId('upload-label');
  const active = [...uploads.values()];
  progress.hidden = active.length === 0;
  label.hidden = active.length === 0;
  if (active.length === 0) return;
  label.textContent = active.length === 1 ? `Sending ${active[0].name}` : `Sending ${active.length} files`;
  if (active.some((upload) => upload.posting)) {
    progress.removeAttribute('value'); // indeterminate while the bytes reach ferry ui
    return;
  }
  const total = active.reduce((sum, upload) => sum + upload.total, 0);
  progress.max = Math.max(1, total);
  progress.value = active.reduce((sum, upload) => sum + upload.sent, 0);
}
