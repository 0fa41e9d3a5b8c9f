// The console's shell: who is signed in, the navigation, and the page the
// address's fragment names (#/nodes, #/run, …). Routes live after the `#`
// so the bastion serves one page and no path of the API is shadowed.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, call, get, post, setCsrf, whenSignedOut, type Schemas } from './api/client';
import { SignIn } from './pages/SignIn';
import { Nodes } from './pages/Nodes';
import { Run } from './pages/Run';
import { Executions } from './pages/Executions';
import { Audit } from './pages/Audit';
import { Recordings } from './pages/Recordings';
import { Account } from './pages/Account';
import { Admin } from './pages/Admin';
import { TerminalPage } from './pages/Terminal';
import './style.css';

export type Me = { session: Schemas['ConsoleSession']; user: Schemas['User'] };

/** Whether a person may run commands (org admins: the API decides; this only hides buttons). */
export function mayRun(me: Me, _project: string): boolean {
  return me.user.roles.some((r) => r.role === 'org_admin');
}
/** Whether a person manages `project` (approve, disable, enable its nodes; watch its sessions live). */
export function mayManage(me: Me, project: string): boolean {
  return me.user.roles.some((r) => r.role === 'org_admin' || (r.role === 'project_admin' && r.project === project));
}
/** Whether a person has unix logins on `project`'s nodes (a terminal). */
export function mayShell(me: Me, project: string): boolean {
  return me.user.roles.some((r) => (r.logins?.length ?? 0) > 0 && (r.role === 'org_admin' || r.project === project));
}
export function isOrgAdmin(me: Me): boolean {
  return me.user.roles.some((r) => r.role === 'org_admin');
}

function useHash(): string[] {
  const read = () => location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const [parts, setParts] = useState(read());
  useEffect(() => {
    const f = () => setParts(read());
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return parts;
}

const pages: [string, string][] = [
  ['nodes', 'Nodes'],
  ['run', 'Run'],
  ['executions', 'Executions'],
  ['audit', 'Audit'],
  ['recordings', 'Recordings'],
  ['account', 'Account'],
  ['admin', 'Admin'],
];

function App() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [notice, setNotice] = useState('');
  const route = useHash();

  async function load() {
    try {
      const session = await call<Schemas['ConsoleSession']>('GET', '/api/v1/auth/console', undefined, true);
      setCsrf(session.csrf_token);
      const user = await get<Schemas['User']>('/api/v1/whoami');
      setMe({ session, user });
    } catch (e) {
      setMe(null);
      if (e instanceof ApiError && e.status !== 401 && e.status !== 400) setNotice(e.message);
    }
  }
  useEffect(() => {
    whenSignedOut((why) => {
      setMe(null);
      setNotice(why);
    });
    load();
  }, []);

  if (me === undefined) return <p class="loading">Loading…</p>;
  if (me === null) return <SignIn notice={notice} onSignedIn={() => { setNotice(''); load(); }} />;

  const page = route[0] || 'nodes';
  async function signOut() {
    try {
      await post('/api/v1/auth/logout');
    } finally {
      setMe(null);
      setNotice('You signed out.');
    }
  }
  return (
    <div class="shell">
      <header>
        <a class="brand" href="#/nodes">Postern</a>
        <nav aria-label="Pages">
          {pages
            .filter(([p]) => p !== 'admin' || isOrgAdmin(me))
            .map(([p, label]) => (
              <a href={`#/${p}`} aria-current={page === p ? 'page' : undefined}>{label}</a>
            ))}
        </nav>
        <span class="who" data-testid="who">{me.session.user} · {me.session.org}</span>
        <button type="button" onClick={signOut}>Sign out</button>
      </header>
      <main>
        {page === 'nodes' && <Nodes me={me} />}
        {page === 'run' && <Run me={me} route={route} />}
        {page === 'executions' && <Executions me={me} route={route} />}
        {page === 'audit' && <Audit me={me} />}
        {page === 'recordings' && <Recordings me={me} route={route} />}
        {page === 'terminal' && <TerminalPage me={me} route={route} />}
        {page === 'account' && <Account me={me} />}
        {page === 'admin' && <Admin me={me} />}
      </main>
    </div>
  );
}

render(<App />, document.getElementById('app')!);
