// Executions: a project's history, and one execution followed live through
// its event stream (server-sent events), per node, with a cancel button.
import { useEffect, useRef, useState } from 'preact/hooks';
import { post, query, seg, type Schemas } from '../api/client';
import { Err, PlacePicker, useApi, usePlace } from './common';
import { When } from '../time';
import { mayRun, type Me } from '../main';

export function Executions({ me, route }: { me: Me; route: string[] }) {
  if (route.length >= 4) return <Execution me={me} project={route[1]} edge={route[2]} id={route[3]} />;
  return <History />;
}

function History() {
  const place = usePlace();
  const [project] = place;
  const [offset, setOffset] = useState(0);
  const [page, error] = useApi<Schemas['History']>(project ? `/cmdexec/v1/projects/${seg(project)}/history/${query({ limit: 25, offset })}` : null);
  return (
    <section>
      <h1>Executions</h1>
      <PlacePicker place={place} />
      <Err text={error} />
      <table data-testid="history">
        <thead><tr><th>Submitted</th><th>By</th><th>Command</th><th>Status</th><th>Nodes</th></tr></thead>
        <tbody>
          {page?.executions.map((x) => (
            <tr>
              <td><a href={`#/executions/${seg(project)}/${seg(x.edge_id)}/${seg(x.exec_id)}`}><When at={x.created_at} /></a></td>
              <td>{x.username}</td>
              <td><code>{x.command}</code></td>
              <td>{x.status}</td>
              <td>{x.nodes_total}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="pager">
        <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - 25))}>Previous</button>
        <button type="button" disabled={!page || offset + 25 >= page.total} onClick={() => setOffset(offset + 25)}>Next</button>
      </p>
    </section>
  );
}

type NodeView = { status: string; out: string; exit?: number | null };

function decode(data: string, encoding: string): string {
  if (encoding !== 'base64') return data;
  try {
    return new TextDecoder().decode(Uint8Array.from(atob(data), (c) => c.charCodeAt(0)));
  } catch {
    return '';
  }
}

function Execution({ me, project, edge, id }: { me: Me; project: string; edge: string; id: string }) {
  const base = `/cmdexec/v1/projects/${seg(project)}/edges/${seg(edge)}/execution/${seg(id)}`;
  const [exec, error, reload] = useApi<Schemas['Execution']>(`${base}/`);
  const [nodes, setNodes] = useState<Record<string, NodeView>>({});
  const [state, setState] = useState('connecting');
  const [cancelError, setCancelError] = useState('');
  const source = useRef<EventSource | null>(null);

  useEffect(() => {
    const es = new EventSource(`${base}/events`, { withCredentials: true });
    source.current = es;
    const upd = (h: string, f: (n: NodeView) => NodeView) =>
      setNodes((all) => ({ ...all, [h]: f(all[h] ?? { status: 'pending', out: '' }) }));
    es.onopen = () => setState('live');
    es.addEventListener('node_started', (e) => {
      const d = JSON.parse((e as MessageEvent).data);
      upd(d.hostname, (n) => ({ ...n, status: 'running' }));
    });
    es.addEventListener('output', (e) => {
      const d = JSON.parse((e as MessageEvent).data);
      upd(d.hostname, (n) => ({ ...n, out: (n.out + decode(d.data, d.encoding)).slice(-65536) }));
    });
    es.addEventListener('node_finished', (e) => {
      const d = JSON.parse((e as MessageEvent).data);
      upd(d.hostname, (n) => ({ ...n, status: d.status, exit: d.exit_code }));
    });
    es.addEventListener('execution_finished', () => {
      setState('finished');
      es.close();
      reload();
    });
    es.onerror = () => setState((s) => (s === 'finished' ? s : 'reconnecting'));
    return () => es.close();
  }, [base]);

  async function cancel() {
    try {
      await post(`${base}/cancel`);
    } catch (e) {
      setCancelError((e as Error).message);
    }
  }
  const hosts = Array.from(new Set([...(exec?.nodes.map((n) => n.hostname) ?? []), ...Object.keys(nodes)])).sort();
  return (
    <section>
      <h1>Execution <code>{id}</code></h1>
      <Err text={error} />
      {exec && (
        <p>
          <code>{exec.command}</code> by {exec.username}, <When at={exec.created_at} />: <strong data-testid="exec-status">{exec.status}</strong>{' '}
          <span class="muted">(stream {state})</span>{' '}
          {mayRun(me, project) && !['succeeded', 'failed', 'cancelled', 'finished'].includes(exec.status) && state !== 'finished' && (
            <button type="button" onClick={cancel}>Cancel</button>
          )}
        </p>
      )}
      <Err text={cancelError} />
      <div data-testid="exec-nodes">
        {hosts.map((h) => {
          const live = nodes[h];
          const stored = exec?.nodes.find((n) => n.hostname === h);
          const out = live?.out || (stored ? decode(stored.stdout, stored.stdout_encoding) + decode(stored.stderr, stored.stderr_encoding) : '');
          const status = (state === 'finished' && stored?.status) || live?.status || stored?.status || 'pending';
          return (
            <article class="node-output" data-host={h}>
              <h2>{h} <span class={`status ${status}`}>{status}</span></h2>
              <pre>{out}</pre>
            </article>
          );
        })}
      </div>
    </section>
  );
}
