#!/usr/bin/env python3
"""aioxmpp driver (a second Python implementation, with its own XML stack, SASL library
aiosasl and pyOpenSSL TLS): logs in over STARTTLS and over direct TLS, subscribes to a
slixmpp account's presence (the slixmpp side approves), sees its presence, and
exchanges messages with it both ways.

Usage: aioxmpp_im.py --starttls-port P --tls-port Q --user frank --password X \
                     --peer carol --peer-pass Y [--cafile CRT] [--log FILE]
"""

import asyncio
import logging
import sys
import uuid

import aioxmpp
import aioxmpp.connector
import aioxmpp.dispatcher
import aioxmpp.security_layer

from common import Client, base_args, finish, is_presence, report, setup_logging, xml

P = "aioxmpp."


class MechLog(logging.Handler):
    """aiosasl logs 'attempting SCRAM-SHA-256 mechanism': keep the last one."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.last = None

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("attempting "):
            self.last = msg.split()[1]


def security_layer(args, password, direct):
    def ctx_factory():
        ctx = aioxmpp.security_layer.default_ssl_context()
        if args.cafile:
            ctx.load_verify_locations(args.cafile)
        if direct:
            ctx.set_alpn_protos([b"xmpp-client"])
        return ctx
    return aioxmpp.make_security_layer(password, ssl_context_factory=ctx_factory,
                                       no_verify=not args.cafile)


async def one_transport(args, peer, direct, mechlog):
    tag = "directtls" if direct else "starttls"
    jid = aioxmpp.JID.fromstr(f"{args.user}@{args.domain}/aioxmpp-{tag}")
    peer_bare = f"{args.peer}@{args.domain}"
    connector = aioxmpp.connector.XMPPOverTLSConnector() if direct else aioxmpp.connector.STARTTLSConnector()
    port = args.tls_port if direct else args.starttls_port
    client = aioxmpp.PresenceManagedClient(
        jid, security_layer(args, args.password, direct),
        override_peer=[(args.host, port, connector)])
    inbox = []
    presences = []
    client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher).register_callback(
        aioxmpp.MessageType.CHAT, None, lambda msg: inbox.append(msg))
    client.summon(aioxmpp.dispatcher.SimplePresenceDispatcher).register_callback(
        None, None, lambda st: presences.append(st))

    mechlog.last = None
    try:
        cm = client.connected()
        await asyncio.wait_for(cm.__aenter__(), 15)
    except Exception as e:
        report(P + f"login.{tag}", False, f"{type(e).__name__}: {e}")
        return
    try:
        ok = mechlog.last == "SCRAM-SHA-256"
        report(P + f"login.{tag}", ok, f"jid={client.local_jid} mechanism={mechlog.last}")

        # aioxmpp -> slixmpp
        body = f"from aioxmpp {tag} {uuid.uuid4().hex[:8]}"
        m = peer.mark()
        msg = aioxmpp.Message(to=aioxmpp.JID.fromstr(peer_bare), type_=aioxmpp.MessageType.CHAT)
        msg.body[None] = body
        await client.send(msg)
        got = await peer.wait_for(lambda st: st.tag == "{jabber:client}message" and st["body"] == body, since=m)
        ok = got is not None and str(got["from"]) == str(client.local_jid)
        report(P + f"message.send.{tag}", ok, xml(got) if got is not None else f"peer got: {peer.recent(m)}")

        # slixmpp -> aioxmpp
        reply = f"to aioxmpp {tag} {uuid.uuid4().hex[:8]}"
        peer.x.send_message(mto=str(client.local_jid), mbody=reply, mtype="chat")
        for _ in range(250):
            if any(reply == (msg.body.any() if msg.body else None) for msg in inbox):
                break
            await asyncio.sleep(0.02)
        hit = [msg for msg in inbox if msg.body and msg.body.any() == reply]
        report(P + f"message.receive.{tag}", bool(hit),
               f"from={hit[0].from_}" if hit else f"got {len(inbox)} other message(s)")

        if not direct:
            # aioxmpp subscribes to the slixmpp account, which approves by hand;
            # aioxmpp must then see the peer's available presence.
            m = peer.mark()
            sub = aioxmpp.Presence(type_=aioxmpp.PresenceType.SUBSCRIBE, to=aioxmpp.JID.fromstr(peer_bare))
            await client.send(sub)
            req = await peer.wait_for(lambda st: is_presence(st, f"{args.user}@{args.domain}", "subscribe"), since=m)
            if req is None:
                report(P + "presence.after-subscription", False, f"peer got no subscribe: {peer.recent(m)}")
            else:
                n0 = len(presences)
                peer.x.send_presence(pto=f"{args.user}@{args.domain}", ptype="subscribed")
                for _ in range(250):
                    if any(p.type_ == aioxmpp.PresenceType.AVAILABLE and p.from_ == aioxmpp.JID.fromstr(str(peer.jid))
                           for p in presences[n0:]):
                        break
                    await asyncio.sleep(0.02)
                seen = [p for p in presences[n0:] if p.type_ == aioxmpp.PresenceType.AVAILABLE
                        and p.from_ == aioxmpp.JID.fromstr(str(peer.jid))]
                report(P + "presence.after-subscription", bool(seen),
                       f"available presence from {seen[0].from_}" if seen else
                       f"presences seen: {[(str(p.from_), p.type_.name) for p in presences[n0:]]}")
        if not direct:
            await group_chat(args, client, peer)
    finally:
        try:
            await asyncio.wait_for(cm.__aexit__(None, None, None), 10)
        except Exception as e:
            logging.getLogger("conformance").warning("aioxmpp disconnect: %r", e)


async def group_chat(args, client, peer):
    """XEP-0045 through aioxmpp.MUCClient: the slixmpp peer creates an instant room, aioxmpp
    joins it, and they exchange groupchat messages."""
    for plugin in ("xep_0004", "xep_0045"):
        peer.x.register_plugin(plugin)
    room_jid = f"aio-{uuid.uuid4().hex[:6]}@conference.{args.domain}"
    try:
        await peer.x.plugin["xep_0045"].join_muc_wait(room_jid, "peer", maxstanzas=0, timeout=10)
        form = peer.x.plugin["xep_0004"].make_form(ftype="submit")
        await peer.x.plugin["xep_0045"].set_room_config(room_jid, form, timeout=10)
    except Exception as e:
        report(P + "room.join", False, f"the peer could not create {room_jid}: {e}")
        return
    muc = client.summon(aioxmpp.MUCClient)
    room, joined = muc.join(aioxmpp.JID.fromstr(room_jid), "aio")
    heard = []
    room.on_message.connect(lambda msg, member, source, **kw: heard.append((msg, member)))
    try:
        await asyncio.wait_for(joined, 10)
        report(P + "room.join", room.me is not None and room.me.nick == "aio",
               f"joined as {room.me.nick if room.me else None}, {len(room.members)} member(s)")
    except Exception as e:
        report(P + "room.join", False, f"{type(e).__name__}: {e}")
        return
    body = f"aioxmpp in the room {uuid.uuid4().hex[:8]}"
    m = peer.mark()
    msg = aioxmpp.Message(type_=aioxmpp.MessageType.GROUPCHAT)
    msg.body[None] = body
    room.send_message(msg)
    got = await peer.wait_for(lambda st: st.tag == "{jabber:client}message" and st["type"] == "groupchat"
                              and st["body"] == body, since=m)
    ok = got is not None and str(got["from"]) == f"{room_jid}/aio"
    report(P + "room.send", ok, xml(got) if got is not None else f"peer got: {peer.recent(m)}")
    reply = f"peer to aioxmpp's room {uuid.uuid4().hex[:8]}"
    peer.x.send_message(mto=room_jid, mbody=reply, mtype="groupchat")
    for _ in range(250):
        if any(msg.body and msg.body.any() == reply for msg, _ in heard):
            break
        await asyncio.sleep(0.02)
    hit = [(msg, member) for msg, member in heard if msg.body and msg.body.any() == reply]
    report(P + "room.receive", bool(hit) and hit[0][1] is not None and hit[0][1].nick == "peer",
           f"from member {hit[0][1].nick if hit[0][1] else None}" if hit else f"heard {len(heard)} other message(s)")
    m = peer.mark()
    try:
        await asyncio.wait_for(room.leave(), 10)
        gone = await peer.wait_for(lambda st: st.tag == "{jabber:client}presence" and st["type"] == "unavailable"
                                   and str(st["from"]) == f"{room_jid}/aio", since=m)
        report(P + "room.leave", gone is not None, xml(gone) if gone is not None else f"peer got: {peer.recent(m)}")
    except Exception as e:
        report(P + "room.leave", False, f"{type(e).__name__}: {e}")


async def scenario(args):
    mechlog = MechLog()
    logging.getLogger("aiosasl").addHandler(mechlog)
    logging.getLogger("aiosasl").setLevel(logging.DEBUG)
    peer = Client("peer", f"{args.peer}@{args.domain}/aioxmpp-peer", args.peer_pass, args=args, direct_tls=False)
    ok, detail = await peer.login()
    if not ok:
        report(P + "peer-login", False, detail)
        return
    peer.x.send_presence()
    await asyncio.sleep(0.3)
    for direct in (False, True):
        await one_transport(args, peer, direct, mechlog)
    await peer.close()


async def main():
    p = base_args(__doc__)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--peer-pass", required=True)
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 90)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 90 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
