// The console's end-to-end flows in Debian's Chromium (driven by
// playwright-core, never a downloaded browser), against a real bastion,
// agents and sshd that tests/tests/console.rs started. Asserts on page text
// and on the terminal's buffer; a screenshot of the page is kept on failure.
// Env: URL, CAROL_PASSWORD, CAROL_CODE (org admin, and project member of web
// with login root), DAVE_PASSWORD, DAVE_CODE (read_only on web),
// ARTIFACTS (where screenshots go).
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const url = process.env.URL;
const artifacts = process.env.ARTIFACTS ?? '/tmp';
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const step = async (name, page, f) => {
  const t0 = Date.now();
  try {
    await f();
    console.log(`ok ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    await page.screenshot({ path: `${artifacts}/console-${name}.png`, fullPage: true }).catch(() => {});
    console.log(`FAILED ${name}: page text:\n${await page.locator('body').innerText().catch(() => '')}`);
    throw e;
  }
};
// Hostile text the pages must show as text: markup, a right-to-left
// override, and a word far wider than any screen.
const HOSTILE = `<script>window.__pwned=1</script><img src=x onerror="window.__pwned=1">\u202Eevil ${'W'.repeat(3000)}`;

/** Fails when anything ran or when the page is wider than its viewport. */
async function intact(page) {
  assert.equal(await page.evaluate(() => window.__pwned), undefined, 'hostile markup ran');
  const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width + 1, `the page is ${scroll}px wide in a ${width}px viewport`);
}

async function signIn(name, password, code, viewport = { width: 1280, height: 720 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  // Generous: CI runs this beside the rest of the suite on 2 cores.
  page.setDefaultTimeout(60000);
  const t0 = Date.now();
  page.on('dialog', (d) => { throw new Error(`a dialog opened: ${d.message()}`); });
  await page.goto(url);
  if (viewport.keyboard) {
    // Only the keyboard: Tab to each field, Enter to send.
    await page.getByLabel('User', { exact: true }).waitFor();
    await page.keyboard.press('Tab');
    await page.keyboard.type(name);
    await page.keyboard.press('Tab');
    await page.keyboard.type(password);
    await page.keyboard.press('Tab');
    await page.keyboard.type(code);
    await page.keyboard.press('Enter');
  } else {
    await page.getByLabel('User', { exact: true }).fill(name);
    await page.getByLabel('Password', { exact: true }).fill(password);
    await page.getByLabel('Code', { exact: true }).fill(code);
    await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  }
  await page.getByTestId('who').filter({ hasText: name }).waitFor();
  console.log(`signed in ${name} in ${Date.now() - t0} ms`);
  return { context, page };
}

// The text in an xterm.js buffer the page exposes as window[name] (a
// function, not a string: the page's CSP forbids eval, rightly).
const bufferHas = (page, name, needle) => page.waitForFunction(([name, needle]) => {
  const t = window[name];
  if (!t) return false;
  const b = t.buffer.active;
  let s = '';
  for (let i = 0; i < b.length; i++) s += b.getLine(i)?.translateToString(true) + '\n';
  return s.includes(needle);
}, [name, needle]);
try {
  // Carol: an org admin with a login on web's nodes.
  const { context, page } = await signIn('carol', process.env.CAROL_PASSWORD, process.env.CAROL_CODE);
  await step('cookie', page, async () => {
    const cookies = await context.cookies();
    const c = cookies.find((c) => c.name === 'postern_console');
    assert.ok(c, JSON.stringify(cookies));
    assert.equal(c.httpOnly, true);
    assert.equal(c.sameSite, 'Strict');
    assert.equal(await page.evaluate(() => document.cookie.includes('pss_')), false);
  });
  await step('nodes', page, async () => {
    // An org admin sees every project; web is the one with the nodes.
    await page.getByLabel('Project', { exact: true }).selectOption('web');
    await page.getByTestId('nodes').getByText('node-a', { exact: true }).waitFor();
    await page.getByTestId('nodes').getByText('node-b', { exact: true }).waitFor();
    await page.getByLabel('Search', { exact: true }).fill('node-b');
    await page.getByTestId('nodes').getByText('node-a', { exact: true }).waitFor({ state: 'detached' });
  });
  await step('run', page, async () => {
    await page.goto(`${url}/#/run`);
    await page.getByLabel('every node of the edge').check();
    await page.getByLabel('Command', { exact: true }).fill('echo $((6*7))');
    await page.getByRole('button', { name: 'Run' }).click();
    for (const h of ['node-a', 'node-b']) {
      await page.locator(`article[data-host="${h}"] pre`).filter({ hasText: '42' }).waitFor();
    }
    await page.getByTestId('exec-status').filter({ hasText: 'succeeded' }).waitFor();
  });
  await step('hostile', page, async () => {
    // A command and its output full of markup, bidi and a 3,000-character
    // word; and a sign-in refused for such a "name" lands in the audit log.
    await page.evaluate(async (h) => {
      await fetch('/api/v1/auth/console', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ name: h.slice(0, 60), password: 'x' }) });
    }, HOSTILE);
    await page.goto(`${url}/#/run`);
    await page.getByLabel('every node of the edge').check();
    await page.getByLabel('Command', { exact: true }).fill(`printf '%s\\n' '${HOSTILE.replaceAll("'", '')}'`);
    await page.getByRole('button', { name: 'Run' }).click();
    await page.getByTestId('exec-status').filter({ hasText: 'succeeded' }).waitFor();
    await page.locator('article[data-host="node-a"] pre').filter({ hasText: 'WWWW' }).waitFor();
    await intact(page);
    for (const p of ['executions', 'audit', 'nodes']) {
      await page.goto(`${url}/#/${p}`);
      await page.locator('table tbody tr').first().waitFor();
      await intact(page);
    }
  });
  await step('cancel', page, async () => {
    await page.goto(`${url}/#/run`);
    await page.getByLabel('every node of the edge').check();
    await page.getByLabel('Command', { exact: true }).fill('sleep 60');
    await page.getByRole('button', { name: 'Run' }).click();
    await page.getByRole('button', { name: 'Cancel' }).click();
    await page.getByTestId('exec-status').filter({ hasText: 'cancelled' }).waitFor();
  });
  await step('terminal', page, async () => {
    await page.goto(`${url}/#/terminal/web/eu-1/node-a`);
    await page.getByLabel('Login', { exact: true }).fill('root');
    await page.getByRole('button', { name: 'Open' }).click();
    await page.getByTestId('terminal-status').filter({ hasText: 'open' }).waitFor();
    await page.locator('.xterm-helper-textarea').focus();
    await page.keyboard.type('echo browser-$((6*7))\n');
    await page.waitForFunction(() => {
      const t = window.__posternTerminal;
      if (!t) return false;
      const b = t.buffer.active;
      let s = '';
      for (let i = 0; i < b.length; i++) s += b.getLine(i)?.translateToString(true) + '\n';
      return s.includes('browser-42');
    }, null, { timeout: 60000 });
    // UTF-8 both ways (as xterm.js hands over what an input method
    // composed: Playwright's typing of non-ASCII goes around the key events
    // xterm.js reads), and a paste (xterm.js's paste, as the clipboard gives
    // it: bracketed, so Enter runs it).
    await page.evaluate(() => window.__posternTerminal.input('echo héllo-✓-$((6*7))\r', true));
    await bufferHas(page, '__posternTerminal', 'héllo-✓-42');
    await page.evaluate(() => window.__posternTerminal.paste('echo pasted-$((6*7))'));
    await page.keyboard.press('Enter');
    await bufferHas(page, '__posternTerminal', 'pasted-42');
    // Ctrl+C reaches the shell, and exit ends the session.
    await page.keyboard.type('sleep 30');
    await page.keyboard.press('Control+C');
    await page.keyboard.type('exit\n');
    await page.getByTestId('terminal-status').filter({ hasText: /exited|closed/ }).waitFor();
  });
  await step('recording', page, async () => {
    await page.goto(`${url}/#/recordings`);
    await page.getByTestId('recordings').getByRole('link').first().click();
    await page.getByTestId('player-state').filter({ hasText: 'ended' }).waitFor({ timeout: 60000 });
    const text = await page.evaluate(() => {
      const b = window.__posternPlayer.buffer.active;
      let s = '';
      for (let i = 0; i < b.length; i++) s += b.getLine(i)?.translateToString(true) + '\n';
      return s;
    });
    assert.match(text, /browser-42/);
  });
  await step('kubeconfig', page, async () => {
    await page.goto(`${url}/#/account`);
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('kubeconfig').click()]);
    await download.saveAs(`${artifacts}/kubeconfig`);
  });
  await step('audit', page, async () => {
    await page.goto(`${url}/#/audit`);
    await page.getByLabel('Actor', { exact: true }).fill('carol');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.getByTestId('audit').getByText('carol').first().waitFor();
    await page.getByRole('button', { name: 'Verify the chain' }).click();
    await page.getByTestId('chain').filter({ hasText: 'The chain holds' }).waitFor();
  });
  // Dave signs in with the keyboard alone, on a phone-sized screen.
  const dave = await signIn('dave', process.env.DAVE_PASSWORD, process.env.DAVE_CODE, { width: 390, height: 844, keyboard: true });
  await step('phone', dave.page, async () => {
    // Read-only pages with rows in them (a reader sees no one else's
    // recordings, so that list stays empty for Dave).
    for (const p of ['nodes', 'executions', 'audit']) {
      await dave.page.goto(`${url}/#/${p}`);
      await dave.page.locator('main h1').waitFor();
      if (p !== 'audit') await dave.page.locator('table tbody tr').first().waitFor();
      await intact(dave.page);
    }
  });
  await step('read-only', dave.page, async () => {
    await dave.page.goto(`${url}/#/run`);
    await dave.page.getByText('lets you read, not run commands').waitFor();
    assert.equal(await dave.page.getByRole('button', { name: 'Run' }).count(), 0);
    const status = await dave.page.evaluate(async () => {
      const r = await fetch('/api/v1/auth/console');
      const s = await r.json();
      const x = await fetch('/cmdexec/v1/projects/web/edges/eu-1/execute/', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Postern-CSRF': s.csrf_token },
        body: JSON.stringify({ command: 'id', target_type: 'cluster' }),
      });
      return x.status;
    });
    assert.equal(status, 403);
    // Another project's nodes are never shown.
    await dave.page.goto(`${url}/#/nodes`);
    await dave.page.getByTestId('nodes').getByText('node-a', { exact: true }).waitFor();
    assert.equal(await dave.page.getByText('secret-node').count(), 0);
  });
  await step('watch-live', page, async () => {
    // Carol's own terminal in one tab, its live view in another.
    const shell = await context.newPage();
    shell.setDefaultTimeout(60000);
    await shell.goto(`${url}/#/terminal/web/eu-1/node-b`);
    await shell.getByLabel('Login', { exact: true }).fill('root');
    await shell.getByRole('button', { name: 'Open' }).click();
    await shell.getByTestId('terminal-status').filter({ hasText: 'open' }).waitFor();
    await shell.locator('.xterm-helper-textarea').focus();
    await shell.keyboard.type('echo before-$((6*7))\n');
    await bufferHas(shell, '__posternTerminal', 'before-42');
    await page.goto(`${url}/#/recordings`);
    await page.getByRole('link', { name: 'Watch live' }).first().click();
    await page.getByTestId('live-state').filter({ hasText: 'live' }).waitFor();
    await shell.keyboard.type('echo live-$((6*7))\n');
    await bufferHas(page, '__posternLive', 'live-42');
    await shell.keyboard.type('exit\n');
    await page.getByTestId('live-state').filter({ hasText: 'ended' }).waitFor();
    await shell.close();
  });
  await step('admin', page, async () => {
    // Disable a node and enable it again; end Dave's sessions.
    await page.goto(`${url}/#/nodes`);
    const row = page.getByTestId('nodes').locator('tr', { hasText: 'node-b' });
    await row.getByRole('button', { name: 'Disable' }).click();
    await row.getByText('disabled').waitFor();
    await row.getByRole('button', { name: 'Enable' }).click();
    await row.getByRole('button', { name: 'Disable' }).waitFor();
    await page.goto(`${url}/#/admin`);
    const dave = page.getByTestId('users').locator('tr', { hasText: 'dave' }).first();
    await dave.getByRole('button', { name: 'Manage' }).click();
    await page.getByRole('button', { name: "End dave's sessions" }).click();
    await page.getByRole('button', { name: "End dave's sessions" }).waitFor();
  });
  await step('dave-signed-out', dave.page, async () => {
    await dave.page.goto(`${url}/#/executions`);
    await dave.page.getByLabel('User', { exact: true }).waitFor();
    await dave.page.getByRole('status').filter({ hasText: /ended|sign in/i }).waitFor();
  });
  await dave.context.close();
  await step('idle-or-logout', page, async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByRole('status').filter({ hasText: 'signed out' }).waitFor();
  });
  await context.close();

  // Dave: read only: no run button, and the API refuses a forced run.
  // Fay signs in through the org's OpenID provider and lands in the console.
  const sso = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  const fay = await sso.newPage();
  fay.setDefaultTimeout(60000);
  await step('sso', fay, async () => {
    await fay.goto(url);
    await fay.getByLabel('Org', { exact: true }).fill('default');
    await fay.getByLabel('Provider', { exact: true }).fill('corp');
    await fay.getByRole('button', { name: 'Sign in with SSO' }).click();
    await fay.locator('input[name=username]').fill('fay');
    await fay.locator('input[name=password]').fill('pw-fay');
    await fay.locator('input[name=password]').press('Enter');
    await fay.getByTestId('who').filter({ hasText: 'fay' }).waitFor();
    await fay.getByTestId('nodes').getByText('node-a', { exact: true }).waitFor();
    await fay.goto(`${url}/#/account`);
    await fay.getByText('sso:corp').first().waitFor();
  });
  await sso.close();
  console.log('all console flows passed');
} finally {
  await browser.close();
}
