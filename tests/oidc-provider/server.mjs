// Postern e2e test harness: a real OpenID Provider (oidc-provider 9.x) driven by a JSON config.
//   node server.mjs CONFIG.json     -> serves; prints exactly one stdout line "READY <issuer>"
//   node server.mjs --gen-key [KID] -> prints a private RS256 JWKS {"keys":[...]} for config.keys
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';

// oidc-provider prints NOTICEs with console.info (= stdout); stdout is reserved for "READY".
console.log = console.info = console.debug = console.error;

function genKey(kid = `k-${randomBytes(6).toString('hex')}`) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}

if (process.argv[2] === '--gen-key') {
  process.stdout.write(`${JSON.stringify({ keys: [genKey(process.argv[3])] })}\n`);
  process.exit(0);
}
if (!process.argv[2]) {
  console.error('usage: node server.mjs CONFIG.json | node server.mjs --gen-key [KID]');
  process.exit(2);
}

const { default: Provider } = await import('oidc-provider'); // ESM-only package
const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = cfg.users ?? [];
const keys = Array.isArray(cfg.keys) ? cfg.keys : cfg.keys?.keys ?? [genKey()];
const acrValues = [...new Set(users.map((u) => u.acr).filter(Boolean))];
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function safeEq(a, b) {
  const x = Buffer.from(String(a ?? '')); const y = Buffer.from(String(b ?? ''));
  return x.length === y.length && timingSafeEqual(x, y);
}

const configuration = {
  clients: (cfg.clients ?? []).map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too (9.x)
    ...c,
  })),
  jwks: { keys },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true }, // S256 only; plain is not supported by oidc-provider
  conformIdTokenClaims: false, // scope-granted claims go into the ID token, not only /userinfo
  claims: {
    openid: ['sub', 'auth_time', 'amr', 'acr'], // standalone claims, else only sent when requested
    email: ['email', 'email_verified', 'groups'],
    profile: ['preferred_username', 'name', 'groups'],
    groups: ['groups'],
  },
  ...(acrValues.length ? { acrValues } : {}),
  ttl: {
    AccessToken: 3600, AuthorizationCode: 120, IdToken: 3600, Interaction: 900,
    Session: 86400, Grant: 86400, RefreshToken: 86400,
  },
  clientBasedCORS: () => true,
  async findAccount(ctx, sub) {
    const u = users.find((x) => x.sub === sub);
    if (!u) return undefined;
    return {
      accountId: u.sub,
      async claims() {
        return {
          sub: u.sub,
          email: u.email,
          email_verified: u.email_verified ?? true,
          groups: u.groups ?? [],
          preferred_username: u.username,
          name: u.name ?? u.username,
        };
      },
    };
  },
  // No consent screen: every requested OIDC scope/claim is granted automatically.
  async loadExistingGrant(ctx) {
    const { oidc } = ctx;
    const { Grant } = oidc.provider;
    const accountId = oidc.session.accountId;
    const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
    let grant = grantId ? await Grant.find(grantId) : undefined;
    if (!grant || grant.accountId !== accountId) {
      grant = new Grant({ accountId, clientId: oidc.client.clientId });
    }
    grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
    grant.addOIDCClaims([...oidc.requestParamClaims]);
    await grant.save();
    return grant;
  },
};

function loginPage(res, uid, status, { error, username } = {}) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><title>Sign in</title></head><body>
<h1>Sign in</h1>${error ? `<p class="error" id="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<input type="text" name="username" value="${esc(username)}" autofocus>
<input type="password" name="password">
<button type="submit">Sign in</button>
</form></body></html>`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65536) throw new Error('body too large');
  }
  return new URLSearchParams(body);
}

async function interactions(provider, req, res) {
  const url = new URL(req.url, 'http://x');
  const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!m) return false;
  const [, uid, login] = m;
  try {
    const details = await provider.interactionDetails(req, res); // needs the _interaction cookie
    if (details.uid !== uid) throw new Error('interaction uid mismatch');
    if (details.prompt.name === 'consent' && req.method === 'GET') { // only with prompt=consent
      const { Grant } = provider;
      const grant = (details.grantId && await Grant.find(details.grantId))
        || new Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope);
      return await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }), true;
    }
    if (details.prompt.name !== 'login') {
      throw new Error(`unexpected prompt ${details.prompt.name} (${details.prompt.reasons})`);
    }
    if (req.method === 'GET' && !login) return loginPage(res, uid, 200), true;
    if (req.method !== 'POST' || !login) return false;
    const form = await readForm(req);
    const username = form.get('username');
    const user = users.find((u) => u.username === username);
    if (!user || !safeEq(user.password, form.get('password'))) {
      console.error(`login failed for ${JSON.stringify(username)}`);
      return loginPage(res, uid, 401, { error: 'Invalid username or password.', username }), true;
    }
    const result = {
      login: { accountId: user.sub, amr: user.amr ?? ['pwd'], ...(user.acr ? { acr: user.acr } : {}) },
    };
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false }); // 303
  } catch (err) {
    const msg = `interaction error: ${err.message} ${err.error_description ?? ''}`;
    console.error(msg);
    res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(`${msg}\n`);
  }
  return true;
}

const server = http.createServer();
let provider; let koa;
server.on('request', async (req, res) => {
  if (!provider) return res.writeHead(503).end();
  if (!(await interactions(provider, req, res))) koa(req, res);
});
const host = cfg.issuer ? new URL(cfg.issuer).hostname : '127.0.0.1';
const port = cfg.port ?? (cfg.issuer ? Number(new URL(cfg.issuer).port) : 0);
server.listen(port, host.replace(/^\[|\]$/g, ''), () => {
  const issuer = cfg.issuer ?? `http://127.0.0.1:${server.address().port}`;
  provider = new Provider(issuer, configuration);
  koa = provider.callback();
  for (const ev of ['server_error', 'authorization.error', 'grant.error', 'end_session.error']) {
    provider.on(ev, (ctx, err) => console.error(`${ev}: ${err.message} ${err.error_description ?? ''}`
      + `${err.cause ? ` (cause: ${err.cause.message})` : ''}`));
  }
  process.stdout.write(`READY ${issuer}\n`);
});

function shutdown(sig) {
  console.error(`${sig}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
