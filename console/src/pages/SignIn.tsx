// Sign-in: a local user's password and TOTP code, or an org's SSO provider
// (the bastion sends the browser there and back, see /auth/sso/console).
import { useState } from 'preact/hooks';
import { call, query } from '../api/client';

export function SignIn({ notice, onSignedIn }: { notice: string; onSignedIn: () => void }) {
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const [code, setCode] = useState('');
  const [error, setError] = useState('');
  const [org, setOrg] = useState('');
  const [provider, setProvider] = useState('');
  const [busy, setBusy] = useState(false);

  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      await call('POST', '/api/v1/auth/console', { name, password, ...(code ? { code } : {}) }, true);
      onSignedIn();
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="signin">
      <h1>Postern</h1>
      {notice && <p class="notice" role="status">{notice}</p>}
      <form onSubmit={submit} aria-label="Sign in with a password">
        <label>User <input name="name" autocomplete="username" value={name} onInput={(e) => setName(e.currentTarget.value)} required /></label>
        <label>Password <input name="password" type="password" autocomplete="current-password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} required /></label>
        <label>Code <input name="code" inputMode="numeric" autocomplete="one-time-code" placeholder="TOTP or recovery code, if enrolled" value={code} onInput={(e) => setCode(e.currentTarget.value)} /></label>
        <button type="submit" disabled={busy}>Sign in</button>
        {error && <p class="error" role="alert">{error}</p>}
      </form>
      <form method="get" action={`/api/v1/auth/sso/console`} aria-label="Sign in with SSO"
        onSubmit={(e) => { e.preventDefault(); location.assign(`/api/v1/auth/sso/console${query({ org, provider })}`); }}>
        <h2>Single sign-on</h2>
        <label>Org <input name="org" value={org} onInput={(e) => setOrg(e.currentTarget.value)} required /></label>
        <label>Provider <input name="provider" value={provider} onInput={(e) => setProvider(e.currentTarget.value)} required /></label>
        <button type="submit">Sign in with SSO</button>
      </form>
    </main>
  );
}
