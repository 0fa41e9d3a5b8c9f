// One's own: a kubeconfig to download, one's sessions (end any, or all).
import { useState } from 'preact/hooks';
import { del, seg, type Schemas } from '../api/client';
import { Err, useApi, usePlace, PlacePicker } from './common';
import { When } from '../time';
import type { Me } from '../main';

export function Account({ me }: { me: Me }) {
  const place = usePlace();
  const [project] = place;
  const [sessions, error, reload] = useApi<Schemas['SessionInfo'][]>(`/api/v1/users/${seg(me.session.user)}/sessions`);
  const [actionError, setActionError] = useState('');
  async function endAll() {
    try {
      await del(`/api/v1/users/${seg(me.session.user)}/sessions`);
    } catch (e) {
      setActionError((e as Error).message);
    }
    reload();
  }
  return (
    <section>
      <h1>Account</h1>
      <p>Signed in as <strong>{me.session.user}</strong> ({me.session.method}{me.session.mfa ? ', MFA' : ''}) until <When at={me.session.expires_at} />; idle sessions end after {Math.round(me.session.idle_timeout_seconds / 60)} minutes.</p>
      <h2>Your roles</h2>
      <ul data-testid="roles">
        {me.user.roles.map((r) => (
          <li>{r.role}{r.project ? ` on ${r.project}` : ''}{r.logins?.length ? `, logs in as ${r.logins.join(', ')}` : ''}</li>
        ))}
      </ul>
      <h2>Kubernetes</h2>
      <PlacePicker place={place} />
      <p><a download="kubeconfig" href={`/api/v1/kubeconfig?project=${seg(project)}`} data-testid="kubeconfig">Download the kubeconfig of {project}</a> (it holds no secret: kubectl asks <code>postern kube credentials</code>).</p>
      <h2>Your sessions</h2>
      <Err text={error || actionError} />
      <table data-testid="sessions">
        <thead><tr><th>Started</th><th>Method</th><th>From</th><th>Ends</th></tr></thead>
        <tbody>
          {sessions?.map((s) => (
            <tr>
              <td><When at={s.created_at} />{s.id === me.session.id ? ' (this one)' : ''}</td>
              <td>{s.method}{s.mfa ? ' + MFA' : ''}</td>
              <td>{s.source_ip ?? ''}</td>
              <td><When at={s.expires_at} /></td>
            </tr>
          ))}
        </tbody>
      </table>
      <button type="button" onClick={endAll}>Log out everywhere</button>
    </section>
  );
}
