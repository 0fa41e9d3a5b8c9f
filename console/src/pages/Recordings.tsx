// Recordings: the list, and a player that reads the cast in ranges (HTTP
// Range), never the whole file at once, and renders it with xterm.js.
import { useEffect, useRef, useState } from 'preact/hooks';
import { query, seg, type Schemas } from '../api/client';
import { Err, useApi } from './common';
import { When } from '../time';
import { mayManage, type Me } from '../main';

export function Recordings({ me, route }: { me: Me; route: string[] }) {
  if (route[1] && route[2] === 'live') return <Live id={route[1]} />;
  if (route[1]) return <Player id={route[1]} />;
  return <List me={me} />;
}

function List({ me }: { me: Me }) {
  const [offset, setOffset] = useState(0);
  const [page, error] = useApi<Schemas['RecordingPage']>(`/api/v1/recordings${query({ limit: 25, offset })}`);
  return (
    <section>
      <h1>Recordings</h1>
      <Err text={error} />
      <table data-testid="recordings">
        <thead><tr><th>Started</th><th>User</th><th>Node</th><th>Login</th><th>Kind</th><th>Status</th></tr></thead>
        <tbody>
          {page?.recordings.map((r) => (
            <tr>
              <td><a href={`#/recordings/${seg(r.id)}`}><When at={r.started_at} /></a></td>
              <td>{r.user}</td>
              <td>{r.node}</td>
              <td>{r.login}</td>
              <td>{r.kind}{r.command ? `: ${r.command}` : ''}</td>
              <td>{r.status}{!r.ended_at && mayManage(me, r.project) && <> <a href={`#/recordings/${seg(r.id)}/live`}>Watch live</a></>}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p class="pager">
        <button type="button" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - 25))}>Newer</button>
        <button type="button" disabled={!page || offset + 25 >= page.total} onClick={() => setOffset(offset + 25)}>Older</button>
      </p>
    </section>
  );
}

const CHUNK = 256 * 1024;

/** Reads a cast's lines in order, a range at a time. */
async function* castLines(url: string, signal: AbortSignal): AsyncGenerator<string> {
  let at = 0;
  let rest = '';
  const dec = new TextDecoder();
  for (;;) {
    const r = await fetch(url, { credentials: 'same-origin', headers: { Range: `bytes=${at}-${at + CHUNK - 1}` }, signal });
    if (r.status === 416) break;
    if (!r.ok) throw new Error(`the cast could not be read (${r.status})`);
    const buf = new Uint8Array(await r.arrayBuffer());
    at += buf.length;
    rest += dec.decode(buf, { stream: true });
    const lines = rest.split('\n');
    rest = lines.pop() ?? '';
    for (const l of lines) if (l) yield l;
    const total = Number((r.headers.get('content-range') ?? '').split('/')[1] ?? 0);
    if (r.status === 200 || buf.length === 0 || (total && at >= total)) break;
  }
  if (rest) yield rest;
}

function Player({ id }: { id: string }) {
  const [rec, error] = useApi<Schemas['RecordingView']>(`/api/v1/recordings/${seg(id)}`);
  const host = useRef<HTMLDivElement>(null);
  const [speed, setSpeed] = useState(1);
  const [idleCap, setIdleCap] = useState(2);
  const [seekTo, setSeekTo] = useState<number | null>(null);
  const [at, setAt] = useState(0);
  const [run, setRun] = useState(0);
  const [state, setState] = useState('loading');
  const [playError, setPlayError] = useState('');
  const opts = useRef({ speed, idleCap, seekTo });
  opts.current = { speed, idleCap, seekTo };

  useEffect(() => {
    if (!rec || !host.current) return;
    const abort = new AbortController();
    let term: import('@xterm/xterm').Terminal | undefined;
    (async () => {
      const { Terminal } = await import('@xterm/xterm');
      await import('@xterm/xterm/css/xterm.css');
      term = new Terminal({ cols: rec.width || 80, rows: rec.height || 24, disableStdin: true, convertEol: false });
      term.open(host.current!);
      (window as any).__posternPlayer = term;
      setState('playing');
      let clock = 0;
      let first = true;
      const seek = opts.current.seekTo;
      for await (const line of castLines(`/api/v1/recordings/${seg(id)}/cast`, abort.signal)) {
        if (first) { first = false; continue; } // the header
        let ev: [number, string, string];
        try { ev = JSON.parse(line); } catch { continue; }
        const [t, kind, data] = ev;
        if (kind !== 'o') continue;
        const fast = seek !== null && t < seek;
        if (!fast) {
          const wait = Math.min(t - clock, opts.current.idleCap) / opts.current.speed;
          if (wait > 0) await new Promise((res) => setTimeout(res, wait * 1000));
        }
        if (abort.signal.aborted) return;
        clock = t;
        setAt(t);
        term.write(data);
      }
      setState('ended');
    })().catch((e) => {
      if (!abort.signal.aborted) setPlayError((e as Error).message);
    });
    return () => { abort.abort(); term?.dispose(); };
  }, [rec, run]);

  return (
    <section>
      <h1>Recording</h1>
      <Err text={error || playError} />
      {rec && <p>{rec.user} as {rec.login} on {rec.node}, <When at={rec.started_at} />{rec.ended_at && <> to <When at={rec.ended_at} /></>}</p>}
      <div class="player-controls">
        <label>Speed <select value={speed} onChange={(e) => setSpeed(Number(e.currentTarget.value))}>{[0.5, 1, 2, 4, 8].map((s) => <option value={s}>{s}×</option>)}</select></label>
        <label>Idle cap (s) <input type="number" min={0.1} step={0.1} value={idleCap} onInput={(e) => setIdleCap(Number(e.currentTarget.value) || 2)} /></label>
        <label>Seek to (s) <input type="number" min={0} onChange={(e) => { setSeekTo(Number(e.currentTarget.value)); setRun(run + 1); }} /></label>
        <button type="button" onClick={() => { setSeekTo(null); setRun(run + 1); }}>Restart</button>
        <span data-testid="player-state">{state}</span> <span class="muted">{at.toFixed(1)} s</span>
      </div>
      <div class="terminal" ref={host} data-testid="player" />
    </section>
  );
}

/** A session as it happens, read-only: the cast so far, then each stored
 * segment (a second or so behind), until the session ends. */
function Live({ id }: { id: string }) {
  const host = useRef<HTMLDivElement>(null);
  const [state, setState] = useState('connecting');
  useEffect(() => {
    const abort = new AbortController();
    let term: import('@xterm/xterm').Terminal | undefined;
    (async () => {
      const { Terminal } = await import('@xterm/xterm');
      await import('@xterm/xterm/css/xterm.css');
      term = new Terminal({ disableStdin: true });
      term.open(host.current!);
      (window as any).__posternLive = term;
      const r = await fetch(`/api/v1/recordings/${seg(id)}/live`, { credentials: 'same-origin', signal: abort.signal });
      if (!r.ok || !r.body) {
        const b = await r.json().catch(() => null);
        throw new Error(b?.error?.message ?? `the live view could not be opened (${r.status})`);
      }
      setState('live');
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let rest = '';
      let header = true;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const lines = (rest + value).split('\n');
        rest = lines.pop() ?? '';
        for (const l of lines) {
          if (!l) continue;
          if (header) { header = false; continue; }
          try {
            const [, kind, data] = JSON.parse(l);
            if (kind === 'o') term.write(data);
          } catch { /* a marker line the player does not show */ }
        }
      }
      setState('ended');
    })().catch((e) => { if (!abort.signal.aborted) setState(`stopped: ${(e as Error).message}`); });
    return () => { abort.abort(); term?.dispose(); };
  }, [id]);
  return (
    <section>
      <h1>Live session</h1>
      <p data-testid="live-state">{state}</p>
      <div class="terminal" ref={host} data-testid="live" />
    </section>
  );
}
