#!/usr/bin/env python3
"""slixmpp driver for external components (XEP-0114): slixmpp's ComponentXMPP connects as
bot.localhost to the component listener and answers disco#info and echoes chat messages; a
slixmpp client account talks to it through the server. Raw sockets check what the server
refuses (a wrong secret, an unknown domain, a second connection for a connected domain).
While the component is away, messages to it wait and reach it after its next handshake, in
order and once, and queries get service-unavailable. One check per step.

Usage: slixmpp_component.py --starttls-port P --tls-port Q --component-port C \
           --component-domain bot.localhost --component-secret S --user nora --password X \
           [--cafile CRT] [--log FILE]
"""

import asyncio
import hashlib
import re
import sys
import time
import uuid

from slixmpp import ComponentXMPP, JID
from slixmpp.exceptions import IqError, IqTimeout

from common import Client, Inbox, base_args, finish, report, setup_logging, xml

P = "slixmpp-component."
NS_ACCEPT = "jabber:component:accept"
NS_CLIENT = "{jabber:client}"
NS_DISCO_INFO = "{http://jabber.org/protocol/disco#info}"
NS_DISCO_ITEMS = "{http://jabber.org/protocol/disco#items}"
NS_MAM = "{urn:xmpp:mam:2}"
NS_FWD = "{urn:xmpp:forward:0}"



# ------------------------------------------------------------- the component -----

class Component(Inbox):
    """slixmpp's ComponentXMPP that records every incoming stanza and, when `echo` is set,
    answers chat messages to echo@<domain> with "echo: <body>"."""

    def __init__(self, label, domain, secret, args, *, echo=True):
        self.label = label
        self.domain = domain
        self.echo = echo
        self.x = ComponentXMPP(domain, secret, args.host, args.component_port)
        x = self.x
        x.use_ipv6 = False
        x.use_aiodns = False
        x.reconnect_max_attempts = 0
        x.whitespace_keepalive = False
        x.register_plugin("xep_0030")
        x.plugin["xep_0030"].add_identity(category="component", itype="generic",
                                          name="Starling conformance echo bot", jid=domain)
        self.incoming = []  # (monotonic time, stanza)
        loop = asyncio.get_event_loop()
        self.session = loop.create_future()
        self.disconnected = loop.create_future()
        x.add_filter("in", self._filter_in)
        x.add_event_handler("session_start", self._on_session)
        x.add_event_handler("disconnected", self._on_disconnected)
        x.add_event_handler("connection_failed", self._on_failed)
        x.add_event_handler("stream_error", self._on_stream_error)
        x.add_event_handler("message", self._on_message)

    def _filter_in(self, stanza):
        self.incoming.append((time.monotonic(), stanza))
        return stanza

    def _on_session(self, _):
        if not self.session.done():
            self.session.set_result(True)

    def _on_disconnected(self, *_):
        if not self.session.done():
            self.session.set_exception(RuntimeError("disconnected before the handshake completed"))
        if not self.disconnected.done():
            self.disconnected.set_result(True)

    def _on_failed(self, err=None):
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"connection failed: {err}"))

    def _on_stream_error(self, err):
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"stream error: {xml(err)}"))

    def _on_message(self, msg):
        if not self.echo or msg["type"] not in ("chat", "normal") or not msg["body"]:
            return
        if str(msg["to"]) != f"echo@{self.domain}":
            return
        self.x.send_message(mto=msg["from"], mfrom=msg["to"], mbody=f"echo: {msg['body']}", mtype="chat")

    async def connect(self, timeout=10):
        """Connect and complete the handshake. Returns (ok, detail)."""
        self.x.connect()
        try:
            await asyncio.wait_for(asyncio.shield(self.session), timeout)
        except asyncio.TimeoutError:
            return False, f"no handshake within {timeout}s; got: {self.recent()}"
        except Exception as e:
            return False, str(e)
        return True, f"{self.domain} accepted (stream id {self.x.stream_id})"

    async def close(self, timeout=5):
        if self.disconnected.done():
            return
        try:
            self.x.disconnect(wait=2.0)
        except Exception:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self.disconnected), timeout)
        except asyncio.TimeoutError:
            t = self.x.transport
            if t is not None:
                t.abort()



def local(tag):
    return tag.rsplit("}", 1)[-1]


def body_of_el(el):
    """The body of a message element, whatever namespace it is in (client or component)."""
    for child in el:
        if local(child.tag) == "body":
            return child.text
    return None


def body_of(st):
    return body_of_el(st.xml)


# ---------------------------------------------------------------- raw sockets -----

async def raw_component(host, port, domain, secret, timeout=15):
    """Open a component stream by hand to `domain` and send the handshake for `secret` once
    the server's header is in. Returns everything the server sent until it closed the stream
    (or `timeout`), and what we sent."""
    sent = []
    reader, writer = await asyncio.open_connection(host, port)

    def send(s):
        sent.append(s)
        writer.write(s.encode())

    send(f"<?xml version='1.0'?><stream:stream xmlns='{NS_ACCEPT}' "
         f"xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>")
    buf = ""
    handshake_sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if not chunk:
                break
            buf += chunk.decode(errors="replace")
            if not handshake_sent and "<stream:error" not in buf:
                m = re.search(r"<stream:stream\b[^>]*\bid=(['\"])(.*?)\1[^>]*>", buf)
                if m:
                    digest = hashlib.sha1((m.group(2) + secret).encode()).hexdigest()
                    send(f"<handshake>{digest}</handshake>")
                    handshake_sent = True
            if "</stream:stream>" in buf:
                break
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except Exception:
            pass
    return buf, "".join(sent)


def stream_error_of(received):
    m = re.search(r"<stream:error>\s*<([a-z-]+)", received)
    return m.group(1) if m else None


async def check_refused(name, args, domain, secret, condition):
    try:
        received, sent = await raw_component(args.host, args.component_port, domain, secret)
    except OSError as e:
        report(name, False, f"could not connect to the component port: {e}")
        return
    got = stream_error_of(received)
    accepted = re.search(r"<handshake\s*/>|<handshake>\s*</handshake>", received) is not None
    report(name, got == condition and not accepted,
           f"expected stream error {condition}, got {got}; sent: {sent} received: {received}")


# ---------------------------------------------------------------- the client -----

def make_client(label, jid, password, args):
    c = Client(label, jid, password, args=args, direct_tls=False)
    for p in ("xep_0030", "xep_0059", "xep_0297", "xep_0313", "xep_0199"):
        c.x.register_plugin(p)
    return c


async def host_items(user, domain):
    items = await user.x.plugin["xep_0030"].get_items(jid=domain, timeout=10)
    q = items.xml.find(NS_DISCO_ITEMS + "query")
    jids = [i.get("jid") for i in q.findall(NS_DISCO_ITEMS + "item")] if q is not None else []
    return jids, items


def is_chat_to(st, to, body):
    return local(st.tag) == "message" and str(st["to"]) == to and body_of(st) == body


# ---------------------------------------------------------------- scenario -----

async def scenario(args):
    d = args.domain
    comp_domain = args.component_domain
    echo_jid = f"echo@{comp_domain}"

    # ---- a wrong secret and an unknown domain are refused ------------------------------
    await check_refused(P + "handshake.wrong-secret", args, comp_domain, args.component_secret + "-wrong", "not-authorized")
    await check_refused(P + "handshake.unknown-domain", args, f"nobody-{uuid.uuid4().hex[:6]}.{d}",
                        args.component_secret, "host-unknown")

    # ---- the component's handshake --------------------------------------------------------
    bot = Component("bot", comp_domain, args.component_secret, args)
    ok, detail = await bot.connect()
    report(P + "handshake", ok, detail)
    if not ok:
        for n in ("disco-items", "disco-info", "echo", "conflict", "offline.messages", "offline.iq"):
            report(P + n, False, "not run: the component could not connect")
        await bot.close()
        return

    user = make_client("user", f"{args.user}@{d}/component", args.password, args)
    ok, detail = await user.login()
    report(P + "login", ok, detail)
    if not ok:
        await asyncio.gather(bot.close(), user.close())
        return
    user.x.send_presence()
    me = str(user.jid)

    # ---- the host's disco#items lists the connected component ----------------------------
    try:
        jids, items = await host_items(user, d)
        report(P + "disco-items", comp_domain in jids, xml(items))
    except (IqError, IqTimeout) as e:
        report(P + "disco-items", False, f"disco#items on {d} failed: {e}")

    # ---- disco#info to the component reaches it; its answer reaches the user ---------------
    m = bot.mark()
    try:
        info = await user.x.plugin["xep_0030"].get_info(jid=comp_domain, timeout=10)
        q = info.xml.find(NS_DISCO_INFO + "query")
        idents = [(i.get("category"), i.get("type")) for i in q.findall(NS_DISCO_INFO + "identity")] if q is not None else []
        seen = await bot.wait_for(lambda st: local(st.tag) == "iq" and st["type"] == "get"
                                  and str(st["from"]) == me and str(st["to"]) == comp_domain, since=m, timeout=1)
        ok = (seen is not None and str(info["from"]) == comp_domain
              and any(c == "component" and t for c, t in idents))
        report(P + "disco-info", ok,
               f"component got: {xml(seen) if seen is not None else bot.recent(m)}; user got: {xml(info)}")
    except (IqError, IqTimeout) as e:
        report(P + "disco-info", False, f"disco#info on {comp_domain} failed: {e}; component got: {bot.recent(m)}")

    # ---- a chat message to echo@<component>, and the echo back ---------------------------
    text = f"ping {uuid.uuid4().hex[:8]}"
    m_b, m_u = bot.mark(), user.mark()
    user.x.send_message(mto=echo_jid, mbody=text, mtype="chat")
    got = await bot.wait_for(lambda st: is_chat_to(st, echo_jid, text), since=m_b)
    back = await user.wait_for(lambda st: local(st.tag) == "message" and str(st["from"]) == echo_jid
                               and body_of(st) == f"echo: {text}", since=m_u)
    ok = got is not None and str(got["from"]) == me and got["type"] == "chat" and back is not None
    report(P + "echo", ok,
           f"component got: {xml(got) if got is not None else bot.recent(m_b)}; "
           f"user got: {xml(back) if back is not None else user.recent(m_u)}")

    # ---- both directions are in the user's archive (XEP-0313) ------------------------------
    if ok:
        try:
            iq = await user.x.plugin["xep_0313"].retrieve(with_jid=JID(echo_jid), rsm={"max": 20}, timeout=10)
            bodies = []
            for msg in iq["mam"]["results"]:
                res = msg.xml.find(NS_MAM + "result")
                fwd = res.find(NS_FWD + "forwarded") if res is not None else None
                inner = fwd.find(NS_CLIENT + "message") if fwd is not None else None
                if inner is not None:
                    bodies.append((JID(inner.get("from", "")).bare, body_of_el(inner)))
            want = [(f"{args.user}@{d}", text), (echo_jid, f"echo: {text}")]
            report(P + "echo.archived", bodies == want, f"archive with {echo_jid}: {bodies}; expected {want}")
        except (IqError, IqTimeout) as e:
            report(P + "echo.archived", False, f"MAM query failed: {e}")
    else:
        report(P + "echo.archived", False, "not run: the echo failed")

    # ---- a second connection for the same domain gets conflict; the first one stays ---------
    await check_refused(P + "conflict", args, comp_domain, args.component_secret, "conflict")
    m_b = bot.mark()
    text = f"still there {uuid.uuid4().hex[:6]}"
    user.x.send_message(mto=echo_jid, mbody=text, mtype="chat")
    got = await bot.wait_for(lambda st: is_chat_to(st, echo_jid, text), since=m_b)
    report(P + "conflict.first-stays", got is not None and not bot.disconnected.done(),
           xml(got) if got is not None else f"component got: {bot.recent(m_b)}; disconnected={bot.disconnected.done()}")

    # ---- while the component is away ----------------------------------------------------
    await bot.close()
    # Wait until the server has let go of it (it leaves the host's disco#items).
    listed = True
    deadline = time.monotonic() + 5
    while listed and time.monotonic() < deadline:
        try:
            jids, items = await host_items(user, d)
            listed = comp_domain in jids
        except (IqError, IqTimeout):
            pass
        if listed:
            await asyncio.sleep(0.1)
    report(P + "disconnect.disco-items", not listed,
           f"{comp_domain} still listed 5 s after the component closed its stream" if listed else xml(items))

    tag = uuid.uuid4().hex[:6]
    bodies = [f"while away {tag} #{i}" for i in range(1, 4)]
    m_u = user.mark()
    for b in bodies:
        user.x.send_message(mto=echo_jid, mbody=b, mtype="chat")

    iq = user.x.Iq()
    iq["type"] = "get"
    iq["to"] = comp_domain
    iq.enable("disco_info")
    try:
        resp = await iq.send(timeout=10)
        report(P + "offline.iq", False, f"expected service-unavailable, got a result: {xml(resp)}")
    except IqError as e:
        cond = e.iq["error"]["condition"]
        report(P + "offline.iq", cond == "service-unavailable" and str(e.iq["from"]) == comp_domain, xml(e.iq))
    except IqTimeout:
        report(P + "offline.iq", False, "no answer within 10 s")

    # The messages must not come back to the user as errors.
    await asyncio.sleep(0.5)
    bounced = [xml(s) for _, s in user.incoming[m_u:] if local(s.tag) == "message" and s["type"] == "error"]

    bot2 = Component("bot-again", comp_domain, args.component_secret, args, echo=False)
    ok, detail = await bot2.connect()
    if not ok:
        report(P + "offline.messages", False, f"the component could not reconnect: {detail}")
    else:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            n = sum(1 for _, s in bot2.incoming if local(s.tag) == "message" and body_of(s) in bodies)
            if n >= len(bodies):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # time for duplicates to show up
        got = [s for _, s in bot2.incoming if local(s.tag) == "message" and body_of(s) in bodies]
        order = [body_of(s) for s in got]
        addressed = all(str(s["from"]) == me and str(s["to"]) == echo_jid for s in got)
        ok = order == bodies and addressed and not bounced
        report(P + "offline.messages", ok,
               f"expected {bodies} once each, in order, from {me} to {echo_jid}; got {order}; "
               f"bounced to the user: {bounced or 'none'}; stanzas: {' | '.join(xml(s) for s in got)}")
    await asyncio.gather(bot2.close(), user.close())


async def main():
    p = base_args(__doc__)
    p.add_argument("--component-port", type=int, required=True)
    p.add_argument("--component-domain", default="bot.localhost")
    p.add_argument("--component-secret", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 80)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 80 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
