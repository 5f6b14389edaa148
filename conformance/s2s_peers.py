#!/usr/bin/env python3
"""s2s driver: Starling federated (RFC 6120 server-to-server, STARTTLS, XEP-0220 dialback) with
Debian's Prosody and ejabberd, each on its own loopback address and the standard ports:

    starling.test 127.0.0.2 (started here: `$STARLING_BIN serve` with its own config)
    prosody.test  127.0.0.3 and ejabberd.test 127.0.0.4 (conformance/s2s_peers.sh)

Each server's MUC service (XEP-0045) federates as a domain of its own: conference.starling.test
(Starling's built-in service), conference.prosody.test (Prosody's "muc" component) and
conference.ejabberd.test (ejabberd's mod_muc), on their servers' addresses. The six names go in
/etc/hosts for the run (a block of lines ending in "# starling-conformance", removed at the
end); Starling reaches the peers and their MUC services through its static routes ([s2s] routes). slixmpp clients log in to each server's c2s port (STARTTLS, certificates
not checked: all three are self-signed) and exchange real stanzas across.

Checks (one line each):
    s2s-setup                 root, the packages, /etc/hosts
    s2s-prosody-start, s2s-ejabberd-start, s2s-starling-start
    s2s-peers-federate        prosody.test <-> ejabberd.test, a message each way: the harness
                              itself works, whatever Starling does
    s2s-PEER-message-out      starling user -> PEER user
    s2s-PEER-message-in       PEER user -> starling user
    s2s-PEER-subscription     mutual subscription, then available presence each way, unavailable
                              when the other disconnects (and available again, probe answered)
    s2s-PEER-iq               XEP-0199 ping: PEER user -> starling.test, starling user -> PEER domain
    s2s-PEER-unknown-user     PEER user -> nobody@starling.test: a service-unavailable error back
    s2s-PEER-muc-join-starling  the Starling user creates an instant room on
                              conference.starling.test, the PEER user joins it: each sees the
                              other's occupant presence, a groupchat message each way (from room/nick)
    s2s-PEER-muc-join-peer    the same the other way round: the PEER user creates a room on
                              conference.PEER, the Starling user joins it
    s2s-PEER-pep              PEP (XEP-0163) across, between the mutually subscribed pair, both
                              logged in again with entity capabilities (XEP-0115) that carry
                              http://jabber.org/protocol/nick+notify: the Starling user publishes
                              a User Nickname (XEP-0172) while the PEER user is offline, the PEER
                              user logs in and gets it as the last item; the PEER user publishes,
                              the Starling user gets it live; the Starling user publishes again,
                              the PEER user gets it live (see pep_check)
    s2s-starling-shutdown     Starling exits 0 on SIGTERM, no panic in its log
for PEER in prosody, ejabberd. The two peers are driven at the same time, each with its own
Starling account (alice with Prosody, anna with ejabberd: a message to a bare JID with two
resources online could go to either), against bob@PEER.

Usage (root): s2s_peers.py [--bin target/release/starling] [--workdir DIR] [--log FILE]
"""

import argparse
import asyncio
import logging
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET

import common
from common import Client, finish, is_presence, report, roster_get, setup_logging, xml

HERE = Path(__file__).resolve().parent
HELPER = HERE / "s2s_peers.sh"
STARLING, PROSODY, EJABBERD = "starling.test", "prosody.test", "ejabberd.test"
ADDR = {STARLING: "127.0.0.2", PROSODY: "127.0.0.3", EJABBERD: "127.0.0.4"}
# Every name in the /etc/hosts block (s2s_peers.sh): the servers and their MUC services.
NAMES = dict(ADDR, **{f"conference.{d}": a for d, a in ADDR.items()})
PEERS = {"prosody": PROSODY, "ejabberd": EJABBERD}
LOCAL_USER = {"prosody": "alice", "ejabberd": "anna"}
PEER_CHECKS = ("message-out", "message-in", "subscription", "iq", "unknown-user",
               "muc-join-starling", "muc-join-peer", "pep")
ALL_CHECKS = (["s2s-setup", "s2s-prosody-start", "s2s-ejabberd-start", "s2s-starling-start",
               "s2s-peers-federate"]
              + [f"s2s-{p}-{c}" for p in PEERS for c in PEER_CHECKS]
              + ["s2s-starling-shutdown"])
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "{http://jabber.org/protocol/muc#user}"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_EVENT = "{http://jabber.org/protocol/pubsub#event}"
NS_NICK = "http://jabber.org/protocol/nick"
WAIT = 20  # seconds, every wait for a stanza across servers
log = logging.getLogger("s2s")


class StepFailed(Exception):
    pass


def reported():
    return {name for name, _ in common.RESULTS}


def fail_all(names, reason):
    for n in names:
        if n not in reported():
            report(n, False, reason)


# ------------------------------------------------------------------------ processes ----------
async def run_cmd(argv, timeout, env=None, own_session=False):
    """Run a command; returns (exit status or None on timeout, combined output).
    own_session: out of our process group, so that a signal sent to the whole group
    (`timeout` in conformance/run does that) does not stop it half-way."""
    log.info("run: %s", " ".join(map(str, argv)))
    try:
        proc = await asyncio.create_subprocess_exec(*map(str, argv), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, env=env,
                                                    start_new_session=own_session)
    except OSError as e:
        return 127, str(e)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, f"timed out after {timeout}s"
    text = out.decode(errors="replace")
    log.info("exit %s: %s", proc.returncode, text)
    return proc.returncode, text


async def helper(*args, timeout=150):
    """conformance/s2s_peers.sh; returns (ok, the last line of its output)."""
    rc, out = await run_cmd(["bash", HELPER, *args], timeout, own_session=args[0] == "cleanup")
    lines = [line for line in out.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if rc != 0:
        return False, f"s2s_peers.sh {args[0]}: {last or f'exit {rc}'}"
    return True, last


async def wait_listen(addr, port, seconds, proc=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.returncode is not None:
            return False
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(addr, port), 1)
            w.close()
            return True
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.2)
    return False


def tail(path, n=5):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(lines[-n:])


class Starling:
    """The driver's own Starling, serving starling.test with federation on."""

    def __init__(self, binary, work):
        self.bin = Path(binary)
        self.work = Path(work)
        self.config = self.work / "starling.toml"
        self.logfile = self.work / "starling.log"
        self.proc = None

    def write_config(self):
        data = self.work / "starling-data"
        data.mkdir(parents=True, exist_ok=True)
        # c2s_direct_tls: on this address too, instead of the default 0.0.0.0:5223.
        self.config.write_text(f"""[server]
hosts = ["{STARLING}"]
data_dir = "{data}"
shutdown_grace_secs = 3

[listen]
c2s = ["127.0.0.2:5222"]
c2s_direct_tls = ["127.0.0.2:5223"]
s2s = ["127.0.0.2:5269"]

[s2s]
enabled = true
# Static routes: domain -> address, used before DNS.
routes = {{ "{PROSODY}" = "127.0.0.3:5269", "{EJABBERD}" = "127.0.0.4:5269", "conference.{PROSODY}" = "127.0.0.3:5269", "conference.{EJABBERD}" = "127.0.0.4:5269" }}

[log]
level = "debug"
""")

    async def start(self, users):
        """users: {localpart: password}. Returns (ok, detail)."""
        if not (self.bin.is_file() and os.access(self.bin, os.X_OK)):
            return False, f"no Starling binary at {self.bin}"
        self.write_config()
        env = dict(os.environ, RUST_LOG="warn")
        rc, out = await run_cmd([self.bin, "check-config", "--config", self.config], 30, env)
        if rc != 0:
            return False, (f"`starling check-config` rejects the federation config {self.config} "
                           f"(listen.s2s / [s2s] not built yet?): {' '.join(out.split())[-400:]}")
        for user, pw in users.items():
            rc, out = await run_cmd([self.bin, "user", "add", f"{user}@{STARLING}", f"--password={pw}",
                                     "--config", self.config], 30, env)
            if rc != 0:
                return False, f"starling user add {user}@{STARLING} failed: {' '.join(out.split())[-300:]}"
        with open(self.logfile, "ab") as lf:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.bin), "serve", "--config", str(self.config),
                stdin=asyncio.subprocess.DEVNULL, stdout=lf, stderr=asyncio.subprocess.STDOUT)
        (self.work / "starling.pid").write_text(f"{self.proc.pid}\n")
        if not (await wait_listen(ADDR[STARLING], 5222, 20, self.proc)
                and await wait_listen(ADDR[STARLING], 5269, 5, self.proc)):
            state = (f"exited {self.proc.returncode}" if self.proc.returncode is not None
                     else "not listening on 127.0.0.2:5222 and :5269 after 20 s")
            return False, f"starling serve {state}: {tail(self.logfile)}"
        return True, f"pid {self.proc.pid}, config {self.config}, log {self.logfile}"

    async def stop(self):
        """SIGTERM; returns (ok, detail) about the shutdown, or None if it never ran."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                return False, "still running 10 s after SIGTERM (killed)"
            rc = self.proc.returncode
            ok, detail = rc == 0, f"exit status {rc} after SIGTERM"
        else:
            ok, detail = False, f"died during the run (exit {self.proc.returncode})"
        try:
            panic = next((line for line in self.logfile.read_text(errors="replace").splitlines()
                          if re.search(r"panicked", line)), None)
        except OSError:
            panic = None
        if panic:
            ok, detail = False, f"{detail}; {panic}"
        return ok, detail


# ---------------------------------------------------------------------------- clients -------
CLIENTS = []


def server_args(domain):
    return argparse.Namespace(host=ADDR[domain], starttls_port=5222, tls_port=0, cafile="")


PEP_PLUGINS = ("xep_0030", "xep_0060", "xep_0115", "xep_0163", "xep_0172")


async def features_of(c):
    """The client's own disco#info features (what its caps ver stands for)."""
    info = await c.x.plugin["xep_0030"].get_info(None, None, local=True)
    if hasattr(info, "get_plugin") and info.get_plugin("disco_info", check=True) is not None:
        info = info["disco_info"]
    return set(info["features"])


async def login(user, domain, password, resource, pep=False):
    """Log in (STARTTLS, the server's best mechanism), get the roster and send initial
    presence, as a client does: subscription approvals go to interested resources only (those
    that asked for the roster, RFC 6121 2.1.6 / 3.1.6).
    pep: with slixmpp's xep_0115 (entity capabilities on every available presence, disco#info
    of the caps node answered) and xep_0172, which registers the nick PEP node with xep_0163:
    the disco features carry http://jabber.org/protocol/nick+notify. An identity of its own
    per account makes the caps ver unique, so that every server asks each client for it."""
    c = Client(f"{user}@{domain}", f"{user}@{domain}/{resource}", password,
               args=server_args(domain), direct_tls=False, mech=None)
    if pep:
        for plugin in PEP_PLUGINS:
            c.x.register_plugin(plugin)
        c.x.plugin["xep_0030"].add_identity(category="client", itype="pc",
                                            name=f"starling s2s conformance {user}@{domain}")
    CLIENTS.append(c)
    ok, detail = await c.login(timeout=WAIT)
    if ok:
        try:
            await roster_get(c, timeout=WAIT)
        except Exception as e:  # IqError, IqTimeout
            return c, False, f"{user}@{domain}: roster get failed: {e}"
        if pep:
            # xep_0172 registers +notify at session bind and recomputes the caps in the
            # background; recompute here too, so the initial presence has the final ver.
            await c.x.plugin["xep_0115"].update_caps(broadcast=False)
            detail += f" caps ver {await c.x.plugin['xep_0115'].get_verstring()}"
            if NS_NICK + "+notify" not in await features_of(c):
                return c, False, f"{user}@{domain}: no {NS_NICK}+notify in the client's disco features"
        c.x.send_presence()
    return c, ok, f"{user}@{domain}: {detail}"


def connected(*clients):
    for c in clients:
        if c.disconnected.done() or not c.session.done():
            raise StepFailed(f"{c.label} is not connected")


def is_message(st, body=None, mtype=None):
    if st.tag != "{jabber:client}message":
        return False
    if body is not None and st["body"] != body:
        return False
    if mtype is not None and (st.xml.get("type") or "normal") != mtype:
        return False
    return True


def error_condition(st):
    err = st.xml.find("{jabber:client}error")
    if err is None:
        return None
    for child in err:
        if child.tag.startswith("{%s}" % NS_STANZAS) and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return None


async def message_check(sender, receiver, to):
    """sender sends a chat message to `to`; receiver must get it from sender's full JID."""
    connected(sender, receiver)
    body = f"s2s {sender.label} -> {to} {uuid.uuid4().hex[:8]}"
    ms, mr = sender.mark(), receiver.mark()
    sender.x.send_message(mto=to, mbody=body, mtype="chat")
    got = await receiver.wait_for(lambda st: is_message(st, body) and st.xml.get("type") != "error",
                                  since=mr, timeout=WAIT)
    if got is None:
        bounce = next((s for _, s in sender.incoming[ms:] if is_message(s, mtype="error")), None)
        return False, (f"{receiver.label} got nothing within {WAIT}s"
                       + (f"; {sender.label} got back {xml(bounce)}" if bounce is not None else "")
                       + f"; {receiver.label} got: {receiver.recent(mr, 4)}")
    problems = []
    if str(got["from"]) != str(sender.jid):
        problems.append(f"from={got['from']}, want {sender.jid}")
    if got.xml.get("type") != "chat":
        problems.append(f"type={got.xml.get('type')}, want chat")
    return not problems, "; ".join(problems + [xml(got)])


async def ping_check(client, to):
    connected(client)
    iq = client.x.Iq()
    iq["type"] = "get"
    iq["to"] = to
    ET.SubElement(iq.xml, "{urn:xmpp:ping}ping")
    try:
        resp = await iq.send(timeout=WAIT)
    except IqError as e:
        return False, f"{client.label} -> {to}: error {xml(e.iq)}"
    except IqTimeout:
        return False, f"{client.label} -> {to}: no answer within {WAIT}s"
    ok = resp.xml.get("type") == "result" and str(resp["from"]) == to
    return ok, f"{client.label} -> {to}: {xml(resp)}"


async def unknown_user_check(sender):
    connected(sender)
    to = f"nobody@{STARLING}"
    m = sender.mark()
    msg = sender.x.make_message(mto=to, mbody=f"to nobody {uuid.uuid4().hex[:8]}", mtype="chat")
    msg["id"] = mid = f"nobody-{uuid.uuid4().hex[:8]}"
    msg.send()
    got = await sender.wait_for(lambda st: is_message(st, mtype="error") and
                                (st["id"] == mid or st["from"].bare == to), since=m, timeout=WAIT)
    if got is None:
        return False, f"no error back within {WAIT}s; {sender.label} got: {sender.recent(m, 4)}"
    cond = error_condition(got)
    problems = []
    if cond != "service-unavailable":
        problems.append(f"condition {cond}, want service-unavailable")
    if str(got["from"]) != to:
        problems.append(f"from={got['from']}, want {to}")
    return not problems, "; ".join(problems + [xml(got)])


def muc_codes(st):
    """The muc#user status codes of a presence (strings)."""
    x = st.xml.find(NS_MUC_USER + "x")
    return {e.get("code") for e in x.findall(NS_MUC_USER + "status")} if x is not None else set()


def is_occupant(st, occupant, ptype="available"):
    """st: occupant's presence from the room (room@service/nick)."""
    return is_presence(st, ptype=ptype) and str(st["from"]) == occupant


async def muc_join(client, occupant, what):
    """Enter a room (XEP-0045 7.2, no history); returns its self-presence (status 110) or
    raises StepFailed (an error presence, or nothing within WAIT)."""
    connected(client)
    m = client.mark()
    pres = client.x.make_presence(pto=occupant)
    x = ET.SubElement(pres.xml, "{%s}x" % NS_MUC)
    ET.SubElement(x, "{%s}history" % NS_MUC, {"maxstanzas": "0"})
    pres.send()
    got = await client.wait_for(lambda st: st.tag == "{jabber:client}presence" and str(st["from"]) == occupant
                                and (st.xml.get("type") == "error" or "110" in muc_codes(st)),
                                since=m, timeout=WAIT)
    if got is None:
        raise StepFailed(f"{what}: no self-presence from {occupant} within {WAIT}s; "
                         f"{client.label} got: {client.recent(m, 4)}")
    if got.xml.get("type") == "error":
        raise StepFailed(f"{what}: {occupant} refused: {xml(got)}")
    return got


async def muc_check(owner, guest, service):
    """owner creates an instant room on service (XEP-0045 10.1.2), guest joins (7.2); each must
    see the other's occupant presence, then a groupchat message each way, from room/nick."""
    room = f"s2s-{uuid.uuid4().hex[:8]}@{service}"
    o_occ, g_occ = f"{room}/owner-{owner.jid.user}", f"{room}/guest-{guest.jid.user}"
    done = []
    try:
        pres = await muc_join(owner, o_occ, f"{owner.label} creating {room}")
        codes = muc_codes(pres)
        done.append(f"{owner.label} created {room}" + ("" if "201" in codes else f" (status {sorted(codes)}, no 201)"))
        # 10.1.2: accept the default configuration (an empty submitted form): the room unlocks.
        iq = owner.x.Iq()
        iq["type"], iq["to"] = "set", room
        q = ET.SubElement(iq.xml, "{%s}query" % NS_MUC_OWNER)
        ET.SubElement(q, "{jabber:x:data}x", {"type": "submit"})
        try:
            await iq.send(timeout=WAIT)
        except IqError as e:
            raise StepFailed(f"instant room refused: {xml(e.iq)}")
        except IqTimeout:
            raise StepFailed(f"no answer to the instant room configuration within {WAIT}s")
        done.append("instant room")

        mo, mg = owner.mark(), guest.mark()
        await muc_join(guest, g_occ, f"{guest.label} joining {room}")
        done.append(f"{guest.label} joined")
        # 7.2.3: the occupants' presence comes before the self-presence.
        if await guest.wait_for(lambda st: is_occupant(st, o_occ), since=mg, timeout=1) is None:
            raise StepFailed(f"{guest.label} did not get {o_occ}'s presence on joining; got: {guest.recent(mg, 4)}")
        done.append(f"{guest.label} saw {o_occ}")
        if await owner.wait_for(lambda st: is_occupant(st, g_occ), since=mo, timeout=WAIT) is None:
            raise StepFailed(f"{owner.label} did not see {g_occ} join within {WAIT}s; got: {owner.recent(mo, 4)}")
        done.append(f"{owner.label} saw {g_occ}")

        for sender, s_occ, receiver in ((owner, o_occ, guest), (guest, g_occ, owner)):
            body = f"groupchat from {sender.label} {uuid.uuid4().hex[:8]}"
            m = receiver.mark()
            sender.x.send_message(mto=room, mbody=body, mtype="groupchat")
            got = await receiver.wait_for(lambda st: is_message(st, body) and st.xml.get("type") != "error",
                                          since=m, timeout=WAIT)
            if got is None:
                raise StepFailed(f"{receiver.label} did not get {sender.label}'s groupchat message within {WAIT}s; "
                                 f"got: {receiver.recent(m, 4)}; {sender.label} got: {sender.recent(0, 3)}")
            if str(got["from"]) != s_occ or got.xml.get("type") != "groupchat":
                raise StepFailed(f"{receiver.label} got {sender.label}'s message as {xml(got)}, "
                                 f"want type groupchat from {s_occ}")
            done.append(f"{receiver.label} got groupchat from {s_occ}")
    except StepFailed as e:
        return False, f"{e}; steps passed: {', '.join(done) or 'none'}"
    finally:
        for c, occ in ((guest, g_occ), (owner, o_occ)):
            if not c.disconnected.done():
                c.x.send_presence(pto=occ, ptype="unavailable")
    return True, "; ".join(done)


def nick_event(st, publisher, nick):
    """st: a PEP event from publisher's bare JID with a User Nickname item `nick`."""
    if st.tag != "{jabber:client}message" or str(st["from"]) != publisher.jid.bare:
        return False
    ev = st.xml.find(NS_EVENT + "event")
    items = ev.find(NS_EVENT + "items") if ev is not None else None
    if items is None or items.get("node") != NS_NICK:
        return False
    return any(n.text == nick for n in items.iter("{%s}nick" % NS_NICK))


async def publish_nick(publisher, nick):
    try:
        await publisher.x.plugin["xep_0172"].publish_nick(nick, timeout=WAIT)
    except IqError as e:
        raise StepFailed(f"{publisher.label} could not publish a nick: {xml(e.iq)}")
    except IqTimeout:
        raise StepFailed(f"{publisher.label}: no answer to the publish within {WAIT}s")


async def expect_nick(publisher, receiver, nick, since, how):
    got = await receiver.wait_for(lambda st: nick_event(st, publisher, nick), since=since, timeout=WAIT)
    if got is None:
        raise StepFailed(f"{receiver.label} got no event ({how}) for {publisher.label}'s nick {nick!r} "
                         f"within {WAIT}s; got: {receiver.recent(since, 4)}")
    return f"{receiver.label} got {publisher.label}'s nick {how} (to {got['to']})"


def caps_query_from(domain, client):
    """st: a disco#info query for client's caps node, from domain (its server or a user there)."""
    node = client.x.plugin["xep_0115"].caps_node + "#"

    def pred(st):
        if st.tag != "{jabber:client}iq" or st.xml.get("type") != "get" or st["from"].domain != domain:
            return False
        q = st.xml.find("{http://jabber.org/protocol/disco#info}query")
        return q is not None and (q.get("node") or "").startswith(node)
    return pred


async def pep_check(login_local, login_remote, domain):
    """PEP between the Starling user (local) and the PEER user (remote), mutually subscribed,
    both with +notify for the nick node in their caps. Returns (ok, detail, clients).
    1. local logs in and publishes a nick while remote is offline; remote logs in: Starling
       learns its caps (asking from starling.test) and sends the last item (XEP-0163 4.3.2).
    2. remote publishes, local gets it live. First the PEER's server must know local's caps:
       it asks local (local's client answers); an iq round trip local -> remote over the same
       links then makes sure the answer got there. (ejabberd sends nothing to a contact whose
       caps it is still asking for, and does not send the last item once it has them.)
    3. local publishes again, remote gets it live."""
    done, clients = [], []
    try:
        local, ok, d = await login_local()
        clients.append(local)
        if not ok:
            raise StepFailed(f"login failed: {d}")
        nick0 = f"{local.jid.user} last {uuid.uuid4().hex[:6]}"
        await publish_nick(local, nick0)
        done.append(f"{local.label} published {nick0!r}")
        remote, ok, d = await login_remote()
        clients.append(remote)
        if not ok:
            raise StepFailed(f"login failed: {d}")
        done.append(await expect_nick(local, remote, nick0, 0, "as the last item"))

        q = await local.wait_for(caps_query_from(domain, local), since=0, timeout=WAIT)
        if q is None:
            raise StepFailed(f"{domain} never asked {local.label} for its caps within {WAIT}s; "
                             f"{local.label} got: {local.recent(0, 4)}")
        done.append(f"{q['from']} asked {local.label}'s caps")
        iq = local.x.plugin["xep_0030"].get_info(jid=remote.jid, timeout=WAIT)
        try:
            await iq
        except IqError:
            pass  # an error back is a round trip too
        except IqTimeout:
            raise StepFailed(f"disco#info {local.label} -> {remote.jid}: no answer within {WAIT}s")
        nick1 = f"{remote.jid.user} live {uuid.uuid4().hex[:6]}"
        m = local.mark()
        await publish_nick(remote, nick1)
        done.append(await expect_nick(remote, local, nick1, m, "live"))

        nick2 = f"{local.jid.user} live {uuid.uuid4().hex[:6]}"
        m = remote.mark()
        await publish_nick(local, nick2)
        done.append(await expect_nick(local, remote, nick2, m, "live"))
    except StepFailed as e:
        return False, f"{e}; steps passed: {'; '.join(done) or 'none'}", clients
    return True, "; ".join(done), clients


async def subscription_check(local, remote, relogin):
    """Mutual subscription across, then presence. Returns (ok, detail, local, remote): the
    connections to use afterwards (both log in again along the way)."""
    done = []

    async def expect(client, pred, what, since):
        st = await client.wait_for(pred, since=since, timeout=WAIT)
        if st is None:
            raise StepFailed(f"{what}: not within {WAIT}s; {client.label} got: {client.recent(since, 4)}")
        done.append(what)
        return st

    def available(jid):
        return lambda st: is_presence(st, jid, "available") and str(st["from"]) == str(jid)

    def unavailable(jid):
        return lambda st: is_presence(st, jid, "unavailable") and str(st["from"]) == str(jid)

    try:
        connected(local, remote)
        start_l, start_r = local.mark(), remote.mark()
        for sub, contact in ((local, remote), (remote, local)):
            ms, mc = sub.mark(), contact.mark()
            sub.x.send_presence(pto=contact.jid.bare, ptype="subscribe")
            await expect(contact, lambda st: is_presence(st, sub.jid.bare, "subscribe"),
                         f"{contact.label} got subscribe from {sub.label}", mc)
            contact.x.send_presence(pto=sub.jid.bare, ptype="subscribed")
            await expect(sub, lambda st: is_presence(st, contact.jid.bare, "subscribed"),
                         f"{sub.label} got subscribed from {contact.label}", ms)
        # RFC 6121 3.1.5: after approving, the contact's server sends the contact's presence.
        await expect(local, available(remote.jid), f"{local.label} saw {remote.jid} available", start_l)
        await expect(remote, available(local.jid), f"{remote.label} saw {local.jid} available", start_r)

        full, m = str(remote.jid), local.mark()
        await remote.close()
        await expect(local, unavailable(full), f"{local.label} saw {full} unavailable on logout", m)
        m = local.mark()
        remote, ok, detail = await relogin(remote)
        if not ok:
            raise StepFailed(f"{remote.label} could not log in again: {detail}")
        await expect(local, available(remote.jid), f"{local.label} saw {remote.jid} available again", m)
        await expect(remote, available(local.jid), f"{remote.label} got {local.jid}'s presence on login (probe)", 0)

        full, m = str(local.jid), remote.mark()
        await local.close()
        await expect(remote, unavailable(full), f"{remote.label} saw {full} unavailable on logout", m)
        local, ok, detail = await relogin(local)
        if not ok:
            raise StepFailed(f"{local.label} could not log in again: {detail}")
    except StepFailed as e:
        return False, f"{e}; steps passed: {', '.join(done) or 'none'}", local, remote
    return True, "; ".join(done), local, remote


# --------------------------------------------------------------------------- scenarios ------
async def harness_check(pw):
    """carol@prosody.test <-> carol@ejabberd.test, before anything involves Starling."""
    name = "s2s-peers-federate"
    (p, okp, dp), (e, oke, de) = await asyncio.gather(login("carol", PROSODY, pw["carol@prosody"], "harness"),
                                                      login("carol", EJABBERD, pw["carol@ejabberd"], "harness"))
    try:
        if not (okp and oke):
            report(name, False, "; ".join(d for ok, d in ((okp, dp), (oke, de)) if not ok))
            return
        ok1, d1 = await message_check(p, e, e.jid.bare)
        ok2, d2 = await message_check(e, p, p.jid.bare)
        report(name, ok1 and ok2, f"prosody->ejabberd: {'ok' if ok1 else 'FAIL'} {d1} || "
                                  f"ejabberd->prosody: {'ok' if ok2 else 'FAIL'} {d2}")
    except StepFailed as ex:
        report(name, False, str(ex))
    finally:
        await asyncio.gather(p.close(), e.close())


async def peer_scenario(peer, pw, logs):
    domain = PEERS[peer]
    user = LOCAL_USER[peer]
    P = f"s2s-{peer}-"
    names = [P + c for c in PEER_CHECKS]
    (local, okl, dl), (remote, okr, dr) = await asyncio.gather(
        login(user, STARLING, pw[f"{user}@starling"], f"to-{peer}"),
        login("bob", domain, pw[f"bob@{peer}"], "s2s"))
    if not (okl and okr):
        fail_all(names, "login failed: " + "; ".join(d for ok, d in ((okl, dl), (okr, dr)) if not ok))
        return

    n = {"": 0}

    async def relogin(c):
        n[""] += 1
        u, d = c.jid.user, c.jid.domain
        key = f"{u}@starling" if d == STARLING else f"{u}@{peer}"
        return await login(u, d, pw[key], f"again{n['']}")

    async def check(name, coro):
        try:
            ok, detail = await coro
        except StepFailed as e:
            ok, detail = False, str(e)
        if not ok:
            detail = f"{detail} (logs: {logs})"
        report(name, ok, detail)

    await check(P + "message-out", message_check(local, remote, remote.jid.bare))
    await check(P + "message-in", message_check(remote, local, local.jid.bare))
    sub_ok, detail, local, remote = await subscription_check(local, remote, relogin)
    report(P + "subscription", sub_ok, detail if sub_ok else f"{detail} (logs: {logs})")

    async def both_pings():
        (ok1, d1), (ok2, d2) = await asyncio.gather(ping_check(remote, STARLING), ping_check(local, domain))
        return ok1 and ok2, f"{d1} || {d2}"

    await check(P + "iq", both_pings())
    await check(P + "unknown-user", unknown_user_check(remote))
    await check(P + "muc-join-starling", muc_check(local, remote, f"conference.{STARLING}"))
    await check(P + "muc-join-peer", muc_check(remote, local, f"conference.{domain}"))
    await asyncio.gather(local.close(), remote.close())

    # PEP: the pair is mutually subscribed (above); both log in again with +notify caps.
    if not sub_ok:
        report(P + "pep", False, "needs the mutual subscription of s2s-" + peer + "-subscription")
        return
    ok, detail, clients = await pep_check(
        lambda: login(user, STARLING, pw[f"{user}@starling"], "pep", pep=True),
        lambda: login("bob", domain, pw[f"bob@{peer}"], "pep", pep=True), domain)
    report(P + "pep", ok, detail if ok else f"{detail} (logs: {logs})")
    await asyncio.gather(*(c.close() for c in clients))


async def scenario(args, starling, phase):
    work = args.workdir
    # A fixed prefix: token_urlsafe may start with "-", which command lines take for an option.
    pw = {k: "pw-" + secrets.token_urlsafe(12) for k in
          ("alice@starling", "anna@starling", "bob@prosody", "bob@ejabberd", "carol@prosody", "carol@ejabberd")}

    # ---- setup: root, packages, names ------------------------------------------------
    phase[0] = "setup"
    ok, detail = await helper("check", timeout=330)
    if ok:
        ok, d2 = await helper("hosts-add")
        detail = f"{detail}; {d2}" if not ok else detail
    if ok:
        try:
            got = {n: socket.gethostbyname(n) for n in NAMES}
            bad = {n: a for n, a in got.items() if a != NAMES[n]}
            if bad:
                ok, detail = False, f"/etc/hosts block written but the names resolve to {bad}"
            else:
                detail += "; /etc/hosts: " + ", ".join(f"{n} {a}" for n, a in got.items())
        except OSError as e:
            ok, detail = False, f"/etc/hosts block written but a name does not resolve: {e}"
    report("s2s-setup", ok, detail)
    if not ok:
        fail_all(ALL_CHECKS, f"setup failed: {detail}")
        return

    # ---- the three servers, at once ----------------------------------------------------
    phase[0] = "starting the servers"
    pros_users = [f"{u}:{pw[f'{u}@prosody']}" for u in ("bob", "carol")]
    ej_users = [f"{u}:{pw[f'{u}@ejabberd']}" for u in ("bob", "carol")]
    (okp, dp), (oke, de), (oks, ds) = await asyncio.gather(
        helper("prosody-start", work, *pros_users),
        helper("ejabberd-start", work, *ej_users),
        starling.start({"alice": pw["alice@starling"], "anna": pw["anna@starling"]}))
    report("s2s-prosody-start", okp, dp)
    report("s2s-ejabberd-start", oke, de)
    report("s2s-starling-start", oks, ds)
    up = {"prosody": okp, "ejabberd": oke}
    why = {"prosody": "Prosody is not running (see s2s-prosody-start)",
           "ejabberd": "ejabberd is not running (see s2s-ejabberd-start)"}

    # ---- the harness: the two peers with each other ------------------------------------
    phase[0] = "s2s-peers-federate"
    if okp and oke:
        await harness_check(pw)
    else:
        report("s2s-peers-federate", False, "; ".join(why[p] for p in PEERS if not up[p]))

    # ---- Starling with each peer, both at once ------------------------------------------
    phase[0] = "the Starling checks"
    jobs = []
    for peer in PEERS:
        names = [f"s2s-{peer}-{c}" for c in PEER_CHECKS]
        if not oks:
            fail_all(names, "Starling with federation is not running (see s2s-starling-start)")
        elif not up[peer]:
            fail_all(names, why[peer])
        else:
            logs = (f"{starling.logfile}, "
                    + (f"{work}/prosody/prosody.log" if peer == "prosody" else f"{work}/ejabberd/logs/ejabberd.log"))
            jobs.append(peer_scenario(peer, pw, logs))
    await asyncio.gather(*jobs)


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("STARLING_BIN", str(HERE.parent / "target/release/starling")))
    p.add_argument("--workdir", default="", help="work directory (default: a new /tmp/starling-s2s.*)")
    p.add_argument("--log", default="", help="debug log file (stanzas, helper output)")
    p.add_argument("--budget", type=float, default=165, help="seconds for everything but the cleanup")
    args = p.parse_args()
    setup_logging(args.log)
    if not args.workdir:
        args.workdir = tempfile.mkdtemp(prefix="starling-s2s.")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # Prosody and ejabberd run as their own users and read their configs in here.
    os.chmod(work, 0o755)
    args.workdir = str(work)

    starling = Starling(args.bin, work)
    phase = ["start"]
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    outcome = None
    try:
        await asyncio.wait_for(scenario(args, starling, phase), args.budget)
    except asyncio.TimeoutError:
        outcome = f"driver budget of {args.budget:.0f}s ran out during {phase[0]}"
    except asyncio.CancelledError:
        outcome = f"driver interrupted during {phase[0]}"
    finally:
        # A second SIGTERM (conformance/run's timeout) must not cut the cleanup short: the
        # peers would keep running and /etc/hosts keep the block (its SIGKILL still ends it).
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: log.warning("signal during cleanup: ignored"))
        if outcome:
            fail_all(ALL_CHECKS[:-1], f"not run: {outcome}")
        await asyncio.gather(*(c.close(timeout=2) for c in CLIENTS), return_exceptions=True)
        stopped = await starling.stop()
        if stopped is not None:
            report("s2s-starling-shutdown", *stopped)
        else:
            fail_all(["s2s-starling-shutdown"], "Starling was not started")
        ok, detail = await helper("cleanup", args.workdir, timeout=60)
        if not ok:
            print(f"cleanup: {detail}", file=sys.stderr)
        print(f"s2s work directory: {args.workdir}", file=sys.stderr)
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
