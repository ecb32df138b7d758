// Browser end-to-end test of the Ferry web app (`ferry ui`).
//
// Starts a coturn (free port, use-auth-secret, never the system's 3478), a ferry-relay handing
// out credentials for it, three `ferry ui` (alice's phone, alice's laptop, bob) and one
// Chromium with a browser context per device, then plays the scenario of
// /work/notes/ui-dom.md's contract through the page: accounts, pairing, contacts, chat with
// typing and read receipts, an image, a video call forced through TURN, a relay restart,
// the local server's guards (from node, no browser), axe-core, and optional screenshots.
//
// Builds nothing: FERRY_BIN (default target/debug/ferry) and FERRY_RELAY_BIN (default
// target/debug/ferry-relay), relative to the repository root. Chromium: CHROMIUM
// (default /usr/bin/chromium). FERRY_UI_SCREENSHOTS=1 writes docs/screenshots/*.png.
// FERRY_UI_KEEP=1 keeps the temporary folder (logs, state folders). Exits non-zero on failure,
// after printing each process's stderr tail and the pages' console errors.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..');
const FERRY_BIN = path.resolve(ROOT, process.env.FERRY_BIN || 'target/debug/ferry');
const RELAY_BIN = path.resolve(ROOT, process.env.FERRY_RELAY_BIN || 'target/debug/ferry-relay');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TURNSERVER = process.env.TURNSERVER || 'turnserver';
const SCREENSHOTS = process.env.FERRY_UI_SCREENSHOTS === '1';
const SCREENSHOT_DIR = path.join(ROOT, 'docs', 'screenshots');
const KEEP = process.env.FERRY_UI_KEEP === '1';

const TURN_SECRET = crypto.randomBytes(16).toString('hex');
const TURN_REALM = 'ferry.test';
const VIEWPORT = { width: 1280, height: 800 };
/** Default wait for anything the page should show (debug builds on a 2-core machine). */
const WAIT = 20_000;

const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-ui-e2e-'));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------
// Output and checks

const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`;
function log(...args) {
  console.log(`[${elapsed()}]`, ...args);
}

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

function equal(actual, expected, what) {
  check(
    actual === expected,
    `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
  );
}

/** Polls `fn` until it returns something truthy (and returns it), or fails after `timeout`. */
async function eventually(what, fn, { timeout = WAIT, interval = 200 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
      last = `last value ${JSON.stringify(value)}`;
    } catch (e) {
      last = e instanceof Error ? e.message.split('\n')[0] : String(e);
    }
    if (Date.now() > deadline) throw new Failure(`timed out after ${timeout} ms: ${what} (${last})`);
    await sleep(interval);
  }
}

let currentStep = '(start)';
async function step(name, fn) {
  currentStep = name;
  log(`== ${name}`);
  await fn();
}

// ---------------------------------------------------------------------------------------
// Processes

/** Every process this test started: name → { child, stdout/stderr tails, log file }. */
const procs = [];

function tailBuffer() {
  const lines = [];
  let partial = '';
  return {
    lines,
    push(chunk) {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const line of parts) {
        lines.push(line);
        if (lines.length > 200) lines.shift();
      }
    },
    text(n = 40) {
      return [...lines, partial].filter((l) => l !== '').slice(-n).join('\n');
    },
  };
}

function start(name, program, args, { env = {} } = {}) {
  const logFile = path.join(tmp, `${name}.log`);
  const logStream = fs.createWriteStream(logFile, { flags: 'a' });
  logStream.write(`$ ${program} ${args.join(' ')}\n`);
  const child = spawn(program, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, FERRY_LOG: process.env.FERRY_LOG || 'info', NO_COLOR: '1', ...env },
  });
  const proc = { name, child, stdout: tailBuffer(), stderr: tailBuffer(), logFile, exited: null };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    proc.stdout.push(d);
    logStream.write(d);
  });
  child.stderr.on('data', (d) => {
    proc.stderr.push(d);
    logStream.write(d);
  });
  child.on('error', (e) => {
    proc.exited = `failed to start: ${e.message}`;
  });
  child.on('exit', (code, signal) => {
    proc.exited = signal ? `killed by ${signal}` : `exited with ${code}`;
    logStream.write(`-- ${proc.exited}\n`);
  });
  procs.push(proc);
  return proc;
}

async function stop(proc, signal = 'SIGTERM') {
  if (proc.exited || proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.child.once('exit', resolve));
  proc.child.kill(signal);
  const done = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
  if (!done) {
    proc.child.kill('SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
}

/** Runs a program to completion; its stdout, or a Failure with its stderr. */
function run(program, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', (e) => reject(new Failure(`${program}: ${e.message}`)));
    child.on('exit', (code) =>
      code === 0
        ? resolve(out)
        : reject(new Failure(`${program} ${args.join(' ')} exited with ${code}:\n${err}`)),
    );
  });
}

/** Resolves with the first stdout line of `proc` matching `re` (the match). */
function stdoutLine(proc, re, timeout = 60_000) {
  return eventually(
    `${proc.name} prints a line matching ${re}`,
    () => {
      if (proc.exited) throw new Failure(`${proc.name} ${proc.exited}:\n${proc.stderr.text()}`);
      for (const line of proc.stdout.lines) {
        const m = line.match(re);
        if (m) return m;
      }
      return null;
    },
    { timeout, interval: 100 },
  );
}

// ---------------------------------------------------------------------------------------
// Ports, coturn, the relay

/** A port free for UDP and TCP on 127.0.0.1, below the ephemeral range (as relay/tests/turn.rs). */
async function freePort() {
  let ephemeralLow = 32768;
  try {
    ephemeralLow = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]) || 32768;
  } catch {}
  const low = 10_000;
  const high = Math.min(Math.max(ephemeralLow, 11_000), 32_768);
  for (;;) {
    const port = low + crypto.randomInt(high - low);
    const free = await new Promise((resolve) => {
      const tcp = net.createServer();
      tcp.once('error', () => resolve(false));
      tcp.listen(port, '127.0.0.1', () => {
        const udp = dgram.createSocket('udp4');
        udp.once('error', () => tcp.close(() => resolve(false)));
        udp.bind(port, '127.0.0.1', () => udp.close(() => tcp.close(() => resolve(true))));
      });
    });
    if (free) return port;
  }
}

/** A STUN Binding request to 127.0.0.1:port; true when anything STUN-like answers in time. */
function stunBinding(port, wait = 300) {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    const request = Buffer.alloc(20);
    request.writeUInt16BE(0x0001, 0); // Binding request
    request.writeUInt16BE(0, 2);
    request.writeUInt32BE(0x2112a442, 4);
    crypto.randomFillSync(request, 8, 12);
    const done = (ok) => {
      clearTimeout(timer);
      socket.close();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), wait);
    socket.on('message', (msg) => done(msg.length >= 20 && msg.readUInt16BE(0) === 0x0101));
    socket.on('error', () => done(false));
    socket.send(request, port, '127.0.0.1');
  });
}

function turnserverArgs(port, dir) {
  // As relay/tests/turn.rs. --allow-loopback-peers is what makes a loopback call work: the
  // two relayed addresses are both 127.0.0.1, and coturn refuses loopback peers otherwise
  // (403 Forbidden IP on CreatePermission; Chromium then never connects).
  return [
    '-n',
    `--listening-port=${port}`,
    '--listening-ip=127.0.0.1',
    '--relay-ip=127.0.0.1',
    '--use-auth-secret',
    `--static-auth-secret=${TURN_SECRET}`,
    `--realm=${TURN_REALM}`,
    '--allow-loopback-peers',
    '--no-cli',
    '--no-tls',
    '--no-dtls',
    '--log-file=stdout',
    '--simple-log',
    `--pidfile=${path.join(dir, 'turnserver.pid')}`,
    `--userdb=${path.join(dir, 'turndb')}`,
    '--no-software-attribute',
  ];
}

async function startCoturn() {
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const dir = path.join(tmp, `coturn-${attempt}`);
    fs.mkdirSync(dir);
    const proc = start('coturn', TURNSERVER, turnserverArgs(port, dir));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && !proc.exited) {
      if (await stunBinding(port)) return { proc, port };
    }
    await stop(proc);
  }
  throw new Failure('turnserver did not come up (see the coturn log above)');
}

function httpGetStatus(url) {
  return new Promise((resolve) => {
    const request = http.get(url, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    request.on('error', () => resolve(0));
    request.setTimeout(2000, () => request.destroy());
  });
}

function relayArgs(relay) {
  return [
    '--data-dir', relay.dataDir,
    '--listen', `127.0.0.1:${relay.port}`,
    '--turn-url', `turn:127.0.0.1:${relay.turnPort}?transport=udp`,
    '--turn-secret-file', relay.secretFile,
  ];
}

async function startRelay(relay, name = 'relay') {
  for (let attempt = 0; ; attempt++) {
    const proc = start(name, RELAY_BIN, relayArgs(relay));
    try {
      await eventually(
        'the relay answers /healthz',
        async () => {
          if (proc.exited) throw new Failure(`relay ${proc.exited}:\n${proc.stderr.text()}`);
          return (await httpGetStatus(`http://127.0.0.1:${relay.port}/healthz`)) === 200;
        },
        { timeout: 30_000, interval: 200 },
      );
      relay.proc = proc;
      return proc;
    } catch (e) {
      // The port of a killed relay may take a moment to be free again.
      if (attempt >= 10 || !proc.exited) throw e;
      await sleep(1000);
    }
  }
}

// ---------------------------------------------------------------------------------------
// `ferry ui` and the browser

async function startUi(name, relay) {
  const state = path.join(tmp, `state-${name}`);
  const proc = start(`ui-${name}`, FERRY_BIN, [
    '--state', state,
    'ui',
    '--listen', '127.0.0.1:0',
    '--no-open',
    '--relay', relay.url,
    '--relay-key', relay.key,
  ]);
  const [, url, port, token] = await stdoutLine(
    proc,
    /^ui: (http:\/\/127\.0\.0\.1:(\d+)\/\?token=([0-9A-Za-z_-]+))\s*$/,
  );
  return { name, proc, state, url, port: Number(port), token, origin: `http://127.0.0.1:${port}` };
}

/** Uncaught exceptions and CSP violations of every page: the test fails on any. */
const pageProblems = [];
/** Other console errors (a refused request logs one too): printed, not judged. */
const consoleErrors = [];

async function openUi(browser, ui) {
  const context = await browser.newContext({
    viewport: VIEWPORT,
    permissions: ['camera', 'microphone'],
    locale: 'en-US',
    timezoneId: 'UTC',
  });
  context.setDefaultTimeout(WAIT);
  const page = await context.newPage();
  page.on('console', (m) => {
    const line = `${ui.name} console ${m.type()}: ${m.text()}`;
    if (/Content.Security.Policy/i.test(m.text())) pageProblems.push(line);
    else if (m.type() === 'error') consoleErrors.push(`[${elapsed()}] ${line}`);
  });
  page.on('pageerror', (e) => pageProblems.push(`${ui.name} uncaught: ${e.stack || e.message}`));
  // Which address a "Failed to load resource" console error was about.
  page.on('response', (r) => {
    if (r.status() >= 400) consoleErrors.push(`[${elapsed()}] ${ui.name} ${r.request().method()} ${new URL(r.url()).pathname} answered ${r.status()}`);
  });
  // The token URL sets the cookie and moves on to `/`; then `/?relay=1` so that calls use
  // TURN only (iceTransportPolicy "relay").
  await page.goto(ui.url);
  await page.waitForURL((u) => !u.searchParams.has('token'), { timeout: WAIT });
  await page.goto(`${ui.origin}/?relay=1`);
  ui.context = context;
  ui.page = page;
  return page;
}

async function shot(page, name) {
  if (!SCREENSHOTS) return;
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  // Let transitions and images settle.
  await sleep(300);
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`) });
  log(`screenshot docs/screenshots/${name}.png`);
}

/** Text of a locator, trimmed, whitespace collapsed. */
async function text(locator) {
  return ((await locator.textContent()) || '').replace(/\s+/g, ' ').trim();
}

async function expectAttr(locator, name, expected, what, timeout = WAIT) {
  return eventually(
    `${what}: [${name}] ${expected}`,
    async () => {
      const value = await locator.getAttribute(name, { timeout: 1000 });
      return expected instanceof RegExp ? expected.test(value ?? '') : value === expected;
    },
    { timeout },
  );
}

async function expectText(locator, re, what, timeout = WAIT) {
  return eventually(`${what} matches ${re}`, async () => re.test(await text(locator.first())), {
    timeout,
  });
}

async function nav(page, view) {
  await page.locator(`#nav-${view}`).click();
  await page.locator(`#view-${view}`).waitFor({ state: 'visible' });
  await expectAttr(page.locator(`#nav-${view}`), 'aria-current', 'page', `#nav-${view}`);
}

/** The app is running and connected to the relay. */
async function expectConnected(page, what, timeout = WAIT) {
  await page.locator('#app').waitFor({ state: 'visible', timeout });
  await expectAttr(page.locator('#connection'), 'data-state', 'connected', `${what} #connection`, timeout);
}

/** An <img> has loaded and decoded. */
async function imageLoaded(locator) {
  return locator.evaluate((img) => img.complete && img.naturalWidth > 0);
}

// ---------------------------------------------------------------------------------------
// A small PNG made here: 96x64, a gradient with a diagonal band (visible in screenshots).

function crc32(buf) {
  let c = ~0;
  for (const byte of buf) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function makePng(width, height) {
  const chunk = (type, data) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, 'ascii');
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    const row = y * (1 + width * 3);
    raw[row] = 0; // filter: none
    for (let x = 0; x < width; x++) {
      const band = Math.abs(x - y * 1.5) < 6;
      const i = row + 1 + x * 3;
      raw[i] = band ? 255 : Math.round((x / width) * 200);
      raw[i + 1] = band ? 200 : Math.round((y / height) * 160) + 40;
      raw[i + 2] = band ? 40 : 180;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// ---------------------------------------------------------------------------------------
// Plain HTTP from node (the guards of the local server)

function request(ui, { method = 'GET', path: p = '/api/state', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: ui.port, method, path: p, headers: { host: `127.0.0.1:${ui.port}`, ...headers } },
      (res) => {
        let data = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (data += d));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: data }));
      },
    );
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** The SSE stream answers with headers and stays open: status and headers only. */
function requestHead(ui, { path: p, headers = {} }) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: ui.port, method: 'GET', path: p, headers: { host: `127.0.0.1:${ui.port}`, ...headers } },
      (res) => {
        resolve({ status: res.statusCode, headers: res.headers });
        res.destroy();
      },
    );
    req.on('error', (e) => (e.code === 'ECONNRESET' ? null : reject(e)));
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    req.end();
  });
}

// ---------------------------------------------------------------------------------------
// axe-core

const require = createRequire(import.meta.url);
const AXE_SOURCE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const a11yViolations = [];

/** Runs axe on the page as it is; records serious and critical violations under `where`. */
async function axe(page, where) {
  // Through the DevTools protocol (page.evaluate), which the page's CSP does not apply to;
  // addScriptTag would be an inline script, refused by `script-src 'self'`.
  await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.slice(0, 5).map((n) => `${n.target.join(' ')}: ${n.failureSummary?.split('\n').slice(1).join('; ')}`),
      }));
  });
  log(`axe ${where}: ${violations.length} serious/critical violation(s)`);
  for (const v of violations) a11yViolations.push({ where, ...v });
}

// ---------------------------------------------------------------------------------------
// The scenario

const relay = { proc: null, port: 0, turnPort: 0, dataDir: '', secretFile: '', url: '', key: '' };
let browser = null;
const uis = {};

async function main() {
  for (const [what, file] of [['FERRY_BIN', FERRY_BIN], ['FERRY_RELAY_BIN', RELAY_BIN], ['Chromium', CHROMIUM]]) {
    check(fs.existsSync(file), `${what} not found at ${file}`);
  }
  log(`temporary folder ${tmp}`);

  await step('coturn, relay', async () => {
    const coturn = await startCoturn();
    relay.turnPort = coturn.port;
    relay.port = await freePort();
    relay.dataDir = path.join(tmp, 'relay-data');
    relay.secretFile = path.join(tmp, 'turn-secret');
    fs.writeFileSync(relay.secretFile, `${TURN_SECRET}\n`, { mode: 0o600 });
    // `ferry-relay key` creates the key and prints its id (the last line of stdout).
    const out = await run(RELAY_BIN, ['key', '--data-dir', relay.dataDir]);
    relay.key = out.trim().split('\n').pop().trim();
    check(/^[0-9a-f]{64}$/.test(relay.key), `ferry-relay key printed ${JSON.stringify(out)}`);
    relay.url = `ws://127.0.0.1:${relay.port}/ws`;
    await startRelay(relay);
    const [, printedKey] = await stdoutLine(relay.proc, /^relay key \(pin this in clients\): (\S+)/);
    equal(printedKey, relay.key, 'the served relay key');
    log(`coturn 127.0.0.1:${relay.turnPort}, relay ${relay.url}, key ${relay.key}`);
  });

  await step('three `ferry ui`, one Chromium', async () => {
    const [alice, laptop, bob] = await Promise.all(
      ['alice', 'laptop', 'bob'].map((name) => startUi(name, relay)),
    );
    Object.assign(uis, { alice, laptop, bob });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
    for (const ui of [alice, laptop, bob]) {
      await openUi(browser, ui);
      await ui.page.locator('#setup').waitFor({ state: 'visible' });
    }
  });
  const { alice, laptop, bob } = uis;
  const A = alice.page;
  const L = laptop.page;
  const B = bob.page;

  const me = {};

  await step('a) accounts, recovery key', async () => {
    // The relay fields are filled in from `--relay` / `--relay-key`.
    equal(await A.locator('#create-relay-url').inputValue(), relay.url, '#create-relay-url prefilled');
    equal(await A.locator('#create-relay-key').inputValue(), relay.key, '#create-relay-key prefilled');
    equal(await L.locator('#join-relay-url').inputValue(), relay.url, '#join-relay-url prefilled');
    equal(await L.locator('#join-relay-key').inputValue(), relay.key, '#join-relay-key prefilled');
    await axe(A, 'setup');
    await shot(A, 'setup');

    for (const [page, device, name] of [[A, 'alice-phone', 'Alice'], [B, 'bob-desktop', 'Bob']]) {
      await page.locator('#create-device-name').fill(device);
      await page.locator('#create-name').fill(name);
      await page.locator('#create-form').getByRole('button', { name: 'Create account' }).click();
      await page.locator('#recovery').waitFor({ state: 'visible', timeout: 30_000 });
      const key = await text(page.locator('#recovery-key'));
      check(key.length >= 20, `${name}'s #recovery-key shows a key (got ${JSON.stringify(key)})`);
      check(await page.locator('#recovery-done').isDisabled(), '#recovery-done is disabled until #recovery-confirm is ticked');
      if (page === A) await shot(A, 'recovery-key');
      await page.locator('#recovery-confirm').check();
      await eventually('#recovery-done enabled', () => page.locator('#recovery-done').isEnabled());
      await page.locator('#recovery-done').click();
      await expectConnected(page, name, 30_000);
      await page.locator('#setup').waitFor({ state: 'hidden' });
      // The key was in exactly one response: it is not on the page any more.
      check(!(await page.content()).includes(key), `${name}'s recovery key is gone from the page after Continue`);
    }
    for (const [ui, page] of [['alice', A], ['bob', B]]) {
      await nav(page, 'me');
      me[ui] = await eventually(`${ui}'s #my-user`, async () => {
        const id = await text(page.locator('#my-user'));
        return /^[0-9a-f]{64}$/.test(id) ? id : null;
      });
    }
  });

  await step('b) alice pairs a laptop', async () => {
    await nav(A, 'devices');
    await A.locator('#pair-start').click();
    await A.locator('#pair-panel').waitFor({ state: 'visible' });
    const code = await eventually('#pair-code shows SLOT-DDDDDD', async () =>
      (await text(A.locator('#pair-code'))).match(/\b\d+-\d{6}\b/)?.[0],
    );
    await eventually('#pair-qr has loaded', () => A.locator('#pair-qr').evaluate((img) => img.complete));
    const qr = await A.evaluate(async () => {
      const r = await fetch(document.querySelector('#pair-qr').src);
      return { status: r.status, type: r.headers.get('content-type'), body: await r.text() };
    });
    check(qr.status === 200 && /svg/.test(qr.type ?? '') && /<svg/.test(qr.body), `#pair-qr's src is an SVG (${qr.status} ${qr.type})`);
    await shot(A, 'devices-pairing');
    check(/\S/.test(await text(A.locator('#pair-expires'))), '#pair-expires says something');

    await L.locator('#join-code').fill(code);
    await L.locator('#join-device-name').fill('alice-laptop');
    await L.locator('#join-form').getByRole('button', { name: 'Join' }).click();
    // Both show the confirmation, DDDD-DDDD (the elements may hold explanatory text too).
    const confirmation = /\b\d{4}-\d{4}\b/;
    const joined = await eventually('#join-confirmation shows DDDD-DDDD', async () =>
      (await text(L.locator('#join-confirmation'))).match(confirmation)?.[0], { timeout: 30_000 });
    const shown = await eventually('#pair-confirmation shows DDDD-DDDD', async () =>
      (await text(A.locator('#pair-confirmation'))).match(confirmation)?.[0], { timeout: 30_000 });
    equal(shown, joined, 'the confirmation on both devices');
    await A.locator('#pair-admit').waitFor({ state: 'visible' });
    await shot(A, 'devices-confirm');
    await A.locator('#pair-admit').click();
    await expectText(A.locator('#pair-result'), /\S/, '#pair-result');
    await expectConnected(L, 'the laptop', 60_000);
    await A.locator('#device-list li[data-device]').nth(1).waitFor();
    await eventually('alice lists 2 devices, one of them this one', async () =>
      (await A.locator('#device-list li[data-revoked=false]').count()) === 2 &&
      (await A.locator('#device-list li[data-this=true]').count()) === 1,
    );
    await expectText(A.locator('#device-list li[data-this=false]'), /alice-laptop/, 'the laptop in alice\'s list');
    check(
      (await A.locator('#device-list li[data-this=false] .revoke').count()) === 1,
      'the other device has a .revoke button',
    );
    await nav(L, 'devices');
    await eventually('the laptop lists 2 devices', async () =>
      (await L.locator('#device-list li[data-revoked=false]').count()) === 2,
    );
  });

  let handle;
  await step('c) handle, contact request, accept', async () => {
    await nav(B, 'me');
    await B.locator('#handle-name').fill('bob');
    await B.locator('#handle-form').getByRole('button', { name: 'Take handle' }).click();
    handle = await eventually('#my-handle shows bob.NN', async () =>
      (await text(B.locator('#my-handle'))).match(/\bbob\.\d+\b/)?.[0],
    );
    log(`bob's handle ${handle}`);

    await nav(A, 'contacts');
    await A.locator('#contact-handle').fill(handle);
    await A.locator('#contact-note').fill("hi, it's alice");
    await A.locator('#contact-add-form').getByRole('button', { name: 'Send request' }).click();
    await A.locator(`#contact-list li[data-user="${me.bob}"][data-state=outgoing]`).waitFor();

    await nav(B, 'contacts');
    const incoming = B.locator(`#contact-list li[data-user="${me.alice}"][data-state=incoming]`);
    await incoming.waitFor({ timeout: 30_000 });
    // The relay shows a profile to contacts only: until bob accepts, alice is the start of
    // her id (and her note), and the button's label names her as the list shows her.
    const shownAs = me.alice.slice(0, 8);
    await expectText(incoming, new RegExp(shownAs), 'the request shows the start of alice\'s id');
    const acceptLabel = (await incoming.locator('.accept').getAttribute('aria-label')) ?? '';
    check(acceptLabel.includes(shownAs), `the accept button's aria-label names alice (${JSON.stringify(acceptLabel)})`);
    await incoming.locator('.accept').click();
    await B.locator(`#contact-list li[data-user="${me.alice}"][data-state=contact]`).waitFor({ timeout: 30_000 });
    // A contact now: her profile name shows.
    await expectText(B.locator(`#contact-list li[data-user="${me.alice}"]`), /Alice/, 'alice\'s name once a contact', 30_000);
    await A.locator(`#contact-list li[data-user="${me.bob}"][data-state=contact]`).waitFor({ timeout: 30_000 });
    const presence = A.locator(`#contact-list li[data-user="${me.bob}"] .presence`);
    check(/^(true|false)$/.test((await presence.getAttribute('data-online')) ?? ''), '.presence has data-online');
    await shot(A, 'contacts');
  });

  const aliceMessages = A.locator('#messages li');
  const bobMessages = B.locator('#messages li');
  await step('d) chat, typing, read receipt', async () => {
    await A.locator(`#contact-list li[data-user="${me.bob}"] .chat`).click();
    await A.locator('#chat').waitFor({ state: 'visible' });
    await expectText(A.locator('#chat-title'), /Bob/, '#chat-title');
    await A.locator('#composer-text').fill('hello bob');
    await A.locator('#composer-text').press('Enter');
    const mine = A.locator('#messages li[data-mine=true]', { hasText: 'hello bob' });
    await mine.waitFor();
    equal(await A.locator('#composer-text').inputValue(), '', 'the composer after Enter');

    await nav(B, 'chats');
    const conv = B.locator('#conv-list li[data-conv]').first();
    await conv.waitFor({ timeout: 30_000 });
    await expectText(conv.locator('.unread'), /^1$/, 'bob\'s unread count');
    await conv.getByRole('button').first().click();
    await B.locator('#chat').waitFor({ state: 'visible' });
    await B.locator('#messages li[data-mine=false]', { hasText: 'hello bob' }).waitFor();
    await expectAttr(mine.locator('.receipt'), 'data-receipt', 'read', 'alice\'s message once bob has the chat open', 30_000);

    // Bob types slowly; alice sees "Bob is typing…".
    await B.locator('#composer-text').click();
    await B.locator('#composer-text').pressSequentially('hi alice, ', { delay: 120 });
    await expectText(A.locator('#typing'), /is typing/, 'alice\'s #typing while bob types', 15_000);
    await B.locator('#composer-text').pressSequentially('all good', { delay: 60 });
    await B.locator('#composer-text').press('Enter');
    await A.locator('#messages li[data-mine=false]', { hasText: 'hi alice, all good' }).waitFor({ timeout: 30_000 });
    await eventually('alice\'s #typing clears after bob sent', async () => !/is typing/.test(await text(A.locator('#typing'))), { timeout: 15_000 });
    check((await aliceMessages.count()) >= 2, 'alice shows both messages');
  });

  const png = makePng(96, 64);
  await step('e) an image and a file', async () => {
    await A.locator('#composer-file').setInputFiles({ name: 'ferry-test.png', mimeType: 'image/png', buffer: png });
    const mineImage = A.locator('#messages li[data-kind=file][data-mine=true] img.preview');
    await mineImage.waitFor({ timeout: 30_000 });
    await eventually('alice\'s preview loads', () => imageLoaded(mineImage));
    const image = B.locator('#messages li[data-kind=file][data-mine=false] img.preview');
    await image.waitFor({ timeout: 30_000 });
    await eventually('bob\'s preview loads', () => imageLoaded(image), { timeout: 30_000 });
    equal(await image.evaluate((img) => img.naturalWidth), 96, 'the preview\'s width');
    equal(await image.getAttribute('alt'), 'ferry-test.png', 'the preview\'s alt');
    const download = B.locator('#messages li[data-kind=file][data-mine=false] a.download').first();
    await expectText(download, /Download ferry-test\.png/, 'the download link');
    // The bytes bob gets are alice's, served as a sandboxed raster image.
    const served = await B.evaluate(async (src) => {
      const r = await fetch(src);
      const bytes = new Uint8Array(await r.arrayBuffer());
      return { status: r.status, type: r.headers.get('content-type'), csp: r.headers.get('content-security-policy'), nosniff: r.headers.get('x-content-type-options'), bytes: Array.from(bytes) };
    }, await image.getAttribute('src'));
    equal(served.status, 200, 'the image\'s status');
    equal(served.type, 'image/png', 'the image\'s Content-Type');
    check(/sandbox/.test(served.csp ?? ''), `the image's CSP has sandbox (${served.csp})`);
    equal(served.nosniff, 'nosniff', 'the image\'s X-Content-Type-Options');
    check(Buffer.from(served.bytes).equals(png), 'bob gets the PNG alice sent, byte for byte');
    await shot(A, 'chat');

    // An HTML file is never shown inline: no preview, an attachment of type octet-stream.
    await A.locator('#composer-file').setInputFiles({
      name: 'note.html',
      mimeType: 'text/html',
      buffer: Buffer.from('<!doctype html><script>alert(1)</script><p>hi</p>'),
    });
    const htmlLink = B.locator('#messages li[data-kind=file] a.download', { hasText: 'note.html' });
    await htmlLink.waitFor({ timeout: 30_000 });
    check(
      (await B.locator('#messages li[data-kind=file]', { hasText: 'note.html' }).locator('img.preview').count()) === 0,
      'an HTML file has no preview',
    );
    const attachment = await B.evaluate(async (href) => {
      const r = await fetch(href);
      return { status: r.status, type: r.headers.get('content-type'), disposition: r.headers.get('content-disposition') };
    }, await htmlLink.getAttribute('href'));
    equal(attachment.status, 200, 'the HTML file\'s status');
    equal(attachment.type, 'application/octet-stream', 'the HTML file\'s Content-Type');
    check(/^attachment/.test(attachment.disposition ?? ''), `the HTML file is an attachment (${attachment.disposition})`);
  });

  await step('f) video call through TURN', async () => {
    await A.locator('#call-video').click();
    const aCall = A.locator('#call');
    const bCall = B.locator('#call');
    await expectAttr(aCall, 'data-state', /^(outgoing|connecting)$/, 'alice\'s call overlay');
    await expectAttr(bCall, 'data-state', 'incoming', 'bob\'s call overlay', 30_000);
    await expectText(B.locator('#call-status'), /Incoming/i, 'bob\'s #call-status');
    await B.locator('#call-accept').click();
    for (const [who, call] of [['alice', aCall], ['bob', bCall]]) {
      await expectAttr(call, 'data-ice', /^(connected|completed)$/, `${who}'s ICE`, 45_000);
      await expectAttr(call, 'data-relay', 'true', `${who}'s selected pair is a TURN relay`, 15_000);
      await expectAttr(call, 'data-state', 'connected', `${who}'s call state`, 15_000);
    }
    for (const [who, page] of [['alice', A], ['bob', B]]) {
      await eventually(`${who} receives video`, () => page.locator('#remote-video').evaluate((v) => v.videoWidth > 0), { timeout: 20_000 });
    }
    await shot(A, 'call');
    await A.locator('#call-hangup').click();
    await expectAttr(aCall, 'data-state', 'ended', 'alice\'s call after hanging up');
    // Bob's overlay says "ended" for 3 s, then hides: either will do.
    await eventually('bob\'s call ended (data-state=ended, or already hidden)', async () =>
      (await bCall.getAttribute('data-state', { timeout: 1000 })) === 'ended' || !(await bCall.isVisible()),
    { timeout: 30_000, interval: 100 });
    await aCall.waitFor({ state: 'hidden', timeout: 10_000 });
    await A.locator('#messages li[data-kind=call]').first().waitFor({ timeout: 30_000 });
    await B.locator('#messages li[data-kind=call]').first().waitFor({ timeout: 30_000 });
  });

  await step('g) relay restart', async () => {
    await stop(relay.proc, 'SIGKILL');
    await expectAttr(A.locator('#connection'), 'data-state', 'reconnecting', 'alice\'s #connection with the relay down', 30_000);
    await A.locator('#composer-text').fill('sent while the relay was down');
    await A.locator('#composer-text').press('Enter');
    await A.locator('#messages li[data-mine=true]', { hasText: 'sent while the relay was down' }).waitFor();
    await startRelay(relay, 'relay-restarted');
    await expectConnected(A, 'alice after the relay restart', 60_000);
    await expectConnected(B, 'bob after the relay restart', 60_000);
    await B.locator('#messages li[data-mine=false]', { hasText: 'sent while the relay was down' }).waitFor({ timeout: 60_000 });
  });

  await step('h) the local server\'s guards (plain HTTP)', async () => {
    const cookies = await alice.context.cookies(alice.origin);
    const cookie = cookies.find((c) => c.name === `ferry-ui-${alice.port}`);
    check(cookie, `the browser holds the cookie ferry-ui-${alice.port} (${JSON.stringify(cookies.map((c) => c.name))})`);
    check(cookie.httpOnly && cookie.sameSite === 'Strict', `the cookie is HttpOnly, SameSite=Strict (${JSON.stringify(cookie)})`);
    const withCookie = { cookie: `${cookie.name}=${cookie.value}` };
    const origin = alice.origin;

    const ok = await request(alice, { headers: withCookie });
    equal(ok.status, 200, 'GET /api/state with the cookie');
    check(/default-src 'none'/.test(ok.headers['content-security-policy'] ?? ''), `CSP on the API (${ok.headers['content-security-policy']})`);
    equal(ok.headers['x-content-type-options'], 'nosniff', 'X-Content-Type-Options on the API');
    check(/no-store/.test(ok.headers['cache-control'] ?? ''), 'Cache-Control: no-store on the API');
    const page = await request(alice, { path: '/', headers: withCookie });
    equal(page.status, 200, 'GET / with the cookie');
    check(/default-src 'none'/.test(page.headers['content-security-policy'] ?? ''), 'CSP on the page');
    check(!/recovery/i.test(ok.body), 'GET /api/state carries no recovery key');

    const noCookie = await request(alice);
    equal(noCookie.status, 401, 'GET /api/state without the cookie');
    check(/default-src 'none'/.test(noCookie.headers['content-security-policy'] ?? ''), 'CSP on a 401');
    equal((await request(alice, { path: '/', headers: {} })).status, 401, 'GET / without the cookie');
    const wrongCookie = await request(alice, { headers: { cookie: `${cookie.name}=${'0'.repeat(cookie.value.length)}` } });
    equal(wrongCookie.status, 401, 'GET /api/state with a wrong cookie');
    const bobsCookie = (await bob.context.cookies(bob.origin)).find((c) => c.name === `ferry-ui-${bob.port}`);
    const otherUi = await request(alice, { headers: { cookie: `${cookie.name}=${bobsCookie.value}` } });
    equal(otherUi.status, 401, 'GET alice\'s /api/state with bob\'s token');

    const rebound = await request(alice, { headers: { ...withCookie, host: `evil.example:${alice.port}` } });
    equal(rebound.status, 421, 'a request for Host evil.example');
    const otherPort = await request(alice, { headers: { ...withCookie, host: `127.0.0.1:${alice.port + 1}` } });
    equal(otherPort.status, 421, 'a request for another port');

    const body = JSON.stringify({ name: 'Mallory' });
    const json = { 'content-type': 'application/json' };
    const crossSite = await request(alice, { method: 'POST', path: '/api/profile', body, headers: { ...withCookie, ...json, origin: 'http://evil.example' } });
    equal(crossSite.status, 403, 'a POST with Origin http://evil.example');
    const noOrigin = await request(alice, { method: 'POST', path: '/api/profile', body, headers: { ...withCookie, ...json } });
    equal(noOrigin.status, 403, 'a POST without Origin');
    const sse = await requestHead(alice, { path: '/api/events', headers: { ...withCookie, origin: 'http://evil.example' } });
    equal(sse.status, 403, 'the event stream for Origin http://evil.example');
    const sameOrigin = await request(alice, { method: 'POST', path: '/api/log', body: JSON.stringify({ text: 'from node, same origin' }), headers: { ...withCookie, ...json, origin } });
    check(sameOrigin.status >= 200 && sameOrigin.status < 300, `a POST with the cookie and our Origin answers ${sameOrigin.status}`);
    const me = JSON.parse((await request(alice, { path: '/api/me', headers: withCookie })).body);
    equal(me.name, 'Alice', 'the profile name after the refused POSTs');

    const badToken = await request(alice, { path: `/?token=${'a'.repeat(alice.token.length)}` });
    equal(badToken.status, 401, 'GET /?token=WRONG');
    check(!badToken.headers['set-cookie'], `a wrong token sets no cookie (${badToken.headers['set-cookie']})`);
    const goodToken = await request(alice, { path: `/?token=${alice.token}` });
    check([200, 302, 303, 307].includes(goodToken.status), `GET /?token=RIGHT answers ${goodToken.status}`);
    const setCookie = String(goodToken.headers['set-cookie'] ?? '');
    check(setCookie.startsWith(`ferry-ui-${alice.port}=`) && /HttpOnly/i.test(setCookie) && /SameSite=Strict/i.test(setCookie), `the right token sets the cookie (${setCookie})`);
  });

  await step('sync log (both of alice\'s devices)', async () => {
    await nav(A, 'sync');
    await A.locator('#log-text').fill('hello from the phone');
    await A.locator('#log-send-form').getByRole('button', { name: 'Append event' }).click();
    await A.locator('#log li[data-seq]', { hasText: 'hello from the phone' }).waitFor();
    await nav(L, 'sync');
    await L.locator('#log li[data-seq]', { hasText: 'hello from the phone' }).waitFor({ timeout: 30_000 });
    await L.locator('#log li[data-seq]', { hasText: 'from node, same origin' }).waitFor();
    await shot(A, 'sync');
  });

  /** A POST to a `ferry ui`'s API as its own page would send it (cookie and Origin). */
  async function api(ui, p, body) {
    const cookie = (await ui.context.cookies(ui.origin)).find((c) => c.name === `ferry-ui-${ui.port}`);
    const answer = await request(ui, {
      method: 'POST',
      path: p,
      body: JSON.stringify(body),
      headers: { cookie: `${cookie.name}=${cookie.value}`, origin: ui.origin, 'content-type': 'application/json' },
    });
    check(answer.status === 200, `POST ${p} answered ${answer.status}: ${answer.body}`);
    return JSON.parse(answer.body);
  }

  await step('k) devices: rename; every device of the callee rings, one answers', async () => {
    await nav(A, 'devices');
    await A.locator('#rename-name').fill('alice phone');
    await A.locator('#rename-form').getByRole('button', { name: 'Rename' }).click();
    await expectText(A.locator('#device-list li[data-this=true]'), /alice phone/, 'the phone after renaming it');
    // The laptop learns the name from the user's log.
    await eventually('the laptop lists the phone as "alice phone"', async () => {
      await nav(L, 'sync');
      await nav(L, 'devices');
      return /alice phone/.test(await text(L.locator('#device-list li[data-this=false]')));
    }, { timeout: 30_000 });

    // Bob calls alice: her phone and her laptop ring; the laptop answers.
    await nav(B, 'chats');
    await B.locator(`#conv-list li[data-conv]`, { hasText: 'Alice' }).first().getByRole('button').first().click();
    await B.locator('#call-audio').click();
    const [aCall, lCall, bCall] = [A, L, B].map((page) => page.locator('#call'));
    await expectAttr(aCall, 'data-state', 'incoming', 'the phone rings', 30_000);
    await expectAttr(lCall, 'data-state', 'incoming', 'the laptop rings', 30_000);
    // A page reloaded while it rings rings again (the offer comes from GET /api/calls).
    await A.reload();
    await expectAttr(aCall, 'data-state', 'incoming', 'the phone, reloaded while it rings', 30_000);
    await L.locator('#call-accept').click();
    for (const [who, call] of [['laptop', lCall], ['bob', bCall]]) {
      await eventually(`${who}'s call connects`, async () =>
        ['connected', 'completed'].includes(await call.getAttribute('data-ice')), { timeout: 30_000 });
    }
    await eventually('the phone stops ringing (answered elsewhere)', async () =>
      (await aCall.getAttribute('data-state', { timeout: 1000 })) === 'ended' || !(await aCall.isVisible()),
    { timeout: 30_000, interval: 100 });
    await B.locator('#call-hangup').click();
    await expectAttr(bCall, 'data-state', 'ended', 'bob after hanging up');
    await eventually('the laptop\'s call ended', async () =>
      (await lCall.getAttribute('data-state', { timeout: 1000 })) === 'ended' || !(await lCall.isVisible()),
    { timeout: 30_000, interval: 100 });
  });

  await step('l) history loads as you scroll up', async () => {
    const conv = await B.locator('#conv-list li[data-conv]', { hasText: 'Alice' }).first().getAttribute('data-conv');
    for (let i = 1; i <= 60; i += 1) await api(alice, `/api/convs/${conv}/send`, { text: `page message ${i}` });
    // A fresh page: the chat opens on the newest page, as it would for someone coming back.
    await B.reload();
    await expectConnected(B, 'bob after reloading the page');
    await nav(B, 'chats');
    await B.locator(`#conv-list li[data-conv="${conv}"]`).getByRole('button').first().click();
    await B.locator('#messages li', { hasText: 'page message 60' }).waitFor({ timeout: 30_000 });
    const shown = await B.locator('#messages li[data-seq]').count();
    check(shown <= 60, `the chat opens on the newest page only (${shown} messages shown)`);
    check((await B.locator('#messages li', { hasText: /page message 1$/ }).count()) === 0, 'the oldest page message is not loaded yet');
    await eventually('scrolling up loads the older messages', async () => {
      await B.locator('#messages').evaluate((box) => { box.scrollTop = 0; box.dispatchEvent(new Event('scroll')); });
      return (await B.locator('#messages li', { hasText: /page message 1$/ }).count()) === 1;
    }, { timeout: 30_000, interval: 300 });
    const first = await B.locator('#messages li', { hasText: 'hello bob' }).count();
    check(first === 1, 'the whole history is reachable, back to the first message');
  });

  await step('m) a group: create, write, remove a member', async () => {
    await nav(A, 'chats');
    await A.locator('#group-new').click();
    await A.locator('#group-dialog').waitFor({ state: 'visible' });
    await A.locator('#group-title').fill('Trip');
    await A.locator(`#group-members input[name=member][value="${me.bob}"]`).check();
    await A.locator('#group-form').getByRole('button', { name: 'Create' }).click();
    await expectText(A.locator('#chat-title'), /Trip/, 'the new group\'s chat');
    await A.locator('#composer-text').fill('welcome to the trip');
    await A.locator('#composer-text').press('Enter');
    await nav(B, 'contacts');
    await nav(B, 'chats');
    const trip = B.locator('#conv-list li[data-conv]', { hasText: 'Trip' });
    await trip.waitFor({ timeout: 30_000 });
    await trip.getByRole('button').first().click();
    await B.locator('#messages li', { hasText: 'welcome to the trip' }).waitFor({ timeout: 30_000 });

    await A.locator('#members-button').click();
    await A.locator('#members-dialog').waitFor({ state: 'visible' });
    await axe(A, 'group members');
    await A.locator(`#member-list li[data-user="${me.bob}"] .remove-member`).click();
    await eventually('bob is no longer listed as a member', async () =>
      (await A.locator(`#member-list li[data-user="${me.bob}"]`).count()) === 0, { timeout: 30_000 });
    await A.locator('#members-close').click();
    await trip.waitFor({ state: 'detached', timeout: 30_000 });
  });

  await step('n) revoke the laptop', async () => {
    await nav(A, 'devices');
    await A.locator('#device-list li[data-this=false] .revoke').click();
    await A.locator('#revoke-dialog').waitFor({ state: 'visible' });
    await expectText(A.locator('#revoke-warning'), /cannot be undone/i, 'the revocation warning');
    await A.locator('#revoke-confirm').click();
    await expectAttr(A.locator('#device-list li[data-this=false]'), 'data-revoked', 'true', 'the laptop in the phone\'s list', 30_000);
    await expectAttr(L.locator('#connection'), 'data-state', 'stopped', 'the laptop once revoked', 30_000);
  });

  await step('o) block and unblock', async () => {
    await nav(B, 'contacts');
    const aliceItem = B.locator(`#contact-list li[data-user="${me.alice}"]`);
    await aliceItem.locator('.block').click();
    await expectAttr(aliceItem, 'data-state', 'blocked', 'alice in bob\'s list once blocked', 30_000);
    await aliceItem.locator('.unblock').click();
    await eventually('alice is no longer blocked', async () =>
      (await aliceItem.count()) === 0 || (await aliceItem.getAttribute('data-state')) !== 'blocked', { timeout: 30_000 });
  });

  await step('i) accessibility (axe-core)', async () => {
    await nav(A, 'chats');
    await A.locator(`#conv-list li[data-conv] button`).first().click();
    await A.locator('#chat').waitFor({ state: 'visible' });
    await axe(A, 'chats with an open chat');
    for (const view of ['contacts', 'devices', 'sync', 'me']) {
      await nav(A, view);
      await axe(A, view);
    }
    // Keyboard only: Tab reaches the navigation and Enter switches views; in a chat, the
    // composer is reachable and Enter sends.
    await A.locator('body').click({ position: { x: 5, y: 5 } });
    const focusTo = async (id) => {
      for (let i = 0; i < 60; i += 1) {
        if ((await A.evaluate(() => document.activeElement?.id)) === id) return;
        await A.keyboard.press('Tab');
      }
      throw new Failure(`Tab never reached #${id}`);
    };
    await focusTo('nav-contacts');
    await A.keyboard.press('Enter');
    await A.locator('#view-contacts').waitFor({ state: 'visible' });
    await focusTo('nav-chats');
    await A.keyboard.press('Enter');
    await A.locator('#view-chats').waitFor({ state: 'visible' });
    await A.locator('#conv-list li[data-conv] button').first().focus();
    await A.keyboard.press('Enter');
    await A.locator('#chat').waitFor({ state: 'visible' });
    await focusTo('composer-text');
    await A.keyboard.type('typed with the keyboard only');
    await A.keyboard.press('Enter');
    await A.locator('#messages li[data-mine=true]', { hasText: 'typed with the keyboard only' }).waitFor();

    if (a11yViolations.length) {
      const lines = a11yViolations.map((v) => `  [${v.where}] ${v.impact} ${v.id}: ${v.help}\n${v.nodes.map((n) => `      ${n}`).join('\n')}`);
      throw new Failure(`axe-core found ${a11yViolations.length} serious/critical violation(s):\n${lines.join('\n')}`);
    }
  });

  await step('no page errors', async () => {
    check(pageProblems.length === 0, `the pages reported errors:\n  ${pageProblems.join('\n  ')}`);
    for (const proc of procs) {
      if (proc.name.startsWith('ui-')) check(!proc.exited, `${proc.name} ${proc.exited}`);
    }
  });
}

// ---------------------------------------------------------------------------------------

async function cleanup() {
  if (browser) await browser.close().catch(() => {});
  await Promise.all(procs.map((p) => stop(p)));
}

// Interrupted (Ctrl-C, CI timeout): leave no process behind.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    for (const p of procs) if (!p.exited) p.child.kill('SIGKILL');
    console.error(`interrupted (${signal}); kept ${tmp}`);
    process.exit(130);
  });
}
process.on('exit', () => {
  for (const p of procs) if (!p.exited) p.child.kill('SIGKILL');
});

let failed = false;
try {
  await main();
  if (consoleErrors.length) log(`console errors (not judged):\n  ${consoleErrors.join('\n  ')}`);
  log('PASS');
} catch (e) {
  failed = true;
  console.error(`\nFAILED in step "${currentStep}": ${e instanceof Failure ? e.message : e.stack || e}`);
  if (pageProblems.length) console.error(`\npage errors:\n  ${pageProblems.join('\n  ')}`);
  if (consoleErrors.length) console.error(`\nconsole errors:\n  ${consoleErrors.slice(-30).join('\n  ')}`);
  for (const proc of procs) {
    console.error(`\n--- ${proc.name} (${proc.exited ?? 'running'}), stderr tail (full log ${proc.logFile}):`);
    console.error(proc.stderr.text(30) || '(empty)');
    if (proc.name === 'coturn') console.error(proc.stdout.text(15));
  }
  if (browser) {
    for (const ui of Object.values(uis)) {
      if (!ui.page) continue;
      const file = path.join(tmp, `failure-${ui.name}.png`);
      await ui.page.screenshot({ path: file }).then(() => console.error(`screenshot of ${ui.name}: ${file}`), () => {});
    }
  }
} finally {
  await cleanup();
  if (!KEEP && !failed) fs.rmSync(tmp, { recursive: true, force: true });
  else console.error(`kept ${tmp}`);
}
process.exit(failed ? 1 : 0);
