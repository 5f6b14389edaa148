// Bridge between converse_ws.py and Converse.js in headless Chromium (playwright-core).
//
// Serves this folder (index.html, page.js, node_modules/converse.js) on a free port of
// 127.0.0.1, opens the page in Chromium and then answers one JSON request a line on stdin
// with one JSON line on stdout:
//   {"id": 1, "call": "start", "args": [...], "timeout": ms}   -> window.T.start(...args)
//   {"id": 2, "frames": true}                                  -> the WebSocket frames (and BOSH requests) so far
//   {"id": 3, "screenshot": "/path.png"}
//   {"id": 4, "eval": "js expression"}                         -> its value (for debugging)
//   {"id": 5, "quit": true}
// Every line written is {"id": ..., "ok": true, "result": ...} or {"id": ..., "ok": false, "error": "..."};
// the first line is {"id": 0, "ok": ..., "result": {"url": ..., "browser": ...}} once the page is loaded.
// The page's console, every WebSocket frame and every BOSH request and response go to the log file (--log).
//
// Usage: node driver.mjs --chromium /usr/bin/chromium --log FILE
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.join(HERE, 'node_modules', 'converse.js', 'dist');
const args = Object.fromEntries(
    process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const logStream = args.log ? fs.createWriteStream(args.log, { flags: 'a' }) : process.stderr;
const t0 = Date.now();
const log = (s) => logStream.write(`[${((Date.now() - t0) / 1000).toFixed(3)}] ${s}\n`);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

// Never outlive the caller: a hard stop whatever happens.
const HARD_LIMIT_MS = Number(args['hard-limit-ms'] || 110000);
setTimeout(() => { log(`hard limit ${HARD_LIMIT_MS} ms reached, exiting`); process.exit(3); }, HARD_LIMIT_MS).unref();

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
    '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml', '.png': 'image/png',
    '.woff': 'font/woff', '.woff2': 'font/woff2', '.ttf': 'font/ttf', '.map': 'application/json' };

function serve() {
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, 'http://x');
        const rel = path.normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, '');
        const isFile = (f) => f.startsWith(HERE) && fs.existsSync(f) && fs.statSync(f).isFile();
        let file = path.join(HERE, rel === '/' ? 'index.html' : rel);
        // Converse's OMEMO library fetches its WebAssembly next to the page: serve it from dist/.
        if (!isFile(file)) file = path.join(DIST, rel);
        if (!isFile(file)) {
            log(`http 404 ${req.url}`);
            res.writeHead(404).end();
            return;
        }
        res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store' });
        fs.createReadStream(file).pipe(res);
    });
    return new Promise((resolve, reject) => {
        server.on('error', reject);
        server.listen(0, '127.0.0.1', () => resolve(server));
    });
}

let browser = null;
let server = null;
async function shutdown(code) {
    try { if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]); } catch (e) { log(`browser.close: ${e}`); }
    try { server?.close(); server?.closeAllConnections?.(); } catch {}
    logStream.end?.();
    process.exit(code);
}

async function main() {
    let chromium;
    try {
        ({ chromium } = await import('playwright-core'));
    } catch (e) {
        out({ id: 0, ok: false, error: `cannot load playwright-core: ${e.message}` });
        return shutdown(2);
    }
    server = await serve();
    const url = `http://127.0.0.1:${server.address().port}/index.html`;
    try {
        browser = await chromium.launch({
            executablePath: args.chromium || '/usr/bin/chromium',
            headless: true,
            timeout: 30000,
            // No network but loopback here: keep Chromium from calling home.
            args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
        });
    } catch (e) {
        out({ id: 0, ok: false, error: `chromium did not start: ${e.message.split('\n').slice(0, 4).join(' ')}` });
        return shutdown(2);
    }
    const page = await browser.newPage();
    // Only this machine is reachable (and only it may be asked): Converse's login page links
    // logos of its sponsors, which are refused here without a DNS lookup.
    await page.route((u) => !['127.0.0.1', 'localhost'].includes(u.hostname), (route) => {
        log(`blocked ${route.request().url()}`);
        return route.abort('blockedbyclient');
    });
    const frames = []; // {t, dir, url, payload}
    page.on('console', (m) => log(`console.${m.type()} ${m.text()}`));
    page.on('pageerror', (e) => log(`pageerror ${e.stack || e}`));
    page.on('requestfailed', (r) => log(`requestfailed ${r.url()} ${r.failure()?.errorText}`));
    page.on('websocket', (ws) => {
        const rec = (dir, payload) => {
            const p = typeof payload === 'string' ? payload : `<binary ${payload.length} bytes>`;
            frames.push({ t: Date.now() - t0, dir, url: ws.url(), payload: p });
            log(`ws ${dir} ${p}`);
        };
        log(`ws open ${ws.url()}`);
        frames.push({ t: Date.now() - t0, dir: 'open', url: ws.url(), payload: '' });
        ws.on('framesent', (f) => rec('sent', f.payload));
        ws.on('framereceived', (f) => rec('recv', f.payload));
        ws.on('socketerror', (e) => { log(`ws error ${e}`); frames.push({ t: Date.now() - t0, dir: 'error', url: ws.url(), payload: String(e) }); });
        ws.on('close', () => { log('ws close'); frames.push({ t: Date.now() - t0, dir: 'close', url: ws.url(), payload: '' }); });
    });
    // BOSH (XEP-0124/0206): every POST to /http-bind and its answer, in the same list as the
    // WebSocket frames: {dir: 'sent', seq, payload} when the request leaves, {dir: 'recv', seq,
    // status, headers, payload} when its response is complete ('error' when it failed).
    const isBosh = (r) => r.method() === 'POST' && new URL(r.url()).pathname === '/http-bind';
    const boshSeq = new WeakMap();
    let nextSeq = 1;
    page.on('request', (r) => {
        if (!isBosh(r)) return;
        const seq = nextSeq++;
        boshSeq.set(r, seq);
        const p = r.postData() ?? '';
        frames.push({ t: Date.now() - t0, dir: 'sent', bosh: true, seq, url: r.url(), payload: p });
        log(`bosh sent #${seq} ${p}`);
    });
    page.on('requestfinished', async (r) => {
        if (!boshSeq.has(r)) return;
        const seq = boshSeq.get(r);
        try {
            const resp = await r.response();
            const body = resp ? await resp.text() : '';
            const rec = { t: Date.now() - t0, dir: 'recv', bosh: true, seq, url: r.url(), status: resp?.status() ?? null,
                headers: resp ? resp.headers() : {}, payload: body };
            frames.push(rec);
            log(`bosh recv #${seq} HTTP ${rec.status} ${body}`);
        } catch (e) {
            frames.push({ t: Date.now() - t0, dir: 'error', bosh: true, seq, url: r.url(), payload: String(e) });
            log(`bosh #${seq} response unreadable: ${e}`);
        }
    });
    page.on('requestfailed', (r) => {
        if (!boshSeq.has(r)) return;
        frames.push({ t: Date.now() - t0, dir: 'error', bosh: true, seq: boshSeq.get(r), url: r.url(), payload: r.failure()?.errorText ?? 'failed' });
    });
    try {
        await page.goto(url, { timeout: 20000 });
        await page.waitForFunction(() => window.T_READY === true, null, { timeout: 20000 });
    } catch (e) {
        out({ id: 0, ok: false, error: `page did not load converse.js: ${e.message.split('\n')[0]}` });
        return shutdown(2);
    }
    out({ id: 0, ok: true, result: { url, browser: browser.version() } });

    const rl = readline.createInterface({ input: process.stdin });
    for await (const line of rl) {
        if (!line.trim()) continue;
        let req;
        try { req = JSON.parse(line); } catch (e) { out({ id: null, ok: false, error: `bad request: ${e}` }); continue; }
        const { id } = req;
        try {
            if (req.quit) { out({ id, ok: true, result: null }); break; }
            if (req.frames) { out({ id, ok: true, result: frames }); continue; }
            if (req.eval) { out({ id, ok: true, result: await page.evaluate(req.eval) }); continue; }
            if (req.screenshot) { await page.screenshot({ path: req.screenshot, timeout: 10000 }); out({ id, ok: true, result: req.screenshot }); continue; }
            if (req.type) {
                // Types into the focused element like a person, then presses Enter.
                await page.locator(req.type.selector).first().click({ timeout: req.timeout || 10000 });
                await page.keyboard.type(req.type.text, { delay: 10 });
                await page.keyboard.press('Enter');
                out({ id, ok: true, result: null });
                continue;
            }
            const limit = req.timeout || 10000;
            const result = await Promise.race([
                page.evaluate(([fn, a]) => window.T[fn](...a), [req.call, req.args || []]),
                new Promise((_, rej) => setTimeout(() => rej(new Error(`T.${req.call} did not return within ${limit + 2000} ms`)), limit + 2000)),
            ]);
            out({ id, ok: true, result });
        } catch (e) {
            out({ id, ok: false, error: String(e.message || e).split('\n')[0] });
        }
    }
    return shutdown(0);
}

main().catch((e) => { log(`fatal ${e.stack || e}`); out({ id: -1, ok: false, error: String(e) }); shutdown(1); });
