// Pieces every page uses: loading a value from the API with its error
// shown, and choosing a project and edge.
import { useEffect, useState } from 'preact/hooks';
import { get, seg, type Schemas } from '../api/client';

export function useApi<T>(path: string | null, deps: unknown[] = []): [T | undefined, string, () => void] {
  const [value, setValue] = useState<T | undefined>(undefined);
  const [error, setError] = useState('');
  const [n, setN] = useState(0);
  useEffect(() => {
    if (!path) return;
    let live = true;
    setError('');
    get<T>(path).then(
      (v) => live && setValue(v),
      (e) => live && setError((e as Error).message),
    );
    return () => { live = false; };
  }, [path, n, ...deps]);
  return [value, error, () => setN(n + 1)];
}

export function Err({ text }: { text: string }) {
  return text ? <p class="error" role="alert">{text}</p> : null;
}

export function usePlace(): [string, (p: string) => void, string, (e: string) => void, Schemas['Project'][], Schemas['Edge'][]] {
  const [projects] = useApi<Schemas['Project'][]>('/api/v1/projects');
  const [project, setProject] = useState(localStorage.getItem('project') ?? '');
  const [edge, setEdge] = useState(localStorage.getItem('edge') ?? '');
  const p = project || projects?.[0]?.name || '';
  const [edges] = useApi<Schemas['Edge'][]>(p ? `/api/v1/projects/${seg(p)}/edges` : null);
  const e = edges?.some((x) => x.name === edge) ? edge : edges?.[0]?.name ?? '';
  return [
    p,
    (v) => { localStorage.setItem('project', v); setProject(v); },
    e,
    (v) => { localStorage.setItem('edge', v); setEdge(v); },
    projects ?? [],
    edges ?? [],
  ];
}

export function PlacePicker({ place }: { place: ReturnType<typeof usePlace> }) {
  const [project, setProject, edge, setEdge, projects, edges] = place;
  return (
    <div class="place">
      <label>Project{' '}
        <select aria-label="Project" value={project} onChange={(e) => setProject(e.currentTarget.value)}>
          {projects.map((p) => <option value={p.name}>{p.name}</option>)}
        </select>
      </label>
      <label>Edge{' '}
        <select aria-label="Edge" value={edge} onChange={(e) => setEdge(e.currentTarget.value)}>
          {edges.map((x) => <option value={x.name}>{x.name}</option>)}
        </select>
      </label>
    </div>
  );
}

export function Labels({ labels }: { labels?: Record<string, string> }) {
  const entries = Object.entries(labels ?? {});
  if (!entries.length) return <span class="muted">none</span>;
  return <>{entries.map(([k, v]) => <span class="label">{k}={v}</span>)}</>;
}
