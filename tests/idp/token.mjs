#!/usr/bin/env node
// Prints a raw ID token from the test identity provider, for tests that hand the CA tokens
// it must refuse:
//   token.mjs --issuer URL --user NAME --password PW [--client moshca] [--nonce N]
// Runs the authorization code flow with PKCE as client --client through the provider's
// real pages, exchanges the code and prints the ID token on stdout.

import { createHash, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import { Browser, need } from './lib.mjs';

const { values: args } = parseArgs({
  options: {
    issuer: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    client: { type: 'string', default: 'moshca' },
    nonce: { type: 'string' },
    scope: { type: 'string', default: 'openid profile groups' },
  },
});
const issuer = need(args.issuer, '--issuer');
const browser = new Browser({ user: need(args.user, '--user'), password: need(args.password, '--password') });

try {
  const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const redirectUri = 'http://127.0.0.1:9/callback';
  const auth = new URL(discovery.authorization_endpoint);
  auth.search = new URLSearchParams({
    response_type: 'code',
    client_id: args.client,
    redirect_uri: redirectUri,
    scope: args.scope,
    state: randomBytes(8).toString('hex'),
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...(args.nonce ? { nonce: args.nonce } : {}),
  }).toString();
  const end = await browser.drive(auth.toString(), { stop: (u) => new URL(u).pathname === '/callback' });
  const code = end.redirect && new URL(end.redirect).searchParams.get('code');
  if (!code) throw new Error(`no code at the callback: ${end.redirect ?? end.page}`);
  const response = await fetch(discovery.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: redirectUri,
      client_id: args.client,
      code_verifier: verifier,
    }).toString(),
  });
  const answer = await response.json();
  if (!answer.id_token) throw new Error(`no ID token: ${answer.error} ${answer.error_description ?? ''}`);
  process.stdout.write(`${answer.id_token}\n`);
} catch (err) {
  console.error(`token.mjs: ${err.message}`);
  process.exit(1);
}
