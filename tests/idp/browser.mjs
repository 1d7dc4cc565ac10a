#!/usr/bin/env node
// A stand-in for a person's web browser, usable as $BROWSER: `browser.mjs URL`.
//
// Opens the authorization URL, signs in as $MOSHCA_IDP_USER with $MOSHCA_IDP_PASSWORD
// through the identity provider's real pages (cookies kept), allows access on the consent
// page, then opens the loopback callback the provider redirects to, as a browser would.
// With MOSHCA_IDP_TAMPER_STATE=1 it changes the callback's `state` first, like an attacker
// who feeds the client a callback of their own.

import { Browser, need } from './lib.mjs';

const url = need(process.argv[2], 'the authorization URL (first argument)');
const browser = new Browser({
  user: need(process.env.MOSHCA_IDP_USER, 'MOSHCA_IDP_USER'),
  password: need(process.env.MOSHCA_IDP_PASSWORD, 'MOSHCA_IDP_PASSWORD'),
});

try {
  const isCallback = (u) => new URL(u).pathname === '/callback';
  const end = await browser.drive(url, { stop: isCallback });
  if (!end.redirect) throw new Error(`the sign-in ended on a page, not at the callback: ${end.page}`);
  const callback = new URL(end.redirect);
  if (process.env.MOSHCA_IDP_TAMPER_STATE === '1') {
    callback.searchParams.set('state', 'tampered-' + callback.searchParams.get('state'));
  }
  const response = await fetch(callback, { redirect: 'manual' });
  const text = await response.text();
  console.error(`browser.mjs: callback answered HTTP ${response.status}: ${text.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim()}`);
} catch (err) {
  console.error(`browser.mjs: ${err.message}`);
  process.exit(1);
}
