// Loaded by index.html in headless Chromium; driver.mjs calls window.T.<name>(...args).
// Converse.js (from node_modules, no build step) logs in over XMPP-over-WebSocket (RFC 7395)
// or BOSH (XEP-0124/0206), whichever the settings handed to T.start() name; the helpers below read its state through the
// private _converse object a plugin of ours captures.
import converse from './node_modules/converse.js/dist/converse.min.js';

const state = { _converse: null, connected: false, received: [], events: [] };
const note = (what) => state.events.push(`${new Date().toISOString().slice(11, 23)} ${what}`);

converse.plugins.add('starling-conformance', {
    initialize() {
        const _converse = (state._converse = this._converse);
        const { api } = _converse;
        api.listen.on('connected', () => { state.connected = true; note('connected'); });
        api.listen.on('reconnected', () => note('reconnected'));
        api.listen.on('disconnected', () => { state.connected = false; note('disconnected'); });
        api.listen.on('message', (data) => {
            const a = data?.attrs || {};
            state.received.push({ from: a.from, type: a.type, body: a.body, sender: a.sender });
            note(`message from ${a.from}: ${a.body}`);
        });
    },
});

function feedback() {
    const fb = state._converse?.state?.connfeedback;
    return fb ? `status=${fb.get('connection_status')} message=${fb.get('message') || ''}` : 'no connfeedback';
}

async function until(pred, timeout_ms, step = 100) {
    const end = Date.now() + timeout_ms;
    for (;;) {
        const v = await pred();
        if (v) return v;
        if (Date.now() >= end) return null;
        await new Promise((r) => setTimeout(r, step));
    }
}

function withTimeout(promise, ms, what) {
    return Promise.race([promise, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: no answer in ${ms} ms`)), ms))]);
}

window.T = {
    /** Initializes Converse with auto_login; resolves once the session is up or failed. */
    async start(settings, timeout_ms) {
        try {
            await withTimeout(converse.initialize({
                whitelisted_plugins: ['starling-conformance'],
                authentication: 'login',
                auto_login: true,
                auto_reconnect: false,
                discover_connection_methods: false,
                persistent_store: 'localStorage',
                view_mode: 'fullscreen',
                i18n: 'en',
                loglevel: 'debug',
                play_sounds: false,
                show_desktop_notifications: false,
                assets_path: '/node_modules/converse.js/dist/',
                ...settings,
            }), timeout_ms, 'converse.initialize');
        } catch (e) {
            return { ok: false, detail: `initialize failed: ${e}; ${feedback()}` };
        }
        // Done when connected, or when the attempt ended (auto_reconnect is off).
        const ok = await until(() => state.connected || (state.events.some((e) => e.endsWith(' disconnected')) ? 'failed' : null), timeout_ms);
        if (ok === 'failed') return { ok: false, detail: `login failed: ${feedback()}; events: ${state.events.join(' | ')}` };
        if (!ok) return { ok: false, detail: `not connected after ${timeout_ms} ms; ${feedback()}; events: ${state.events.join(' | ')}` };
        const { api } = state._converse;
        const conn = api.connection.get();
        return {
            ok: true,
            jid: conn.jid,
            protocol: conn._proto?.socket?.protocol ?? null,
            bosh_sid: conn._proto?.sid ?? null, // Strophe's Bosh keeps the session id here
            detail: feedback(),
        };
    },

    /** Waits for a chat message with this body; returns what Converse parsed of it. */
    async waitMessage(body, timeout_ms) {
        const hit = await until(() => state.received.find((m) => m.body === body), timeout_ms);
        if (!hit) return { ok: false, detail: `received: ${JSON.stringify(state.received.slice(-5))}` };
        // Converse opens (or updates) the chat with the sender: the message must be in its model.
        const { api } = state._converse;
        const bare = hit.from.split('/')[0];
        const chat = await api.chats.get(bare);
        const stored = chat?.messages?.findWhere({ body }) ?? null;
        return { ok: true, from: hit.from, type: hit.type, sender: hit.sender, in_chat: !!stored };
    },

    /** Opens the chat with jid in the UI (the page shows it). */
    async openChat(jid, timeout_ms) {
        const { api } = state._converse;
        const chat = await withTimeout(api.chats.open(jid, {}, true), timeout_ms, 'api.chats.open');
        return { ok: !!chat, detail: chat ? `chat with ${chat.get('jid')}` : 'no chatbox' };
    },

    /** Sends a chat message through the chat model (what the UI's send button calls). */
    async sendMessage(jid, body, timeout_ms) {
        const { api } = state._converse;
        const chat = await withTimeout(api.chats.open(jid, {}, true), timeout_ms, 'api.chats.open');
        if (!chat) return { ok: false, detail: 'no chatbox' };
        const msg = await withTimeout(chat.sendMessage({ body }), timeout_ms, 'sendMessage');
        return { ok: !!msg, detail: msg ? `msgid=${msg.get('msgid')}` : 'sendMessage returned nothing' };
    },

    /** Adds jid to the roster (roster set + presence subscribe). */
    async addContact(jid, name, timeout_ms) {
        const { api } = state._converse;
        await withTimeout(api.waitUntil('rosterContactsFetched'), timeout_ms, 'rosterContactsFetched');
        const contact = await withTimeout(api.contacts.add({ jid, name }), timeout_ms, 'api.contacts.add');
        return { ok: !!contact, detail: contact ? JSON.stringify(contact.attributes) : 'no contact' };
    },

    /** The roster contact jid as Converse has it (subscription, ask, presence). */
    async contact(jid) {
        const { api } = state._converse;
        const c = await api.contacts.get(jid);
        if (!c) return null;
        return {
            jid: c.get('jid'),
            subscription: c.get('subscription'),
            ask: c.get('ask') ?? null,
            requesting: c.get('requesting') ?? null,
            nickname: c.get('nickname') ?? c.get('name') ?? null,
            status: c.getStatus?.() ?? null,
        };
    },

    /** Waits until the contact satisfies every field of want (e.g. {status: 'online'}). */
    async waitContact(jid, want, timeout_ms) {
        let last = null;
        const hit = await until(async () => {
            last = await window.T.contact(jid);
            return last && Object.entries(want).every(([k, v]) => last[k] === v) ? last : null;
        }, timeout_ms);
        return { ok: !!hit, contact: last };
    },

    /**
     * Converse's XEP-0191 blocklist: it makes one only when the server's domain lists
     * urn:xmpp:blocking in disco#info, and until then waits for it before opening a chat with
     * anyone not in the roster.
     */
    async blocklist(timeout_ms) {
        const { api } = state._converse;
        try {
            const list = await withTimeout(api.blocklist.get(), timeout_ms, 'api.blocklist.get');
            return { ok: true, detail: `blocklist with ${list.length} item(s)` };
        } catch (e) {
            return { ok: false, detail: String(e.message || e) };
        }
    },

    /** Visible text of the page (what a person would see). */
    text() {
        return document.body.innerText;
    },

    /** Logs out: Converse closes the stream (<close/>) and the WebSocket. */
    async logout(timeout_ms) {
        const { api } = state._converse;
        await withTimeout(api.user.logout(), timeout_ms, 'api.user.logout');
        return { ok: true, connected: state.connected, detail: feedback() };
    },

    /** RFC 7395 section 3.3.3: each WebSocket message is one complete XML element. */
    checkFrames(frames) {
        const bad = [];
        for (const f of frames) {
            const doc = new DOMParser().parseFromString(f, 'application/xml');
            const err = doc.getElementsByTagName('parsererror')[0];
            if (err) bad.push(`${f.slice(0, 200)} :: ${err.textContent.slice(0, 120)}`);
        }
        return bad;
    },

    /**
     * A bare browser WebSocket, no Converse (whose logout closes the socket itself right after
     * its <close/>): opens the stream, waits for the features, sends <close/> and waits for the
     * server's <close/> and for the server to close the WebSocket (RFC 7395 section 3.6).
     */
    rawClose(url, domain, timeout_ms) {
        return new Promise((resolve) => {
            const got = [];
            let sentClose = false;
            const ws = new WebSocket(url, 'xmpp');
            const done = (why, close) => {
                clearTimeout(timer);
                resolve({ why, protocol: ws.protocol, got, close });
            };
            const timer = setTimeout(() => { done('timeout', null); ws.close(); }, timeout_ms);
            ws.onopen = () => ws.send(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="${domain}" version="1.0"/>`);
            ws.onmessage = (ev) => {
                got.push(String(ev.data));
                if (!sentClose && /<stream:features\b/.test(ev.data)) {
                    sentClose = true;
                    ws.send('<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>');
                }
            };
            ws.onerror = () => got.push('(error event)');
            ws.onclose = (ev) => done('closed', { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
        });
    },

    /**
     * BOSH without Converse: creates a session (XEP-0124 section 7), terminates it (section 13)
     * and then sends one more request with the old sid, which the connection manager must
     * refuse with <body type='terminate' condition='item-not-found'/> (section 14).
     * Returns each exchange as {sent, status, body} (or {sent, error}).
     */
    async rawTerminate(url, domain, timeout_ms) {
        const NS = "xmlns='http://jabber.org/protocol/httpbind'";
        const steps = [];
        const post = async (body) => {
            const ctl = new AbortController();
            const timer = setTimeout(() => ctl.abort(), timeout_ms);
            const step = { sent: body };
            steps.push(step);
            try {
                const r = await fetch(url, { method: 'POST', body, signal: ctl.signal,
                    headers: { 'Content-Type': 'text/xml; charset=utf-8' } });
                step.status = r.status;
                step.body = await r.text();
            } catch (e) {
                step.error = String(e);
            } finally {
                clearTimeout(timer);
            }
            return step;
        };
        let rid = 1000000 + Math.floor(Math.random() * 1000000);
        const created = await post(`<body ${NS} xmlns:xmpp='urn:xmpp:xbosh' content='text/xml; charset=utf-8' hold='1' ` +
            `rid='${rid}' to='${domain}' ver='1.6' wait='5' xml:lang='en' xmpp:version='1.0'/>`);
        const sid = /\bsid=['"]([^'"]+)/.exec(created.body || '')?.[1];
        if (!sid) return { ok: false, sid: null, steps };
        await post(`<body ${NS} rid='${++rid}' sid='${sid}' type='terminate'>` +
            `<presence xmlns='jabber:client' type='unavailable'/></body>`);
        await post(`<body ${NS} rid='${++rid}' sid='${sid}'/>`);
        return { ok: true, sid, steps };
    },

    /** XEP-0124 framing: every request and response body is one <body/> of the httpbind namespace. */
    checkBodies(bodies) {
        const bad = [];
        for (const f of bodies) {
            const doc = new DOMParser().parseFromString(f, 'application/xml');
            const err = doc.getElementsByTagName('parsererror')[0];
            const root = doc.documentElement;
            if (err) bad.push(`${f.slice(0, 200)} :: ${err.textContent.slice(0, 120)}`);
            else if (root.localName !== 'body' || root.namespaceURI !== 'http://jabber.org/protocol/httpbind') {
                bad.push(`${f.slice(0, 200)} :: root is {${root.namespaceURI}}${root.localName}`);
            }
        }
        return bad;
    },

    events() {
        return state.events;
    },
};
window.dispatchEvent(new CustomEvent('conformance-ready'));
window.T.state = state; // for the driver's "eval" (debugging)
window.T_READY = true;
