#!/usr/bin/env python3
"""Converse.js driver: XMPP over WebSocket (RFC 7395), or over BOSH (XEP-0124/0206) with
--transport bosh, from a real browser client. Converse.js
14 runs in headless Chromium (Debian's, driven by playwright-core through converse/driver.mjs,
which serves converse/index.html and node_modules on a port of 127.0.0.1), logs in at
ws://HOST:HTTP/xmpp-websocket with auto_login, looks for XEP-0191 blocking on the server's
domain, adds an account logged in with slixmpp over TCP to its roster and sees its presence
once that account approves, receives a chat message from it, sends one back (typed into its
chat window), approves that account's own subscription, and logs out (the peer sees it go
offline). A bare WebSocket in the same page then checks the closing handshake: the server must
answer <close/> with <close/> and close the WebSocket. Every WebSocket frame is checked to be
one complete XML element (RFC 7395 section 3.3.3); all of them, and the page's console, are in
WORKDIR/converse-browser.log; WORKDIR/converse.png is the page with the chat open.

With --transport bosh Converse logs in at http://HOST:HTTP/http-bind instead (checks are named
converse-bosh-*, files converse-bosh-browser.log and converse-bosh.png) and the WebSocket checks
give way to BOSH ones, read off every POST to /http-bind and its response: the session creation
response carries sid, wait, requests and hold (XEP-0124 section 7); every request and response is
one <body/> of the httpbind namespace, answered with HTTP 200, and the rids go up by one; Converse's
logout is a <body type='terminate'/> the server answers; and a session made and terminated by hand
in the page is gone afterwards (item-not-found, XEP-0124 section 14).

Usage: converse_ws.py --starttls-port P --tls-port Q --http-port H --user paul --password X \
                      --peer quinn --peer-pass Y --workdir DIR [--transport websocket|bosh]
                      [--chromium PATH] [--cafile CRT] [--log FILE]
"""

import asyncio
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path

from common import Client, base_args, finish, is_presence, report, setup_logging, xml

P = "converse-"
HERE = Path(__file__).resolve().parent
LOG = logging.getLogger("conformance")
FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
HTTPBIND = "http://jabber.org/protocol/httpbind"


class Browser:
    """converse/driver.mjs: one JSON request a line on its stdin, one answer a line on its stdout."""

    def __init__(self, proc):
        self.proc = proc
        self.next_id = 1

    @classmethod
    async def start(cls, chromium, log, timeout=45):
        proc = await asyncio.create_subprocess_exec(
            "node", str(HERE / "converse" / "driver.mjs"), "--chromium", chromium, "--log", log,
            "--hard-limit-ms", "105000",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(HERE / "converse"), limit=64 * 1024 * 1024)
        b = cls(proc)
        hello = await b._read(timeout)
        return b, hello

    async def _read(self, timeout):
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"driver.mjs said nothing within {timeout}s"}
        if not line:
            err = (await self.proc.stderr.read()).decode(errors="replace")
            return {"ok": False, "error": f"driver.mjs exited ({self.proc.returncode}): {err.strip()[-400:]}"}
        return json.loads(line)

    async def request(self, timeout=15, **req):
        req["id"] = self.next_id
        req.setdefault("timeout", int(timeout * 1000))
        self.next_id += 1
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        await self.proc.stdin.drain()
        ans = await self._read(timeout + 5)
        if not ans.get("ok"):
            raise RuntimeError(ans.get("error", "no answer"))
        return ans.get("result")

    async def call(self, fn, *args, timeout=15):
        """window.T.fn(*args) in the page; the page's own time limit is the last argument."""
        return await self.request(timeout=timeout, call=fn, args=list(args))

    async def close(self):
        if self.proc.returncode is None:
            try:
                await self.request(timeout=10, quit=True)
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def short(s, n=300):
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[:n] + "..."


def frames_of(frames, direction):
    return [f["payload"] for f in frames if f["dir"] == direction]


async def scenario(args):
    jid = f"{args.user}@{args.domain}"
    peer_jid = f"{args.peer}@{args.domain}"
    if args.transport == "bosh":
        ws_url = f"http://{args.host}:{args.http_port}/http-bind"
    else:
        ws_url = f"ws://{args.host}:{args.http_port}/xmpp-websocket"

    # ---- what the driver needs: node, its packages, a Chromium
    if shutil.which("node") is None:
        report(P + "setup", False, "node is not installed")
        return
    if not (HERE / "converse" / "node_modules" / "converse.js" / "dist" / "converse.min.js").is_file() or \
            not (HERE / "converse" / "node_modules" / "playwright-core").is_dir():
        report(P + "setup", False, "converse.js or playwright-core missing in conformance/converse/node_modules (npm install failed?)")
        return
    chromium = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser") or ""
    if not chromium:
        report(P + "setup", False, "no Chromium (Debian package chromium) on PATH")
        return

    # ---- the peer, over TCP (STARTTLS)
    peer = Client("peer", peer_jid + "/converse-peer", args.peer_pass, args=args, direct_tls=False)
    ok, detail = await peer.login()
    if not ok:
        report(P + "peer-login", False, detail)
        return
    peer.x.send_presence()

    t0 = time.monotonic()
    browser, hello = await Browser.start(chromium, args.browser_log)
    if not hello.get("ok"):
        report(P + "setup", False, hello.get("error"))
        await peer.close()
        return
    LOG.info("browser up in %.1fs: %s", time.monotonic() - t0, hello.get("result"))
    report(P + "setup", True, f"Chromium {hello['result']['browser']} with Converse.js from node_modules at {hello['result']['url']}")
    try:
        await steps(args, browser, peer, jid, peer_jid, ws_url)
    except Exception as e:  # the browser side died or stopped answering: say so, not a traceback
        LOG.exception("scenario")
        report(P + "scenario", False, f"{type(e).__name__}: {e}")
    finally:
        await browser.close()
        await peer.close()


async def steps(args, browser, peer, jid, peer_jid, ws_url):
    bosh = args.transport == "bosh"
    # ---- login over WebSocket (or BOSH)
    url_setting = "bosh_service_url" if bosh else "websocket_url"
    try:
        res = await browser.call("start", {url_setting: ws_url, "jid": jid + "/converse", "password": args.password},
                                 20000, timeout=25)
    except Exception as e:
        res = {"ok": False, "detail": f"{e}"}
    frames = await browser.request(frames=True)
    sent, recv = frames_of(frames, "sent"), frames_of(frames, "recv")
    mech = next((m.group(1) for f in sent for m in [re.search(r"<auth [^>]*mechanism=['\"]([^'\"]+)", f)] if m), None)
    if not res.get("ok"):
        report(P + "login", False, f"{res.get('detail')}; frames: {frame_summary(frames)}")
        return
    bound = res.get("jid") or ""
    if bosh:
        ok = bound.split("/")[0] == jid and bool(res.get("bosh_sid"))
        report(P + "login", ok, f"bound {bound} over {ws_url}, BOSH sid={res.get('bosh_sid')!r}, SASL {mech}")
    else:
        ok = bound.split("/")[0] == jid and res.get("protocol") == "xmpp"
        report(P + "login", ok, f"bound {bound} over {ws_url}, subprotocol={res.get('protocol')!r}, SASL {mech}")
    # The server offers SCRAM; Converse (Strophe.js) must not have had to fall back to PLAIN.
    report(P + "sasl-scram", bool(mech) and mech.startswith("SCRAM-"),
           f"mechanism {mech}; offered: {offered_mechs(recv)}")

    if bosh:
        check_bosh_session(frames)
    else:
        # The stream as RFC 7395 frames it: <open/> (not <stream:stream>), one element a message.
        first = recv[0] if recv else ""
        opened = bool(re.match(r"<open\b", first)) and FRAMING in first and "version=\"1.0\"" in first.replace("'", '"')
        report(P + "ws.open", opened, f"first frame from the server: {short(first)}")

    # ---- XEP-0191 discovery: Converse asks the server's domain for urn:xmpp:blocking; without it
    # Converse never sets up its blocklist, and then cannot open a chat with anyone who is not in
    # its roster (it waits for the blocklist first), so the chats below are with a contact.
    try:
        bl = await browser.call("blocklist", 5000, timeout=7)
    except Exception as e:
        bl = {"ok": False, "detail": str(e)}
    feats = domain_features(frames_of(await browser.request(frames=True), "recv"), args.domain)
    report(P + "blocking.discovery", bl.get("ok"),
           bl.get("detail") if bl.get("ok") else
           f"{bl.get('detail')}: disco#info of {args.domain} lists {feats} (no urn:xmpp:blocking: XEP-0191 section 3 "
           f"discovers the feature on the server); Converse then waits forever before opening a chat with a "
           f"JID not in its roster")

    # ---- roster add + presence subscription: Converse adds the peer, the peer approves,
    # Converse sees the peer available.
    mk = peer.mark()
    try:
        res = await browser.call("addContact", peer_jid, f"{args.peer.capitalize()} the peer", 10000, timeout=12)
    except Exception as e:
        res = {"ok": False, "detail": str(e)}
    sub = await peer.wait_for(lambda st: is_presence(st, jid, "subscribe"), since=mk, timeout=10)
    c = await browser.call("waitContact", peer_jid, {"ask": "subscribe"}, 5000, timeout=7)
    contact = c.get("contact") or {}
    report(P + "roster.add", bool(res.get("ok")) and contact.get("jid") == peer_jid,
           f"contact as Converse has it after the roster push: {contact}" if res.get("ok") else res.get("detail"))
    report(P + "presence.subscribe", sub is not None,
           xml(sub) if sub is not None else f"peer got no subscribe: {peer.recent(mk)}")
    if sub is not None:
        peer.x.send_presence(pto=jid, ptype="subscribed")
        c = await browser.call("waitContact", peer_jid, {"subscription": "to", "status": "online"}, 10000, timeout=12)
        report(P + "presence.after-subscription", c.get("ok"), f"contact: {c.get('contact')}")
    else:
        report(P + "presence.after-subscription", False, "no subscription request reached the peer")

    # ---- slixmpp (TCP) -> Converse (WebSocket)
    body = f"to converse {uuid.uuid4().hex[:8]}"
    peer.x.send_message(mto=jid, mbody=body, mtype="chat")
    try:
        got = await browser.call("waitMessage", body, 10000, timeout=12)
    except Exception as e:
        got = {"ok": False, "detail": str(e)}
    ok = got.get("ok") and (got.get("from") or "").split("/")[0] == peer_jid and got.get("type") == "chat"
    report(P + "message.receive", bool(ok),
           f"from={got.get('from')} type={got.get('type')} in_chat={got.get('in_chat')}" if got.get("ok") else got.get("detail"))

    # ---- Converse -> slixmpp: typed into the chat window and sent with Enter, like a person
    body = f"from converse {uuid.uuid4().hex[:8]}"
    mk = peer.mark()
    how = "typed in the chat window"
    try:
        await browser.call("openChat", peer_jid, 10000, timeout=12)
        await browser.request(timeout=12, type={"selector": "converse-chat textarea.chat-textarea", "text": body})
    except Exception as e:
        # The UI did not cooperate: send through the chat model, and say so.
        LOG.warning("typing into Converse failed (%s); sending through the API", e)
        how = f"sent through the API (typing failed: {short(e, 120)})"
        try:
            await browser.call("sendMessage", peer_jid, body, 10000, timeout=12)
        except Exception as e2:
            how += f"; API send failed too: {e2}"
    got = await peer.wait_for(lambda st: st.tag == "{jabber:client}message" and st["body"] == body, since=mk, timeout=10)
    ok = got is not None and got["from"].bare == jid and got["type"] == "chat"
    report(P + "message.send", ok, f"{how}: {xml(got)}" if got is not None else f"{how}; peer got: {peer.recent(mk)}")

    # ---- the peer asks for Converse's presence: Converse approves by itself (the peer is
    # already its contact), and the peer then sees Converse available.
    mk = peer.mark()
    peer.x.send_presence(pto=jid, ptype="subscribe")
    approved = await peer.wait_for(lambda st: is_presence(st, jid, "subscribed"), since=mk, timeout=10)
    avail = await peer.wait_for(lambda st: is_presence(st, None, "available") and st["from"].bare == jid,
                                since=mk, timeout=5)
    report(P + "presence.approve", approved is not None and avail is not None,
           f"subscribed: {xml(approved) if approved is not None else None}; "
           f"available: {xml(avail) if avail is not None else None}" if approved is not None and avail is not None
           else f"peer got: {peer.recent(mk)}")

    # What a person would see now (the chat with the peer), for whoever reads the logs.
    try:
        await browser.request(timeout=10, screenshot=os.path.join(args.workdir, P.rstrip("-") + ".png"))
    except Exception as e:
        LOG.warning("screenshot: %s", e)

    frames = await browser.request(frames=True)
    if bosh:
        await check_bosh_framing(browser, frames)
    else:
        await check_ws_framing(browser, frames)

    # ---- logout: Converse sends unavailable presence and <close/> (and closes the socket
    # itself at once), or over BOSH a <body type='terminate'/> with it; the peer sees it go offline.
    n0 = len(frames)
    mk = peer.mark()
    try:
        await browser.call("logout", 8000, timeout=10)
    except Exception as e:
        LOG.warning("logout: %s", e)
    gone = await peer.wait_for(lambda st: is_presence(st, None, "unavailable") and st["from"].bare == jid,
                               since=mk, timeout=8)
    frames = await browser.request(frames=True)
    report(P + "logout", gone is not None,
           xml(gone) if gone is not None else f"peer got: {peer.recent(mk)}; frames: {frame_summary(frames[n0:])}")

    if bosh:
        await asyncio.sleep(1)  # the answer to the terminate request may still be on its way
        check_bosh_terminate((await browser.request(frames=True))[n0:])
        await check_bosh_close(browser, ws_url, args.domain)
    else:
        await check_ws_close(browser, ws_url, args.domain)


async def check_ws_framing(browser, frames):
    # ---- every frame one complete element (RFC 7395 section 3.3.3)
    payloads = [f["payload"] for f in frames if f["dir"] in ("sent", "recv")]
    bad = await browser.call("checkFrames", payloads, timeout=10)
    stream_prefix = [p for p in frames_of(frames, "recv") if re.match(r"<stream:stream\b|</stream:stream>", p)]
    report(P + "ws.framing", not bad and not stream_prefix,
           f"{len(payloads)} frames, each one well-formed element" if not bad and not stream_prefix
           else f"not one element: {bad[:3]}; stream tags: {stream_prefix[:2]}")


async def check_ws_close(browser, ws_url, domain):
    # ---- the closing handshake, from a bare WebSocket in the same page: the server must
    # answer <close/> with <close/> and then close the WebSocket (RFC 7395 section 3.6).
    try:
        r = await browser.call("rawClose", ws_url, domain, 8000, timeout=10)
    except Exception as e:
        r = {"why": f"error: {e}", "got": [], "close": None}
    got = r.get("got") or []
    server_close = any(re.match(r"<close\b", g) and FRAMING in g for g in got)
    ok = r.get("why") == "closed" and server_close and got and re.match(r"<close\b", got[-1])
    report(P + "ws.close", bool(ok),
           f"server answered <close/> and closed the WebSocket: {r.get('close')}" if ok else
           f"{r.get('why')}; close={r.get('close')}; received: {' | '.join(short(g, 160) for g in got[-4:])}")


def attr(xml_text, name):
    """The value of attribute name on the first element of xml_text (None when absent)."""
    m = re.match(r"\s*<[^>]*?\s" + re.escape(name) + r"\s*=\s*(['\"])(.*?)\1", xml_text or "", re.S)
    return m.group(2) if m else None


def bosh_pairs(frames):
    """[(request, response or None)] of the BOSH requests in frames, in the order they were sent."""
    sent = [f for f in frames if f.get("bosh") and f["dir"] == "sent"]
    answers = {f["seq"]: f for f in frames if f.get("bosh") and f["dir"] in ("recv", "error")}
    return [(s, answers.get(s["seq"])) for s in sent]


def check_bosh_session(frames):
    # ---- XEP-0124 section 7 / XEP-0206 section 3: the session creation response
    pairs = bosh_pairs(frames)
    if not pairs:
        report(P + "session", False, "no POST to /http-bind seen")
        return
    req, resp = pairs[0]
    body = (resp or {}).get("payload", "")
    status = (resp or {}).get("status")
    values = {a: attr(body, a) for a in ("sid", "wait", "requests", "hold", "ver", "xmpp:version")}
    cors = ((resp or {}).get("headers") or {}).get("access-control-allow-origin")
    problems = []
    if attr(req["payload"], "sid") is not None:
        problems.append("the first request already had a sid")
    if status != 200:
        problems.append(f"HTTP {status}")
    if not re.match(r"\s*<body\b", body) or HTTPBIND not in body:
        problems.append("the response is not a <body/> of the httpbind namespace")
    for a in ("sid", "wait", "requests", "hold"):
        if not values[a]:
            problems.append(f"no {a} attribute")
        elif a != "sid" and not values[a].isdigit():
            problems.append(f"{a}={values[a]!r} is not a number")
    if attr(req["payload"], "wait") and (values["wait"] or "").isdigit() and \
            int(values["wait"]) > int(attr(req["payload"], "wait")):
        problems.append(f"wait {values['wait']} is more than the client's {attr(req['payload'], 'wait')}")
    if attr(req["payload"], "xmpp:version") and values["xmpp:version"] != "1.0":
        problems.append("no xmpp:version='1.0' (XEP-0206 section 3)")
    detail = (f"request: {short(req['payload'], 400)}; response HTTP {status} (CORS {cors!r}): {short(body, 600)}")
    report(P + "session", not problems,
           f"sid={values['sid']} wait={values['wait']} requests={values['requests']} hold={values['hold']} "
           f"ver={values['ver']} xmpp:version={values['xmpp:version']}; {detail}" if not problems
           else f"{'; '.join(problems)}; {detail}")


async def check_bosh_framing(browser, frames):
    # ---- every request and response one <body/> (XEP-0124 section 4), HTTP 200, rids + 1 each
    pairs = bosh_pairs(frames)
    bodies = [s["payload"] for s, _ in pairs] + [r["payload"] for _, r in pairs if r and r["dir"] == "recv"]
    bad = await browser.call("checkBodies", bodies, timeout=10) if bodies else ["no BOSH requests"]
    not_ok = [f"#{s['seq']} {short(s['payload'], 160)} -> "
              + (f"HTTP {r.get('status')} {short(r['payload'], 200)}" if r and r["dir"] == "recv"
                 else f"{(r or {}).get('payload', 'no response yet')}")
              for s, r in pairs if r is not None and (r["dir"] != "recv" or r.get("status") != 200)]
    rids = [int(attr(s["payload"], "rid")) for s, _ in pairs if (attr(s["payload"], "rid") or "").isdigit()]
    jumps = [(a, b) for a, b in zip(rids, rids[1:]) if b != a + 1]
    ok = not bad and not not_ok and len(rids) == len(pairs) and not jumps
    open_now = sum(1 for _, r in pairs if r is None)
    report(P + "framing", ok,
           f"{len(pairs)} requests (rid {rids[0] if rids else None}..{rids[-1] if rids else None}, {open_now} still held), "
           f"{len(bodies)} bodies, each one <body/> of {HTTPBIND}, every response HTTP 200" if ok
           else f"not one <body/>: {bad[:3]}; not HTTP 200: {not_ok[:3]}; rid jumps: {jumps[:3]}; "
                f"{len(pairs) - len(rids)} request(s) without a numeric rid")


def check_bosh_terminate(frames):
    # ---- Converse's logout over BOSH: <body type='terminate'/> (XEP-0124 section 13), answered
    pairs = bosh_pairs(frames)
    term = [(s, r) for s, r in pairs if attr(s["payload"], "type") == "terminate"]
    if not term:
        report(P + "terminate", False,
               f"no <body type='terminate'/> at logout; requests: {' | '.join(short(s['payload'], 160) for s, _ in pairs[-4:])}")
        return
    s, r = term[0]
    answered = r is not None and r["dir"] == "recv" and r.get("status") == 200
    # A browser may cancel the request itself once Strophe is done with it; say what happened.
    report(P + "terminate", answered,
           f"sent: {short(s['payload'], 300)}; answer: HTTP {r.get('status')} {short(r['payload'], 300)}" if answered
           else f"sent: {short(s['payload'], 300)}; answer: "
                f"{'none' if r is None else (r.get('status'), short(r['payload'], 300))}")


async def check_bosh_close(browser, url, domain):
    # ---- a session made and terminated in the page: afterwards its sid is refused with
    # <body type='terminate' condition='item-not-found'/> (XEP-0124 section 14)
    try:
        r = await browser.call("rawTerminate", url, domain, 8000, timeout=30)
    except Exception as e:
        r = {"ok": False, "steps": [], "error": str(e)}
    steps = r.get("steps") or []
    desc = " | ".join(f"{short(st.get('sent'), 160)} -> "
                      + (f"HTTP {st.get('status')} {short(st.get('body'), 200)}" if "status" in st else st.get("error", "?"))
                      for st in steps)
    ok = False
    if r.get("ok") and len(steps) == 3:
        t, after = steps[1], steps[2]
        t_ok = t.get("status") == 200 and re.match(r"\s*<body\b", t.get("body") or "")
        gone = after.get("status") in (200, 404) and attr(after.get("body"), "type") == "terminate" \
            and attr(after.get("body"), "condition") == "item-not-found"
        ok = bool(t_ok and gone)
    report(P + "close", ok,
           f"terminate answered, then the old sid refused: {desc}" if ok else f"{r.get('error', '')} {desc}".strip())


def domain_features(recv, domain):
    for f in recv:
        if "disco#info" in f and re.search(rf"from=['\"]{re.escape(domain)}['\"]", f) and "type='result'" in f.replace('"', "'"):
            return re.findall(r"<feature var=['\"]([^'\"]+)", f)
    return None


def offered_mechs(recv):
    for f in recv:
        if "<mechanisms" in f:
            return re.findall(r"<mechanism>([^<]+)</mechanism>", f)
    return None


def frame_summary(frames, n=8):
    items = [f"{f['dir']}: {short(f['payload'], 160)}" for f in frames if f["dir"] != "open"]
    return " | ".join(items[-n:]) if items else "(no WebSocket frames)"


async def main():
    p = base_args(__doc__)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--peer-pass", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--chromium", default="", help="Chromium binary (default: chromium on PATH)")
    p.add_argument("--transport", choices=("websocket", "bosh"), default="websocket",
                   help="websocket_url (RFC 7395) or bosh_service_url (XEP-0124/0206)")
    args = p.parse_args()
    global P
    P = "converse-bosh-" if args.transport == "bosh" else "converse-"
    setup_logging(args.log)
    args.browser_log = os.path.join(args.workdir, P + "browser.log")
    try:
        await asyncio.wait_for(scenario(args), 105)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 105 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
