#!/usr/bin/env node
// Completes a device sign-in (RFC 8628) at the test identity provider as a person would on
// another device:
//   device.mjs --user NAME --password PW (--uri VERIFICATION_URI_COMPLETE | --issuer URL --code USER_CODE)
// Enters the code (or opens the complete URI), confirms it, signs in, allows access.

import { parseArgs } from 'node:util';

import { Browser, need } from './lib.mjs';

const { values: args } = parseArgs({
  options: {
    user: { type: 'string', default: process.env.MOSHCA_IDP_USER },
    password: { type: 'string', default: process.env.MOSHCA_IDP_PASSWORD },
    uri: { type: 'string' },
    issuer: { type: 'string' },
    code: { type: 'string' },
  },
});

let start = args.uri;
if (!start) {
  const issuer = need(args.issuer, '--uri, or --issuer with --code,');
  start = `${issuer}/device?user_code=${encodeURIComponent(need(args.code, '--code'))}`;
}
const browser = new Browser({
  user: need(args.user, '--user (or MOSHCA_IDP_USER)'),
  password: need(args.password, '--password (or MOSHCA_IDP_PASSWORD)'),
});
try {
  const end = await browser.drive(start);
  if (!end.page || !/success/i.test(end.page)) {
    throw new Error(`the device sign-in did not end in success: ${end.page ?? end.redirect}`);
  }
  console.error(`device.mjs: ${args.user} signed in on the device`);
} catch (err) {
  console.error(`device.mjs: ${err.message}`);
  process.exit(1);
}
