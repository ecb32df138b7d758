// What the page knows, shared by the views: the user, their contacts and conversations.

import { shortId } from './dom.js';

export const store = {
  /** ME from /api/me, null before the app runs. */
  me: null,
  /** user id → CONTACT */
  contacts: new Map(),
  /** conversation id → conversation, in /api/convs order (most recent first) */
  convs: new Map(),
};

/** The name to show for a user: the API's names first, else the start of the id. */
export function nameOf(user) {
  if (!user) return '';
  if (store.me && user === store.me.user) return store.me.name || 'You';
  const contact = store.contacts.get(user);
  if (contact?.name) return contact.name;
  for (const conv of store.convs.values()) {
    const member = conv.members?.find((m) => m.user === user);
    if (member?.name) return member.name;
  }
  return shortId(user);
}

export const isMe = (user) => Boolean(store.me) && user === store.me.user;
