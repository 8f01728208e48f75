// A token check in front of a FHIR server that requires one, for the gateway's SMART Backend
// Services test: every request must carry a bearer JWT from the provider (signature by its
// published keys, found by discovery; issuer; audience; a system/ scope), or it is answered
// 401 with an OperationOutcome. Accepted requests are passed to the upstream server as they
// are. GET /__tokens tells how many distinct tokens were accepted (the gateway should reuse
// one until shortly before it expires), and the trace ids of the traceparents received.
//
//   NODE_EXTRA_CA_CERTS=ca.pem node token-proxy.mjs CONFIG.json
//
// CONFIG: {port, upstream, issuer, audience, scope}. Prints "ready" when listening.
import fs from 'node:fs';
import http from 'node:http';
import * as jose from 'jose';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const discovery = await (await fetch(`${cfg.issuer}/.well-known/openid-configuration`)).json();
const keys = jose.createRemoteJWKSet(new URL(discovery.jwks_uri));
const upstream = new URL(cfg.upstream);
const seen = new Set();
const traces = new Set();
let refused = 0;

function deny(res, why) {
  console.error(`token-proxy: refused: ${why}`);
  refused += 1;
  res.writeHead(401, { 'content-type': 'application/fhir+json', 'www-authenticate': 'Bearer' });
  res.end(JSON.stringify({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login', diagnostics: why }] }));
}

http.createServer(async (req, res) => {
  if (req.url === '/__tokens') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ accepted: seen.size, refused, traces: [...traces] }));
  }
  const token = (req.headers.authorization || '').replace(/^Bearer /i, '');
  if (!token) return deny(res, 'no bearer token');
  try {
    const { payload } = await jose.jwtVerify(token, keys, { issuer: cfg.issuer, audience: cfg.audience });
    if (!String(payload.scope || '').split(' ').includes(cfg.scope)) return deny(res, `scope ${cfg.scope} is required`);
  } catch (e) {
    return deny(res, `token refused: ${e.code || e.message}`);
  }
  seen.add(token);
  const parent = req.headers.traceparent;
  if (parent) traces.add(parent.split('-')[1]);
  const forward = http.request(
    { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: { ...req.headers, host: upstream.host } },
    (up) => { res.writeHead(up.statusCode, up.headers); up.pipe(res); },
  );
  forward.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
  req.pipe(forward);
}).listen(cfg.port, '127.0.0.1', () => console.log('ready'));
