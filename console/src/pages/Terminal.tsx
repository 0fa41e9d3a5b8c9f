// A shell on a node in the browser: xterm.js (loaded only on this page) over
// the bastion's terminal WebSocket, which goes through the SSH door's
// terminating mode and so is authorized, recorded and audited like any SSH
// session.
import { useEffect, useRef, useState } from 'preact/hooks';
import { csrfToken, query, seg } from '../api/client';
import type { Me } from '../main';

export function TerminalPage({ me, route }: { me: Me; route: string[] }) {
  const [, project, edge, node] = route;
  const logins = Array.from(new Set(me.user.roles.flatMap((r) => r.logins ?? [])));
  const [login, setLogin] = useState(logins[0] ?? 'root');
  const [open, setOpen] = useState(false);
  return (
    <section class="terminal-page">
      <h1>Terminal: {node}</h1>
      {!open && (
        <form onSubmit={(e) => { e.preventDefault(); setOpen(true); }} aria-label="Open a terminal">
          <label>Login <input name="login" list="logins" value={login} onInput={(e) => setLogin(e.currentTarget.value)} required /></label>
          <datalist id="logins">{logins.map((l) => <option value={l} />)}</datalist>
          <button type="submit">Open</button>
        </form>
      )}
      {open && <Shell project={project} edge={edge} node={node} login={login} onClose={() => setOpen(false)} />}
    </section>
  );
}

function Shell({ project, edge, node, login }: { project: string; edge: string; node: string; login: string; onClose: () => void }) {
  const host = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState('connecting');
  useEffect(() => {
    let ws: WebSocket | undefined;
    let dispose = () => {};
    (async () => {
      const [{ Terminal }, { FitAddon }] = await Promise.all([import('@xterm/xterm'), import('@xterm/addon-fit')]);
      await import('@xterm/xterm/css/xterm.css');
      const term = new Terminal({ cursorBlink: true, scrollback: 5000 });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(host.current!);
      fit.fit();
      (window as any).__posternTerminal = term;
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      const url = `${scheme}://${location.host}/api/v1/projects/${seg(project)}/edges/${seg(edge)}/nodes/${seg(node)}/terminal${query({ login, cols: term.cols, rows: term.rows })}`;
      ws = new WebSocket(url, ['postern-terminal', `csrf.${csrfToken()}`]);
      ws.binaryType = 'arraybuffer';
      const enc = new TextEncoder();
      ws.onopen = () => { setStatus('open'); term.focus(); };
      ws.onmessage = (m) => {
        if (typeof m.data === 'string') {
          const c = JSON.parse(m.data);
          if (c.type === 'exit') setStatus(`exited${c.status !== undefined ? ` (${c.status})` : ''}`);
          if (c.type === 'error') { setStatus('refused'); term.write(`\r\n\x1b[31m${c.message}\x1b[0m\r\n`); }
        } else {
          term.write(new Uint8Array(m.data));
        }
      };
      ws.onclose = () => setStatus((s) => (s === 'open' || s === 'connecting' ? 'closed' : s));
      const input = term.onData((d) => ws?.readyState === WebSocket.OPEN && ws.send(enc.encode(d)));
      const binary = term.onBinary((d) => ws?.readyState === WebSocket.OPEN && ws.send(Uint8Array.from(d, (c) => c.charCodeAt(0))));
      const resized = term.onResize(({ cols, rows }) => ws?.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ type: 'resize', cols, rows })));
      const onWindow = () => fit.fit();
      addEventListener('resize', onWindow);
      dispose = () => { input.dispose(); binary.dispose(); resized.dispose(); removeEventListener('resize', onWindow); term.dispose(); };
    })();
    return () => { ws?.close(); dispose(); };
  }, [project, edge, node, login]);
  return (
    <>
      <p>{login}@{node}: <span data-testid="terminal-status">{status}</span></p>
      <div class="terminal" ref={host} data-testid="terminal" />
    </>
  );
}
