// The console's speed in Debian's Chromium, against a bastion that
// tests/src/bin/console_bench.rs started: the first page from a cold cache,
// the nodes page of a 10,000-node edge after sign-in, and keystroke to echo
// in the browser terminal. Prints one JSON line. Env: URL, NAME, PASSWORD,
// CODE, NODE (project/edge/node of a node with sshd), KEYS.
import { chromium } from 'playwright-core';

const url = process.env.URL;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const pct = (v, p) => { const s = [...v].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };
try {
  // First page usable: a new browser profile each time (nothing cached),
  // from navigation to the sign-in form ready for typing.
  const first = [];
  for (let i = 0; i < 7; i++) {
    const c = await browser.newContext();
    const p = await c.newPage();
    const t0 = Date.now();
    await p.goto(url);
    await p.getByLabel('User', { exact: true }).waitFor();
    first.push(Date.now() - t0);
    await c.close();
  }
  const context = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(60000);
  await page.goto(url);
  await page.getByLabel('User', { exact: true }).fill(process.env.NAME);
  await page.getByLabel('Password', { exact: true }).fill(process.env.PASSWORD);
  await page.getByLabel('Code', { exact: true }).fill(process.env.CODE);
  const [project, edge, node] = process.env.NODE.split('/');
  const t0 = Date.now();
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await page.getByLabel('Project', { exact: true }).selectOption(project);
  await page.getByTestId('nodes').locator('tbody tr').first().waitFor();
  const signInToNodes = Date.now() - t0;
  // Searching the 10,000: each keystroke asks the server for a page.
  const search = [];
  for (const q of ['swarm-0', 'swarm-09', 'swarm-099', 'swarm-0999']) {
    const t = Date.now();
    await Promise.all([
      page.waitForResponse((r) => r.url().includes(`q=${q}`)),
      page.getByLabel('Search', { exact: true }).fill(q),
    ]);
    // And drawn.
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r())));
    search.push(Date.now() - t);
  }
  // Keystroke to echo: one character at a time into the shell, timed in the
  // page from xterm.js's input to the echo parsed on screen.
  await page.goto(`${url}/#/terminal/${project}/${edge}/${node}`);
  await page.getByLabel('Login', { exact: true }).fill('root');
  await page.getByRole('button', { name: 'Open' }).click();
  await page.getByTestId('terminal-status').filter({ hasText: 'open' }).waitFor();
  await page.waitForTimeout(1000); // the prompt
  const echo = await page.evaluate(async (n) => {
    const t = window.__posternTerminal;
    const out = [];
    for (let i = 0; i < n; i++) {
      const ch = String.fromCharCode(97 + (i % 26));
      const t0 = performance.now();
      await new Promise((res) => {
        const d = t.onWriteParsed(() => { d.dispose(); res(); });
        t.input(ch, true);
      });
      out.push(performance.now() - t0);
      if (i % 50 === 49) t.input('\x15', true); // Ctrl+U: a short line
      await new Promise((r) => setTimeout(r, 10));
    }
    return out;
  }, Number(process.env.KEYS ?? 300));
  console.log(JSON.stringify({
    first_page_ms: { median: pct(first, 0.5), max: Math.max(...first), runs: first.length },
    sign_in_to_nodes_ms: signInToNodes,
    search_page_ms: search,
    echo_ms: { p50: +pct(echo, 0.5).toFixed(2), p95: +pct(echo, 0.95).toFixed(2), max: +Math.max(...echo).toFixed(2), keys: echo.length },
  }));
} finally {
  await browser.close();
}
