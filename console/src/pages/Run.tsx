// Run a command on nodes, a whole edge (cluster) or a label selector, with
// rate control; then follow it live on its execution's page.
import { useState } from 'preact/hooks';
import { post, seg, type Schemas } from '../api/client';
import { Err, PlacePicker, usePlace } from './common';
import { mayRun, type Me } from '../main';

export function Run({ me }: { me: Me; route: string[] }) {
  const place = usePlace();
  const [project, , edge] = place;
  const [targetType, setTargetType] = useState<Schemas['TargetType']>('cluster');
  const [targets, setTargets] = useState('');
  const [selector, setSelector] = useState('');
  const [command, setCommand] = useState('');
  const [concurrency, setConcurrency] = useState('');
  const [errors, setErrors] = useState('');
  const [timeout, setTimeout_] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  if (project && !mayRun(me, project)) {
    return (
      <section>
        <h1>Run a command</h1>
        <PlacePicker place={place} />
        <p class="muted">Your role in {project} lets you read, not run commands.</p>
      </section>
    );
  }
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setError('');
    const body: Schemas['ExecuteRequest'] = { command, target_type: targetType };
    if (targetType === 'node') body.target = targets.split(/[\s,]+/).filter(Boolean);
    if (targetType === 'selector') body.selector = selector;
    if (concurrency) body.max_concurrency = concurrency;
    if (errors) body.max_errors = errors;
    if (timeout) body.timeout = Number(timeout);
    try {
      const r = await post<Schemas['ExecuteResponse']>(`/cmdexec/v1/projects/${seg(project)}/edges/${seg(edge)}/execute/`, body);
      location.hash = `#/executions/${seg(project)}/${seg(edge)}/${seg(r.exec_id)}`;
    } catch (err) {
      setError((err as Error).message);
    } finally {
      setBusy(false);
    }
  }
  return (
    <section>
      <h1>Run a command</h1>
      <PlacePicker place={place} />
      <form onSubmit={submit} class="run" aria-label="Run a command">
        <fieldset>
          <legend>On</legend>
          {(['cluster', 'node', 'selector'] as const).map((t) => (
            <label><input type="radio" name="target_type" value={t} checked={targetType === t} onChange={() => setTargetType(t)} /> {t === 'cluster' ? 'every node of the edge' : t === 'node' ? 'these nodes' : 'nodes with labels'}</label>
          ))}
          {targetType === 'node' && <input aria-label="Hostnames" placeholder="web-1 web-2" value={targets} onInput={(e) => setTargets(e.currentTarget.value)} required />}
          {targetType === 'selector' && <input aria-label="Selector" placeholder="role=web,env!=dev" value={selector} onInput={(e) => setSelector(e.currentTarget.value)} required />}
        </fieldset>
        <label>Command <textarea name="command" rows={3} value={command} onInput={(e) => setCommand(e.currentTarget.value)} required /></label>
        <div class="row">
          <label>At once <input placeholder="all, 10 or 25%" value={concurrency} onInput={(e) => setConcurrency(e.currentTarget.value)} /></label>
          <label>Errors tolerated <input placeholder="no limit, 0 or 10%" value={errors} onInput={(e) => setErrors(e.currentTarget.value)} /></label>
          <label>Timeout (s) <input type="number" min={1} value={timeout} onInput={(e) => setTimeout_(e.currentTarget.value)} /></label>
        </div>
        <button type="submit" disabled={busy || !project || !edge} title={!edge ? 'Waiting for the edges of the project' : undefined}>Run</button>
        <Err text={error} />
      </form>
    </section>
  );
}
