// For org admins: users and their roles, and enrollment tokens with the
// one-line install for new nodes. (Approval is on the Nodes page.)
import { useState } from 'preact/hooks';
import { post, seg, type Schemas } from '../api/client';
import { Err, PlacePicker, useApi, usePlace } from './common';
import { When } from '../time';
import type { Me } from '../main';

export function Admin(_: { me: Me }) {
  const [users, error] = useApi<Schemas['User'][]>('/api/v1/users');
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
      <Err text={error} />
      <table data-testid="users">
        <thead><tr><th>Name</th><th>Roles</th><th>Created</th></tr></thead>
        <tbody>
          {users?.map((u) => (
            <tr>
              <td>{u.name}</td>
              <td>{u.roles.map((r) => `${r.role}${r.project ? ` on ${r.project}` : ''}${r.logins?.length ? ` (${r.logins.join(', ')})` : ''}`).join('; ')}</td>
              <td><When at={u.created_at} /></td>
            </tr>
          ))}
        </tbody>
      </table>
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
