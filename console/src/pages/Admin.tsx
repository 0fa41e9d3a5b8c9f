// For org admins: users (roles, sessions, disable), the org's SSO providers
// and what their groups grant, and enrollment tokens with the one-line
// install for new nodes. (Approving and disabling nodes is on the Nodes page.)
import { useState } from 'preact/hooks';
import { del, post, put, seg, type Schemas } from '../api/client';
import { Err, PlacePicker, useApi, usePlace } from './common';
import { When } from '../time';
import type { Me } from '../main';

const roles: Schemas['Role'][] = ['read_only', 'project_member', 'project_admin', 'org_admin'];

function describe(r: { role: string; project?: string | null; logins?: string[] | null }): string {
  return `${r.role}${r.project ? ` on ${r.project}` : ''}${r.logins?.length ? ` (${r.logins.join(', ')})` : ''}`;
}

/** A role form: which role, on which project, with which unix logins. */
function RoleForm({ label, onSubmit }: { label: string; onSubmit: (b: Schemas['RoleBinding']) => Promise<void> }) {
  const [role, setRole] = useState<Schemas['Role']>('read_only');
  const [project, setProject] = useState('');
  const [logins, setLogins] = useState('');
  return (
    <form class="row" aria-label={label} onSubmit={async (e) => {
      e.preventDefault();
      const b: Schemas['RoleBinding'] = { role };
      if (role !== 'org_admin') b.project = project;
      const l = logins.split(/[\s,]+/).filter(Boolean);
      if (l.length) b.logins = l;
      await onSubmit(b);
    }}>
      <label>Role <select value={role} onChange={(e) => setRole(e.currentTarget.value as Schemas['Role'])}>{roles.map((r) => <option value={r}>{r}</option>)}</select></label>
      {role !== 'org_admin' && <label>Project <input value={project} onInput={(e) => setProject(e.currentTarget.value)} required /></label>}
      <label>Logins <input value={logins} placeholder="root deploy" onInput={(e) => setLogins(e.currentTarget.value)} /></label>
      <button type="submit">{label}</button>
    </form>
  );
}

function UserRow({ u, reload, setError }: { u: Schemas['User']; reload: () => void; setError: (s: string) => void }) {
  const [open, setOpen] = useState(false);
  const [sessions, sessionsError, reloadSessions] = useApi<Schemas['SessionInfo'][]>(open ? `/api/v1/users/${seg(u.name)}/sessions` : null);
  const act = async (f: () => Promise<unknown>) => {
    try {
      setError('');
      await f();
    } catch (e) {
      setError((e as Error).message);
    }
    reload();
    reloadSessions();
  };
  return (
    <>
      <tr>
        <td class="name">{u.name}</td>
        <td>{u.roles.map((r) => (
          <span class="label">{describe(r)}{' '}
            <button type="button" aria-label={`Remove ${describe(r)} from ${u.name}`} onClick={() => act(() => del(`/api/v1/users/${seg(u.name)}/roles/${seg(r.project ?? 'org')}`))}>×</button>
          </span>
        ))}</td>
        <td><When at={u.created_at} /></td>
        <td><button type="button" aria-expanded={open} onClick={() => setOpen(!open)}>{open ? 'Close' : 'Manage'}</button></td>
      </tr>
      {open && (
        <tr><td colSpan={4}>
          <RoleForm label={`Give ${u.name} a role`} onSubmit={(b) => act(() => put(`/api/v1/users/${seg(u.name)}/roles`, b))} />
          <h3>Sessions</h3>
          <Err text={sessionsError} />
          <ul>{sessions?.map((s) => <li>{s.method}{s.mfa ? ' + MFA' : ''} from {s.source_ip ?? '?'}, <When at={s.created_at} /> to <When at={s.expires_at} /></li>)}</ul>
          <button type="button" onClick={() => act(() => del(`/api/v1/users/${seg(u.name)}/sessions`))}>End {u.name}'s sessions</button>{' '}
          <button type="button" onClick={() => act(() => post(`/api/v1/users/${seg(u.name)}/disable`))}>Disable</button>{' '}
          <button type="button" onClick={() => act(() => post(`/api/v1/users/${seg(u.name)}/enable`))}>Enable</button>
        </td></tr>
      )}
    </>
  );
}

function Provider({ p }: { p: Schemas['OidcProvider'] }) {
  const [groups, error, reload] = useApi<Schemas['GroupRole'][]>(`/api/v1/sso/providers/${seg(p.name)}/groups`);
  const [group, setGroup] = useState('');
  const [actError, setActError] = useState('');
  const act = async (f: () => Promise<unknown>) => {
    try {
      setActError('');
      await f();
    } catch (e) {
      setActError((e as Error).message);
    }
    reload();
  };
  return (
    <article class="node-output">
      <h3>{p.name} <span class="muted">{p.issuer}</span></h3>
      <Err text={error || actError} />
      <table>
        <thead><tr><th>Group</th><th>Grants</th><th></th></tr></thead>
        <tbody>
          {groups?.map((g) => (
            <tr>
              <td>{g.group}</td>
              <td>{describe(g)}</td>
              <td><button type="button" aria-label={`Remove ${g.group}'s role`} onClick={() => act(() => del(`/api/v1/sso/providers/${seg(p.name)}/groups/${seg(g.group)}/roles/${seg(g.project ?? 'org')}`))}>×</button></td>
            </tr>
          ))}
        </tbody>
      </table>
      <label>Group <input value={group} onInput={(e) => setGroup(e.currentTarget.value)} /></label>
      <RoleForm label="Map the group" onSubmit={(b) => act(() => put(`/api/v1/sso/providers/${seg(p.name)}/groups/${seg(group)}/roles`, b))} />
    </article>
  );
}

export function Admin(_: { me: Me }) {
  const [users, error, reload] = useApi<Schemas['User'][]>('/api/v1/users');
  const [providers, providersError] = useApi<Schemas['OidcProvider'][]>('/api/v1/sso/providers');
  const [userError, setUserError] = useState('');
  const place = usePlace();
  const [project, , edge] = place;
  const [token, setToken] = useState<Schemas['EnrollmentTokenCreated'] | null>(null);
  const [tokenError, setTokenError] = useState('');
  async function mint() {
    try {
      setToken(await post(`/api/v1/projects/${seg(project)}/edges/${seg(edge)}/enrollment-tokens`, { max_uses: 1 }));
    } catch (e) {
      setTokenError((e as Error).message);
    }
  }
  return (
    <section>
      <h1>Admin</h1>
      <h2>Users</h2>
      <Err text={error || userError} />
      <table data-testid="users">
        <thead><tr><th>Name</th><th>Roles</th><th>Created</th><th></th></tr></thead>
        <tbody>{users?.map((u) => <UserRow u={u} reload={reload} setError={setUserError} />)}</tbody>
      </table>
      <h2>Single sign-on</h2>
      <Err text={providersError} />
      {providers?.length === 0 && <p class="muted">No provider: add one with postern sso or PUT /api/v1/sso/providers/NAME.</p>}
      {providers?.map((p) => <Provider p={p} />)}
      <h2>Add nodes</h2>
      <PlacePicker place={place} />
      <button type="button" onClick={mint}>New enrollment token</button>
      <Err text={tokenError} />
      {token && (
        <div data-testid="enrollment">
          <p>Valid until <When at={token.expires_at} />. On the new node, as root:</p>
          <pre>{token.install_command ?? token.join_command}</pre>
        </div>
      )}
    </section>
  );
}
