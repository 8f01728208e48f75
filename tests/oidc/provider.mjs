// A real OpenID provider for the gateway's tests: panva's oidc-provider (the certified
// OpenID Connect implementation from npm), over HTTPS, issuing JWT access tokens by the
// client-credentials grant (clients authenticate with a secret, or with a private-key JWT as
// SMART Backend Services do). It makes a fresh signing key at each start, with the key id it
// is given, so a restart with another key id is a key rotation.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {issuer, port, cert, key, kid, audience, resource_scopes,
//          clients: [{client_id, client_secret? | jwks?, scope, claims?}],
//          users?: [{username, password, name, claims}],
//          public_clients?: [{client_id, redirect_uris, scope}], launch_secret?}
// `claims` are added to the client's access tokens (the user context a region's provider
// vouches for: role, organisation, purpose of use, patient). Prints "ready" when listening.
//
// With `users` and `public_clients` it also signs users in for SMART App Launch: the
// authorization code grant with PKCE (S256) for public clients, a login page of its own at
// /interaction/{uid}, and EHR launch. A partner system registers a launch context with
// `POST /launch {"patient": nhs}` (bearer `launch_secret`) and gets a launch id; an
// authorization request carrying that `launch` yields a token whose `patient` claim, and the
// token response's `patient`, name that patient. A user's access tokens carry the user's
// `claims`. Redirect URIs on https://localhost match on any port (the loopback relaxation of
// RFC 8252 7.3, which oidc-provider applies only to http): the tests' gateways take
// ephemeral ports.
import fs from 'node:fs';
import https from 'node:https';
import * as jose from 'jose';
import crypto from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
const signing = { ...(await jose.exportJWK(privateKey)), kid: cfg.kid, alg: 'ES256', use: 'sig' };

const claimsOf = Object.fromEntries(cfg.clients.map((c) => [c.client_id, c.claims || {}]));
const clients = cfg.clients.map((c) => ({
  client_id: c.client_id,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  ...(c.scope ? { scope: c.scope } : {}),
  id_token_signed_response_alg: 'ES256',
  ...(c.jwks
    ? { token_endpoint_auth_method: 'private_key_jwt', token_endpoint_auth_signing_alg: 'ES256', jwks: c.jwks }
    : { token_endpoint_auth_method: 'client_secret_basic', client_secret: c.client_secret }),
}));

const users = Object.fromEntries((cfg.users || []).map((u) => [u.username, u]));
for (const c of cfg.public_clients || []) {
  clients.push({
    client_id: c.client_id,
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: c.redirect_uris,
    scope: c.scope,
    id_token_signed_response_alg: 'ES256',
  });
}
const launches = new Map(); // launch id -> {patient}
const launchOfGrant = new Map(); // grant id -> patient
const resourceScopes = new Set(cfg.resource_scopes.split(' '));
const oidcScopes = new Set(['openid', 'fhirUser', 'launch', 'launch/patient', 'profile', 'offline_access']);

const provider = new Provider(cfg.issuer, {
  clients,
  findAccount: (ctx, id) => (users[id]
    ? { accountId: id, claims: () => ({ sub: id, name: users[id].name, fhirUser: `Practitioner/${id}` }) }
    : undefined),
  claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
  extraParams: ['launch', 'aud'],
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: [crypto.randomBytes(16).toString('hex')] },
  pkce: { required: () => true },
  clientBasedCORS: (ctx, origin, client) => client.redirectUris.some((u) => sameLoopbackOrigin(u, origin)),
  jwks: { keys: [signing] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => cfg.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== cfg.audience) throw new errors.InvalidTarget();
        return {
          scope: cfg.resource_scopes,
          audience: cfg.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: cfg.token_ttl || 600,
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    if (token.accountId && users[token.accountId]) {
      const patient = launchOfGrant.get(token.grantId);
      return { ...users[token.accountId].claims, ...(patient ? { patient } : {}) };
    }
    return claimsOf[token.clientId] || {};
  },
  // The SMART scopes the resource server grants, as the provider advertises them.
  scopes: [...oidcScopes, ...cfg.resource_scopes.split(' ')],
  clientAuthMethods: ['client_secret_basic', 'private_key_jwt', 'none'],
  enabledJWA: { clientAuthSigningAlgValues: ['ES256'] },
});

// https://localhost on any port is one loopback origin (see the head of this file).
function sameLoopbackOrigin(registered, value) {
  const a = URL.parse(registered);
  const b = URL.parse(value);
  if (!a || !b) return false;
  if (a.hostname === 'localhost' && b.hostname === 'localhost' && a.protocol === 'https:' && b.protocol === 'https:') return true;
  return a.origin === b.origin;
}
const allowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  if (allowed.call(this, value)) return true;
  const v = URL.parse(value);
  return !!v && this.redirectUris.some((u) => {
    const r = URL.parse(u);
    return r && sameLoopbackOrigin(u, value) && r.pathname === v.pathname && !v.search && !v.hash;
  });
};

// The token response names the launch patient, as SMART's EHR launch has it.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/token' && ctx.body && ctx.body.access_token) {
    const claims = jose.decodeJwt(ctx.body.access_token);
    if (claims.patient) ctx.body.patient = claims.patient;
  }
});

const page = (title, body) => `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body><main><h1>${title}</h1>${body}</main></body></html>`;
const escape = (t) => String(t).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const readBody = (req) => new Promise((resolve) => {
  let data = '';
  req.on('data', (c) => { data += c; });
  req.on('end', () => resolve(data));
});

// The provider's own sign-in page: username and password, then the grant of what was asked.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, params } = details;
  const form = (error) => page('Sign in to the region', `${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${uid}">
<label for="username">Username</label> <input id="username" name="username" autocomplete="username">
<label for="password">Password</label> <input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit">Sign in</button></form>`);
  if (details.prompt.name === 'consent') {
    // A first-party app of the region's: what it asks is granted without a consent screen.
    const missing = details.prompt.details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [resource, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(resource, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  if (req.method !== 'POST') {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(form());
  }
  const body = new URLSearchParams(await readBody(req));
  const user = users[body.get('username')];
  if (!user || user.password !== body.get('password')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    return res.end(form('The username or password is not right.'));
  }
  let patient = null;
  if (params.launch) {
    const launch = launches.get(params.launch);
    if (!launch) {
      return provider.interactionFinished(req, res, { error: 'invalid_request', error_description: 'unknown or expired launch' });
    }
    launches.delete(params.launch);
    patient = launch.patient;
  }
  const scopes = String(params.scope || '').split(' ');
  const grant = new provider.Grant({ accountId: user.username, clientId: params.client_id });
  grant.addOIDCScope(scopes.filter((s) => oidcScopes.has(s)).join(' '));
  grant.addResourceScope(cfg.audience, scopes.filter((s) => resourceScopes.has(s)).join(' '));
  const grantId = await grant.save();
  if (patient) launchOfGrant.set(grantId, patient);
  return provider.interactionFinished(req, res, { login: { accountId: user.username }, consent: { grantId } }, { mergeWithLastSubmission: false });
}

// A partner system registers the patient it launches the app for.
async function registerLaunch(req, res) {
  if (!cfg.launch_secret || req.headers.authorization !== `Bearer ${cfg.launch_secret}`) {
    res.writeHead(401);
    return res.end();
  }
  const { patient } = JSON.parse(await readBody(req));
  const id = crypto.randomBytes(12).toString('hex');
  launches.set(id, { patient });
  res.writeHead(201, { 'content-type': 'application/json' });
  return res.end(JSON.stringify({ launch: id }));
}

const callback = provider.callback();
const server = https.createServer(
  { cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) },
  (req, res) => {
    const handle = req.url.startsWith('/interaction/') ? interaction
      : req.url === '/launch' && req.method === 'POST' ? registerLaunch : null;
    if (!handle) return callback(req, res);
    return handle(req, res).catch((e) => {
      console.error('provider:', e.message);
      if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(String(e.message));
    });
  },
);
server.listen(cfg.port, '127.0.0.1', () => console.log('ready'));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
