// The main navigation: one view shown at a time, the active button marked aria-current.

import { byId } from './dom.js';

export const VIEWS = ['chats', 'contacts', 'devices', 'sync', 'me'];

const shownListeners = new Map();
let current = 'chats';

export const currentView = () => current;

/** Runs `listener` each time `view` is shown, to load what it displays. */
export function onViewShown(view, listener) {
  shownListeners.set(view, listener);
}

export function showView(view) {
  current = view;
  for (const name of VIEWS) {
    const active = name === view;
    byId(`view-${name}`).hidden = !active;
    const button = byId(`nav-${name}`);
    if (active) button.setAttribute('aria-current', 'page');
    else button.removeAttribute('aria-current');
  }
  shownListeners.get(view)?.();
}

export function initNav() {
  for (const name of VIEWS) {
    byId(`nav-${name}`).addEventListener('click', () => showView(name));
  }
}

/** The number badge on a navigation button (unread messages, contact requests); 0 hides it. */
export function setNavBadge(view, count) {
  const badge = byId(`nav-${view}`).querySelector('.badge');
  badge.hidden = !count;
  badge.textContent = count ? String(count) : '';
  badge.setAttribute('aria-label', view === 'chats' ? `${count} unread` : `${count} new`);
}
