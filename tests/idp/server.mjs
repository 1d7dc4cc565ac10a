#!/usr/bin/env node
// A local OpenID Connect identity provider for moshca's end-to-end tests and demo.
//
//   node server.mjs --accounts FILE [--port N] [--id-token-ttl SECS]
//
// Listens on 127.0.0.1 (port 0 picks a free one), issuer http://127.0.0.1:PORT, and prints
// `ready http://127.0.0.1:PORT` on stdout once it accepts connections. Accounts come from
// FILE, re-read at every lookup so a test can change a user's groups between sign-ins:
//   {"alice": {"password": "...", "groups": ["eng"], "hd": "example.com"}}
// Clients `moshca` and `other` are public native clients (PKCE, loopback redirect with any
// port, device grant). The RS256 signing key is made at start and lives in memory only.
// Sign-in uses this file's own login and consent pages, which check the password.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import { Provider } from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    accounts: { type: 'string' },
    'id-token-ttl': { type: 'string', default: '600' },
  },
});
if (!args.accounts) {
  console.error('server.mjs: --accounts FILE is required');
  process.exit(2);
}
const idTokenTtl = Number.parseInt(args['id-token-ttl'], 10);
if (!(idTokenTtl > 0)) {
  console.error('server.mjs: --id-token-ttl must be a positive number of seconds');
  process.exit(2);
}

// Re-read on every lookup: tests edit the file between sign-ins.
function readAccounts() {
  return JSON.parse(readFileSync(args.accounts, 'utf8'));
}

function html(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${html(title)}</title></head>`
    + `<body><h1>${html(title)}</h1>${body}</body></html>`;
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  use: 'sig',
  alg: 'RS256',
};

const nativeClient = (clientId) => ({
  client_id: clientId,
  application_type: 'native',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
  response_types: ['code'],
  // Native clients may use any port on a loopback redirect (RFC 8252 7.3).
  redirect_uris: ['http://127.0.0.1/callback'],
});

const server = createServer();
await new Promise((resolve) => server.listen(Number.parseInt(args.port, 10), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [nativeClient('moshca'), nativeClient('other')],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name', 'hd'],
    groups: ['groups'],
  },
  scopes: ['openid', 'profile', 'groups', 'offline_access'],
  // Scope claims go into the ID token itself, which is what the CA reads.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form) => {
        ctx.body = page('Enter the code', form + '<button type="submit" form="op.deviceInputForm">Continue</button>');
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = page('Confirm device', `<p>Code <code>${html(userCode)}</code> for ${html(client.clientId)}</p>`
          + form + '<button type="submit" form="op.deviceConfirmForm">Continue</button>');
      },
      successSource: async (ctx) => {
        ctx.body = page('Sign-in success', '<p>You can close this page.</p>');
      },
    },
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: 3600,
    IdToken: idTokenTtl,
    Interaction: 600,
    Session: 3600,
  },
  async findAccount(ctx, id) {
    const account = readAccounts()[id];
    if (!account) {
      return undefined;
    }
    return {
      accountId: id,
      async claims() {
        const claims = { sub: id, preferred_username: id, name: id };
        if (account.groups !== undefined) claims.groups = account.groups;
        if (account.hd !== undefined) claims.hd = account.hd;
        return claims;
      },
    };
  },
});

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 64 * 1024) reject(new Error('form too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

function send(res, status, body) {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.setHeader('cache-control', 'no-store');
  res.end(body);
}

function loginPage(uid, error) {
  return page('Sign in', (error ? `<p class="error">${html(error)}</p>` : '')
    + `<form method="post" action="/interaction/${html(uid)}/login">`
    + '<input type="text" name="login" placeholder="user name">'
    + '<input type="password" name="password" placeholder="password">'
    + '<button type="submit">Sign in</button></form>');
}

function consentPage(uid, clientId, scopes) {
  return page('Allow access', `<p>${html(clientId)} asks for ${html(scopes.join(' '))}</p>`
    + `<form method="post" action="/interaction/${html(uid)}/confirm">`
    + '<button type="submit">Allow</button></form>');
}

// The login and consent pages: GET shows the prompt the provider asks for, POST answers it.
async function interaction(req, res, url) {
  const [, , uid, step] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    send(res, 400, page('Error', '<p>interaction mismatch</p>'));
    return;
  }
  const { prompt, params } = details;
  if (req.method === 'GET') {
    if (prompt.name === 'login') {
      send(res, 200, loginPage(uid));
    } else {
      const scopes = [...(prompt.details.missingOIDCScope || [])];
      send(res, 200, consentPage(uid, params.client_id, scopes));
    }
    return;
  }
  if (req.method === 'POST' && step === 'login' && prompt.name === 'login') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    const account = readAccounts()[login];
    if (!account || account.password !== form.get('password')) {
      send(res, 200, loginPage(uid, 'wrong user name or password'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  if (req.method === 'POST' && step === 'confirm' && prompt.name === 'consent') {
    await readForm(req);
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, {
      mergeWithLastSubmission: true,
    });
    return;
  }
  send(res, 400, page('Error', `<p>unexpected ${html(req.method)} for the ${html(prompt.name)} prompt</p>`));
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  const url = new URL(req.url, issuer);
  if (url.pathname.startsWith('/interaction/')) {
    interaction(req, res, url).catch((err) => {
      console.error(`server.mjs: interaction: ${err.message}`);
      send(res, 400, page('Error', `<p>${html(err.message)}</p>`));
    });
    return;
  }
  providerCallback(req, res);
});

provider.on('server_error', (ctx, err) => console.error(`server.mjs: server error: ${err.stack}`));
for (const event of ['grant.error', 'authorization.error', 'backchannel.error']) {
  provider.on(event, (ctx, err) => console.error(`server.mjs: ${event}: ${err.message} ${err.error_description || ''}`));
}

process.on('SIGTERM', () => process.exit(0));
process.stdout.write(`ready ${issuer}\n`);
