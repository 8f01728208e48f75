// A real OpenID provider for the gateway's tests: panva's oidc-provider (the certified
// OpenID Connect implementation from npm), over HTTPS, issuing JWT access tokens by the
// client-credentials grant (clients authenticate with a secret, or with a private-key JWT as
// SMART Backend Services do). It makes a fresh signing key at each start, with the key id it
// is given, so a restart with another key id is a key rotation.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {issuer, port, cert, key, kid, audience, resource_scopes,
//          clients: [{client_id, client_secret? | jwks?, scope, claims?}]}
// `claims` are added to the client's access tokens (the user context a region's provider
// vouches for: role, organisation, purpose of use, patient). Prints "ready" when listening.
import fs from 'node:fs';
import https from 'node:https';
import * as jose from 'jose';
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

const provider = new Provider(cfg.issuer, {
  clients,
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
  extraTokenClaims: (ctx, token) => claimsOf[token.clientId] || {},
  // The SMART scopes the resource server grants, as the provider advertises them.
  scopes: ['openid', 'offline_access', ...cfg.resource_scopes.split(' ')],
  clientAuthMethods: ['client_secret_basic', 'private_key_jwt'],
  enabledJWA: { clientAuthSigningAlgValues: ['ES256'] },
});

const server = https.createServer(
  { cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) },
  provider.callback(),
);
server.listen(cfg.port, '127.0.0.1', () => console.log('ready'));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
