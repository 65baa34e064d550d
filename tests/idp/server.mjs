// A real OpenID provider for the tunnelgate tests, built on the `oidc-provider` package.
//
// It listens on 127.0.0.1 with a port chosen by the kernel and prints exactly one JSON line,
// {"issuer": "http://127.0.0.1:PORT"}, on stdout once it accepts connections; the test fixture
// waits for that line instead of polling. Clients and accounts come from a JSON file named by the
// TEST_IDP_CONFIG_FILE environment variable:
//
//   {
//     "clients": [{"client_id": "...", "client_secret": "...", "redirect_uris": ["..."]}],
//     "accounts": [{"sub": "...", "email": "...", "email_verified": true,
//                   "name": "...", "groups": ["..."]}]
//   }
//
// The login page is the package's development interaction: a form whose `login` field is the
// account's `sub` (any password). Unknown login names are refused with 403 so a test can never
// sign in as someone it did not configure. PKCE with S256 is required of every client, and the
// ID token carries the scope-requested claims (email, email_verified, name, groups) so a relying
// party can read them without calling userinfo.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { parse as parseQuery } from 'node:querystring';

import Provider from 'oidc-provider';

const MAX_FORM_BYTES = 16 * 1024;

function loadConfig() {
  const path = process.env.TEST_IDP_CONFIG_FILE;
  if (!path) {
    throw new Error('TEST_IDP_CONFIG_FILE must name a JSON file with "clients" and "accounts"');
  }
  const config = JSON.parse(readFileSync(path, 'utf8'));
  if (!Array.isArray(config.clients) || !Array.isArray(config.accounts)) {
    throw new Error(`${path}: expected "clients" and "accounts" arrays`);
  }
  return config;
}

function accountDirectory(accounts) {
  const bySub = new Map();
  for (const [index, account] of accounts.entries()) {
    if (typeof account.sub !== 'string' || account.sub === '') {
      throw new Error(`accounts[${index}].sub: expected a non-empty string`);
    }
    bySub.set(account.sub, account);
  }
  return bySub;
}

function signingJwks() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' }] };
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(parseQuery(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
}

// Refuses a login form submission whose login name is not a configured account. The parsed
// form is handed on as ctx.request.body, which the provider reads when the stream is consumed.
function refuseUnknownLogins(accounts) {
  return async (ctx, next) => {
    if (ctx.method === 'POST' && /^\/interaction\/[^/]+$/.test(ctx.path)
        && ctx.is('application/x-www-form-urlencoded')) {
      const form = await readForm(ctx.req);
      ctx.request.body = form;
      if (form.prompt === 'login' && !accounts.has(form.login)) {
        ctx.status = 403;
        ctx.type = 'text/plain';
        ctx.body = 'unknown login name\n';
        return;
      }
    }
    await next();
  };
}

async function main() {
  const config = loadConfig();
  const accounts = accountDirectory(config.accounts);

  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const issuer = `http://127.0.0.1:${server.address().port}`;

  const provider = new Provider(issuer, {
    clients: config.clients.map((client) => ({
      client_id: client.client_id,
      client_secret: client.client_secret,
      redirect_uris: client.redirect_uris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_basic',
    })),
    async findAccount(ctx, sub) {
      const account = accounts.get(sub);
      if (!account) {
        return undefined;
      }
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: account.email,
            email_verified: account.email_verified ?? false,
            name: account.name,
            groups: account.groups ?? [],
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    jwks: signingJwks(),
  });
  provider.use(refuseUnknownLogins(accounts));

  server.on('request', provider.callback());

  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
}

main().catch((error) => {
  process.stderr.write(`test identity provider failed to start: ${error.stack ?? error}\n`);
  process.exit(1);
});
