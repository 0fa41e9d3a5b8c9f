// The console's main flows in Debian's Firefox ESR, driven over WebDriver
// BiDi by puppeteer-core (no downloaded browser, no geckodriver): sign in,
// run a command and see it arrive live per node, and type in a terminal.
// Env: URL, NAME, PASSWORD, CODE (an org admin with login root on web).
import puppeteer from 'puppeteer-core';
import assert from 'node:assert/strict';

const url = process.env.URL;
const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: process.env.FIREFOX ?? '/usr/bin/firefox-esr',
  headless: true,
  // Nothing from the network beyond the bastion: no updates, telemetry or
  // safe-browsing lists.
  extraPrefsFirefox: {
    'app.update.enabled': false,
    'browser.safebrowsing.malware.enabled': false,
    'browser.safebrowsing.phishing.enabled': false,
    'datareporting.policy.dataSubmissionEnabled': false,
    'network.captive-portal-service.enabled': false,
  },
});
let page;
const step = async (name, f) => {
  const t0 = Date.now();
  try {
    await f();
  } catch (e) {
    console.log(`FAILED firefox ${name}: page text:\n${await page.evaluate(() => document.body.innerText).catch(() => '')}`);
    throw e;
  }
  console.log(`ok firefox ${name} (${Date.now() - t0} ms)`);
};
const text = (page, sel) => page.$eval(sel, (e) => e.textContent ?? '');
const until = (page, f, ...args) => page.waitForFunction(f, { timeout: 60000 }, ...args);
try {
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 720 });
  page.setDefaultTimeout(60000);
  await step('sign-in', async () => {
    await page.goto(url);
    await page.waitForSelector('input[name=name]');
    await page.type('input[name=name]', process.env.NAME);
    await page.type('input[name=password]', process.env.PASSWORD);
    await page.type('input[name=code]', process.env.CODE);
    await page.click('form[aria-label="Sign in with a password"] button[type=submit]');
    await until(page, (n) => document.querySelector('[data-testid=who]')?.textContent?.includes(n), process.env.NAME);
  });
  await step('run', async () => {
    await page.goto(`${url}/#/nodes`);
    await page.waitForSelector('select[aria-label=Project]');
    await page.select('select[aria-label=Project]', 'web');
    await page.goto(`${url}/#/run`);
    await page.waitForSelector('input[value=cluster]');
    await page.click('input[value=cluster]');
    await page.type('textarea[name=command]', 'echo ff-$((6*7))');
    await page.click('form.run button[type=submit]');
    for (const h of ['node-a', 'node-b']) {
      await until(page, (h) => document.querySelector(`article[data-host="${h}"] pre`)?.textContent?.includes('ff-42'), h);
    }
    assert.match(await text(page, '[data-testid=exec-nodes]'), /ff-42[\s\S]*ff-42/);
  });
  await step('terminal', async () => {
    await page.goto(`${url}/#/terminal/web/eu-1/node-a`);
    // The login offered is the role's: root.
    await until(page, () => document.querySelector('input[name=login]')?.value === 'root');
    await page.click('form[aria-label="Open a terminal"] button[type=submit]');
    await until(page, () => document.querySelector('[data-testid=terminal-status]')?.textContent === 'open');
    await page.focus('.xterm-helper-textarea');
    await page.keyboard.type('echo firefox-$((6*7))\n');
    await until(page, () => {
      const t = window.__posternTerminal;
      if (!t) return false;
      const b = t.buffer.active;
      let s = '';
      for (let i = 0; i < b.length; i++) s += b.getLine(i)?.translateToString(true) + '\n';
      return s.includes('firefox-42');
    });
  });
  console.log('firefox flows passed');
} finally {
  await browser.close();
}
