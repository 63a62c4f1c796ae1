// Two headless Chromium pages call each other through oversipd (SIP.md §12),
// with the very /phone page of the status listener: both register over WSS,
// alice calls bob, bob answers, both confirmed, RTP flows both ways (getStats),
// alice hangs up, both ended.  playwright-core drives Debian's /usr/bin/chromium.
// Prints one line per step; the last is "done {json}" or "error <message>".
// Usage: node two_browsers.js PHONE_URL WSS_URL DOMAIN USER:PASSWORD USER:PASSWORD [SCREENSHOT.png]
'use strict';
const { chromium } = require('playwright-core');

const [phoneUrl, wssUrl, domain, callerAccount, calleeAccount, screenshot] = process.argv.slice(2);
const STEP_TIMEOUT = 15000;   // ms for each awaited event
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  // This machine's network is closed: Chromium's own connections would be refused.
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  // The test's certificate is made by trustme for this run only.
  '--ignore-certificate-errors',
  // ICE over loopback host candidates, with their real addresses (no mDNS names).
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
];

async function openPhone(browser, account) {
  const [user, password] = account.split(':');
  const context = await browser.newContext({ viewport: { width: 480, height: 640 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => console.log(`pageerror ${user} ${error.message}`));
  await page.goto(phoneUrl);
  await page.fill('#server', wssUrl);
  await page.fill('#domain', domain);
  await page.fill('#user', user);
  await page.fill('#password', password);
  await page.click('#register');
  return { user, page };
}

async function until(phone, state) {
  try {
    await phone.page.waitForFunction((wanted) => window.phone.state === wanted, state, { timeout: STEP_TIMEOUT });
  } catch (error) {
    const seen = await phone.page.evaluate(() => `${window.phone.state} (${document.getElementById('detail').textContent})`);
    throw new Error(`${phone.user} never ${state}: ${seen}`);
  }
  console.log(`${state} ${phone.user}`);
}

async function rtpFlows(phone) {
  // Polled from here: waitForFunction takes a predicate's Promise for a true
  // value at once, so it cannot wait on the asynchronous getStats().
  const deadline = Date.now() + STEP_TIMEOUT;
  for (;;) {
    const bytes = await phone.page.evaluate(() => window.phone.rtpBytes());
    if (bytes.sent > 0 && bytes.received > 0) return bytes;
    if (Date.now() > deadline) throw new Error(`${phone.user} RTP never flowed both ways: ${JSON.stringify(bytes)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function sideBySide(browser, phones, file) {
  for (const phone of phones) {   // the page's own RTP counter shows bytes received
    await phone.page.waitForFunction(() => / [1-9][0-9]* received/.test(document.getElementById('media').textContent),
      null, { timeout: STEP_TIMEOUT });
  }
  const shots = await Promise.all(phones.map((phone) => phone.page.screenshot()));
  const page = await browser.newPage({ viewport: { width: 980, height: 660 } });
  const images = shots.map((shot) => `<img style="border:1px solid #888;margin:4px" src="data:image/png;base64,${shot.toString('base64')}">`);
  await page.setContent(`<body style="margin:4px;display:flex">${images.join('')}</body>`);
  await page.screenshot({ path: file });
  await page.close();
}

async function main() {
  // launch() gives Chromium a fresh --user-data-dir of its own (a temporary
  // directory, removed by close()); it refuses one passed in `args`.
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  try {
    const alice = await openPhone(browser, callerAccount);
    const bob = await openPhone(browser, calleeAccount);
    await Promise.all([until(alice, 'registered'), until(bob, 'registered')]);
    await alice.page.fill('#target', bob.user);
    await alice.page.click('#call');
    await until(bob, 'incoming call');
    await bob.page.click('#answer');
    await Promise.all([until(alice, 'confirmed'), until(bob, 'confirmed')]);
    const rtp = { [alice.user]: await rtpFlows(alice), [bob.user]: await rtpFlows(bob) };
    console.log(`rtp ${JSON.stringify(rtp)}`);
    if (screenshot) {
      await sideBySide(browser, [alice, bob], screenshot);
    }
    await alice.page.click('#hangup');
    await Promise.all([until(alice, 'ended'), until(bob, 'ended')]);
    console.log(`done ${JSON.stringify({ rtp })}`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.log(`error ${error.message.split('\n')[0]}`);
  process.exit(1);
});
