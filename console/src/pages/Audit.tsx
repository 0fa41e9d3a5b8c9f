// The audit log, newest first, with the API's filters; org admins can walk
// the hash chain from here.
import { useState } from 'preact/hooks';
import { get, query, type Schemas } from '../api/client';
import { Err, useApi } from './common';
import { When } from '../time';
import { isOrgAdmin, type Me } from '../main';

export function Audit({ me }: { me: Me }) {
  const [f, setF] = useState({ action: '', actor: '', outcome: '', since: '', until: '' });
  const [applied, setApplied] = useState(f);
  const [offset, setOffset] = useState(0);
  const toIso = (v: string) => (v ? new Date(v).toISOString() : undefined);
  const [page, error] = useApi<Schemas['AuditPage']>(
    `/api/v1/audit${query({ limit: 50, offset, action: applied.action, actor: applied.actor, outcome: applied.outcome, since: toIso(applied.since), until: toIso(applied.until) })}`,
  );
  const [chain, setChain] = useState('');
  async function verify() {
    setChain('checking…');
    try {
      const r = await get<Schemas['AuditVerified']>('/api/v1/audit/verify');
      setChain(r.ok ? `The chain holds (${r.checked} entries).` : `The chain is broken: ${r.message ?? ''}`);
    } catch (e) {
      setChain((e as Error).message);
    }
  }
  const field = (k: keyof typeof f, label: string, type = 'text', ph = '') => (
    <label>{label} <input type={type} placeholder={ph} value={f[k]} onInput={(e) => setF({ ...f, [k]: e.currentTarget.value })} /></label>
  );
  return (
    <section>
      <h1>Audit log</h1>
      <form class="filters" onSubmit={(e) => { e.preventDefault(); setOffset(0); setApplied(f); }} aria-label="Filter the audit log">
        {field('action', 'Action', 'text', 'cmdexec.*')}
        {field('actor', 'Actor')}
        {field('outcome', 'Outcome', 'text', 'ok, denied…')}
        {field('since', 'Since', 'datetime-local')}
        {field('until', 'Until', 'datetime-local')}
        <button type="submit">Filter</button>
      </form>
      {isOrgAdmin(me) && <p><button type="button" onClick={verify}>Verify the chain</button> <span data-testid="chain">{chain}</span></p>}
      <Err text={error} />
      <table data-testid="audit">
        <thead><tr><th>When</th><th>Actor</th><th>Action</th><th>Outcome</th><th>Targets</th><th>Source</th></tr></thead>
        <tbody>
          {page?.entries.map((a) => (
            <tr>
              <td><When at={a.at} /></td>
              <td>{a.actor ?? ''}</td>
              <td><code>{a.action}</code></td>
              <td>{a.outcome}</td>
              <td>{a.targets.join(', ')}</td>
              <td>{a.source_ip ?? ''}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="pager">
        {page && `${page.total} entries`}{' '}
        <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - 50))}>Newer</button>
        <button type="button" disabled={!page || page.entries.length < 50} onClick={() => setOffset(offset + 50)}>Older</button>
      </p>
    </section>
  );
}
