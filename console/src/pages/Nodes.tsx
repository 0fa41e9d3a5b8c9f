// The fleet: an edge's nodes, searched and filtered by label on the server
// and paged, so an edge of 10,000 nodes stays quick.
import { useEffect, useState } from 'preact/hooks';
import { ApiError, post, query, seg, type Schemas } from '../api/client';
import { Err, Labels, PlacePicker, usePlace } from './common';
import { When } from '../time';
import { mayManage, mayShell, type Me } from '../main';

const PAGE = 50;

/** Approved, with or without its certificate yet: a node that serves. */
const active = (n: Schemas['Node']) => n.state === 'approved' || n.state === 'provisioned';

export function Nodes({ me }: { me: Me }) {
  const place = usePlace();
  const [project, , edge] = place;
  const [q, setQ] = useState('');
  const [label, setLabel] = useState('');
  const [offset, setOffset] = useState(0);
  const [nodes, setNodes] = useState<Schemas['Node'][]>([]);
  const [total, setTotal] = useState(0);
  const [error, setError] = useState('');
  const [n, setN] = useState(0);
  const admin = mayManage(me, project);

  useEffect(() => {
    if (!project || !edge) return;
    let live = true;
    const url = `/api/v1/projects/${seg(project)}/edges/${seg(edge)}/nodes${query({ q, label, limit: PAGE, offset })}`;
    fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } }).then(async (r) => {
      if (!live) return;
      if (!r.ok) {
        const b = await r.json().catch(() => null);
        setError(b?.error?.message ?? `${r.status}`);
        return;
      }
      setError('');
      setTotal(Number(r.headers.get('x-total-count') ?? 0));
      setNodes(await r.json());
    });
    return () => { live = false; };
  }, [project, edge, q, label, offset, n]);

  async function act(node: Schemas['Node'], what: 'approve' | 'disable' | 'enable') {
    try {
      const path = `/api/v1/projects/${seg(project)}/edges/${seg(edge)}/nodes/${seg(node.hostname)}/${what}`;
      // Approval names the labels the admin saw, never whatever the agent says by then.
      await post(path, what === 'approve' ? { labels: node.agent_labels_pending ?? node.agent_labels } : undefined);
      setN(n + 1);
    } catch (e) {
      setError((e as ApiError).message);
    }
  }
  return (
    <section>
      <h1>Nodes</h1>
      <PlacePicker place={place} />
      <div class="filters">
        <label>Search <input type="search" value={q} placeholder="hostname" onInput={(e) => { setOffset(0); setQ(e.currentTarget.value); }} /></label>
        <label>Label <input value={label} placeholder="key=value" onInput={(e) => { setOffset(0); setLabel(e.currentTarget.value); }} /></label>
      </div>
      <Err text={error} />
      <table data-testid="nodes">
        <thead><tr><th>Hostname</th><th>State</th><th>Reachable</th><th>Last seen</th><th>Labels</th><th>Agent</th><th>Kubernetes keys</th><th></th></tr></thead>
        <tbody>
          {nodes.map((node) => (
            <tr>
              <td class="name">{node.hostname}</td>
              <td>{node.state}{node.agent_labels_pending && <span class="warn"> (labels pending)</span>}</td>
              <td>{node.reachable ? 'yes' : 'no'}</td>
              <td><When at={node.last_seen_at} /></td>
              <td><Labels labels={node.labels} /></td>
              <td>{node.agent_version ?? ''}</td>
              <td>{node.kube_keys ? `${node.kube_keys.keys?.length ?? 0}` : ''}</td>
              <td class="actions">
                {mayShell(me, project) && active(node) && node.reachable && (
                  <a href={`#/terminal/${seg(project)}/${seg(edge)}/${seg(node.hostname)}`}>Terminal</a>
                )}
                {admin && (node.state === 'pending' || node.agent_labels_pending) && (
                  <button type="button" onClick={() => act(node, 'approve')}>Approve</button>
                )}
                {admin && active(node) && <button type="button" onClick={() => act(node, 'disable')}>Disable</button>}
                {admin && node.state === 'disabled' && <button type="button" onClick={() => act(node, 'enable')}>Enable</button>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="pager">
        {total ? `${offset + 1}–${Math.min(offset + PAGE, total)} of ${total}` : 'No nodes'}{' '}
        <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
        <button type="button" disabled={offset + PAGE >= total} onClick={() => setOffset(offset + PAGE)}>Next</button>
      </p>
    </section>
  );
}
