// The Chats view (#view-chats): the conversation list, new groups, a group's members; routes
// `conv` events to the open conversation (chat.js).

import { get, post, path } from './api.js';
import { byId, el, initial, relativeTimeElement } from './dom.js';
import { isMe, store } from './store.js';
import { onViewShown, setNavBadge, showView } from './nav.js';
import {
  closeChat,
  initChat,
  markOpenChatRead,
  onConvsChanged,
  onMessageEvent,
  onReadByEvent,
  onTypingEvent,
  openChat,
  openConvId,
} from './chat.js';

export { onUploadEvent, refreshOpenChat } from './chat.js';

let membersConv = null; // the group whose #members-dialog is open

export function initChats() {
  initChat({ onOpenChanged: renderConvList, onRead: reloadConvsSoon, onMembersButton: openMembersDialog });
  byId('conv-list').addEventListener('click', onListClick);
  byId('group-new').addEventListener('click', openGroupDialog);
  byId('group-form').addEventListener('submit', createGroup);
  byId('group-cancel').addEventListener('click', () => byId('group-dialog').close());
  byId('member-list').addEventListener('click', onMemberListClick);
  byId('member-add-form').addEventListener('submit', addMember);
  byId('group-rename-form').addEventListener('submit', renameGroup);
  byId('leave-button').addEventListener('click', leaveGroup);
  byId('members-close').addEventListener('click', () => byId('members-dialog').close());
  byId('members-dialog').addEventListener('close', () => (membersConv = null));
  onViewShown('chats', markOpenChatRead);
}

// ---------------------------------------------------------------------------------------------
// The list

export async function loadConvs() {
  const convs = await get('/api/convs');
  store.convs = new Map(convs.map((conv) => [conv.conv, conv]));
  renderConvList();
  setNavBadge('chats', convs.reduce((sum, conv) => sum + (Number(conv.unread) || 0), 0));
  onConvsChanged();
  if (membersConv) renderMembersDialog();
}

let reloadTimer = null;

/** Reloads the list once for a burst of events. */
export function reloadConvsSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => loadConvs().catch(() => {}), 150);
}

function renderConvList() {
  const list = byId('conv-list');
  // Keep the keyboard focus on the same conversation when the list is rebuilt under it.
  const focused = list.contains(document.activeElement) && document.activeElement.closest('li[data-conv]')?.dataset.conv;
  const convs = [...store.convs.values()].sort((a, b) => (b.last_activity ?? 0) - (a.last_activity ?? 0));
  list.replaceChildren(...convs.map(convItem));
  byId('conv-empty').hidden = convs.length > 0;
  if (focused) list.querySelector(`li[data-conv="${CSS.escape(focused)}"] button`)?.focus();
}

function convItem(conv) {
  const unread = Number(conv.unread) || 0;
  const group = conv.kind === 'group';
  const button = el(
    'button',
    { type: 'button', class: 'conv-button', 'aria-current': conv.conv === openConvId() ? 'true' : null },
    el('span', { class: `avatar${group ? ' avatar-group' : ''}`, 'aria-hidden': 'true' }, initial(conv.title)),
    el(
      'span',
      { class: 'conv-text' },
      el('span', { class: 'conv-title' }, conv.title),
      el('span', { class: 'conv-meta' }, convSubtitle(conv)),
    ),
    el(
      'span',
      { class: 'conv-side' },
      conv.last_activity ? relativeTimeElement(conv.last_activity) : null,
      el('span', { class: 'unread', role: 'img', 'aria-label': `${unread} unread`, hidden: unread === 0 }, String(unread)),
    ),
  );
  return el('li', { 'data-conv': conv.conv }, button);
}

function convSubtitle(conv) {
  if (conv.kind === 'group') return `Group · ${conv.members?.length ?? 0} members`;
  const peer = store.contacts.get(conv.peer);
  return peer?.online ? 'Online' : (peer?.handle ?? '');
}

function onListClick(event) {
  const item = event.target.closest('li[data-conv]');
  if (item) openChat(item.dataset.conv).catch(() => {});
}

/** The 1:1 conversation with a contact (made if needed), open in the chats view. */
export async function openChatWith(user) {
  const { conv } = await post('/api/convs/chat', { user });
  await loadConvs();
  showView('chats');
  await openChat(conv);
}

// ---------------------------------------------------------------------------------------------
// `conv` events

export function onConvEvent(event) {
  switch (event.kind) {
    case 'message':
      onMessageEvent(event);
      break;
    case 'typing':
      onTypingEvent(event);
      return; // nothing in the list changes
    case 'read_by':
      onReadByEvent(event);
      break;
    default: // joined, members_changed, renamed, left
      break;
  }
  reloadConvsSoon();
}

// ---------------------------------------------------------------------------------------------
// A new group (#group-dialog)

function openGroupDialog() {
  const contacts = [...store.contacts.values()]
    .filter((contact) => contact.state === 'contact')
    .sort((a, b) => a.name.localeCompare(b.name));
  byId('group-members').replaceChildren(...contacts.map(memberCheckbox));
  byId('group-no-contacts').hidden = contacts.length > 0;
  byId('group-title').value = '';
  byId('group-dialog').showModal();
}

function memberCheckbox(contact) {
  const id = `group-member-${contact.user}`;
  return el(
    'li',
    { class: 'check' },
    el('input', { type: 'checkbox', id, name: 'member', value: contact.user }),
    el('label', { for: id }, contact.name),
  );
}

async function createGroup(event) {
  event.preventDefault();
  const users = [...byId('group-members').querySelectorAll('input[name=member]:checked')].map((input) => input.value);
  const { conv } = await post('/api/convs/group', { title: byId('group-title').value.trim(), users });
  byId('group-dialog').close();
  await loadConvs();
  await openChat(conv);
}

// ---------------------------------------------------------------------------------------------
// A group's members (#members-dialog)

function openMembersDialog(conv) {
  if (!store.convs.has(conv)) return;
  membersConv = conv;
  byId('group-rename-title').value = store.convs.get(conv).title;
  renderMembersDialog();
  byId('members-dialog').showModal();
}

function renderMembersDialog() {
  const conv = store.convs.get(membersConv);
  if (!conv) {
    byId('members-dialog').close();
    return;
  }
  const admins = new Set(conv.admins ?? []);
  byId('member-list').replaceChildren(...(conv.members ?? []).map((member) => memberItem(member, admins, conv.i_am_admin)));
  renderAddSelect(conv);
}

function memberItem(member, admins, iAmAdmin) {
  const me = isMe(member.user);
  return el(
    'li',
    { 'data-user': member.user },
    el('span', { class: 'avatar small', 'aria-hidden': 'true' }, initial(member.name)),
    el('span', { class: 'member-name' }, member.name),
    me && el('span', { class: 'tag' }, 'you'),
    admins.has(member.user) && el('span', { class: 'tag' }, 'admin'),
    iAmAdmin && !me &&
      el('button', { type: 'button', class: 'remove-member secondary danger-text', 'aria-label': `Remove ${member.name} from the group` }, 'Remove'),
  );
}

function renderAddSelect(conv) {
  const inGroup = new Set((conv.members ?? []).map((member) => member.user));
  const candidates = [...store.contacts.values()]
    .filter((contact) => contact.state === 'contact' && !inGroup.has(contact.user))
    .sort((a, b) => a.name.localeCompare(b.name));
  const select = byId('member-add');
  const options = candidates.map((contact) => el('option', { value: contact.user }, contact.name));
  select.replaceChildren(...(options.length ? options : [el('option', { value: '' }, 'No contacts to add')]));
  select.disabled = options.length === 0;
  byId('member-add-button').disabled = options.length === 0;
}

async function onMemberListClick(event) {
  const button = event.target.closest('button.remove-member');
  if (!button || !membersConv) return;
  const user = button.closest('li[data-user]').dataset.user;
  button.disabled = true;
  await post(path('convs', membersConv, 'remove'), { users: [user] });
  await loadConvs();
}

async function addMember(event) {
  event.preventDefault();
  const user = byId('member-add').value;
  if (!user || !membersConv) return;
  await post(path('convs', membersConv, 'add'), { users: [user] });
  await loadConvs();
}

async function renameGroup(event) {
  event.preventDefault();
  if (!membersConv) return;
  await post(path('convs', membersConv, 'rename'), { title: byId('group-rename-title').value.trim() });
  await loadConvs();
}

async function leaveGroup() {
  const conv = membersConv;
  if (!conv) return;
  await post(path('convs', conv, 'leave'));
  byId('members-dialog').close();
  if (openConvId() === conv) closeChat();
  await loadConvs();
}
