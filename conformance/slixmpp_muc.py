#!/usr/bin/env python3
"""slixmpp driver for Multi-User Chat (XEP-0045) through slixmpp's xep_0045 plugin: two
accounts discover the service, one creates an instant room, the other joins, they exchange
groupchat messages, the owner changes the subject, a private message goes through the room,
and the second account leaves. One check per step.

Usage: slixmpp_muc.py --starttls-port P --tls-port Q --user1 liam --pass1 X \
                      --user2 mona --pass2 Y [--service conference.localhost] [--cafile CRT] [--log FILE]
"""

import asyncio
import sys
import uuid

from slixmpp import JID
from slixmpp.exceptions import IqError, IqTimeout, PresenceError

from common import Client, base_args, finish, report, setup_logging, xml

P = "slixmpp-muc."
NS_CLIENT = "{jabber:client}"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "{http://jabber.org/protocol/muc#user}"
NS_DISCO_INFO = "{http://jabber.org/protocol/disco#info}"
NS_SID = "{urn:xmpp:sid:0}"


def make_client(label, jid, password, args, *, direct_tls):
    c = Client(label, jid, password, args=args, direct_tls=direct_tls)
    for p in ("xep_0030", "xep_0004", "xep_0045", "xep_0203", "xep_0359"):
        c.x.register_plugin(p)
    return c


def codes(st):
    """The muc#user status codes of a stanza (as strings)."""
    x = st.xml.find(NS_MUC_USER + "x")
    if x is None:
        return set()
    return {s.get("code") for s in x.findall(NS_MUC_USER + "status")}


def muc_item(st):
    x = st.xml.find(NS_MUC_USER + "x")
    return x.find(NS_MUC_USER + "item") if x is not None else None


def body_of(st):
    b = st.xml.find(NS_CLIENT + "body")
    return b.text if b is not None else None


def is_message(st, frm, mtype, body):
    return (st.tag == NS_CLIENT + "message" and str(st["from"]) == frm
            and st.xml.get("type") == mtype and body_of(st) == body)


def is_room_presence(st, frm, ptype=None):
    return st.tag == NS_CLIENT + "presence" and str(st["from"]) == frm and st.xml.get("type") == ptype


async def scenario(args):
    d = args.domain
    service = args.service or f"conference.{d}"
    room = JID(f"muc-{uuid.uuid4().hex[:8]}@{service}")
    alice = make_client("owner", f"{args.user1}@{d}/muc", args.pass1, args, direct_tls=False)
    bob = make_client("guest", f"{args.user2}@{d}/muc", args.pass2, args, direct_tls=True)
    results = await asyncio.gather(alice.login(), bob.login())
    bad = [f"{c.label}: {detail}" for c, (ok, detail) in zip((alice, bob), results) if not ok]
    report(P + "login", not bad, "; ".join(bad) or f"{alice.jid} {bob.jid}")
    if bad:
        await asyncio.gather(alice.close(), bob.close())
        return
    alice.x.send_presence()
    bob.x.send_presence()
    a_nick, b_nick = "owner", "guest"
    a_occ, b_occ = f"{room}/{a_nick}", f"{room}/{b_nick}"

    # ---- XEP-0045 6.2: the service is a text conference service -------------------------
    try:
        info = await alice.x.plugin["xep_0030"].get_info(jid=service, timeout=10)
        q = info.xml.find(NS_DISCO_INFO + "query")
        idents = [(i.get("category"), i.get("type")) for i in q.findall(NS_DISCO_INFO + "identity")] if q is not None else []
        feats = [f.get("var") for f in q.findall(NS_DISCO_INFO + "feature")] if q is not None else []
        report(P + "service.disco-info", ("conference", "text") in idents and NS_MUC in feats, xml(info))
    except (IqError, IqTimeout) as e:
        report(P + "service.disco-info", False, f"disco#info on {service} failed: {e}")

    # ---- 10.1: create an instant room ---------------------------------------------------
    try:
        pres, subject, _, _ = await alice.x.plugin["xep_0045"].join_muc_wait(room, a_nick, maxstanzas=0, timeout=10)
        item = muc_item(pres)
        ok = ({"110", "201"} <= codes(pres) and item is not None
              and item.get("affiliation") == "owner" and item.get("role") == "moderator")
        report(P + "room.create", ok, xml(pres))
    except (PresenceError, asyncio.TimeoutError) as e:
        report(P + "room.create", False, f"creating {room} failed: {getattr(e, 'presence', e)}")
        report(P + "scenario", False, "the room steps need the room")
        await asyncio.gather(alice.close(), bob.close())
        return
    try:
        form = alice.x.plugin["xep_0004"].make_form(ftype="submit")
        await alice.x.plugin["xep_0045"].set_room_config(room, form, timeout=10)
        report(P + "room.instant-config", True, "instant room unlocked")
    except (IqError, IqTimeout) as e:
        report(P + "room.instant-config", False, f"instant room refused: {e}")

    # ---- 7.2: the second account joins ----------------------------------------------------
    m_a = alice.mark()
    try:
        pres, subject, occupants, _ = await bob.x.plugin["xep_0045"].join_muc_wait(room, b_nick, timeout=10)
        seen = [str(p["from"]) for p in occupants]
        ok = "110" in codes(pres) and "201" not in codes(pres) and a_occ in seen
        report(P + "room.join", ok, f"occupants={seen} self={xml(pres)} subject={xml(subject)}")
    except (PresenceError, asyncio.TimeoutError) as e:
        report(P + "room.join", False, f"joining {room} failed: {getattr(e, 'presence', e)}")
        report(P + "scenario", False, "the message steps need both accounts in the room")
        await asyncio.gather(alice.close(), bob.close())
        return
    got = await alice.wait_for(lambda st: is_room_presence(st, b_occ), since=m_a)
    report(P + "room.occupants-see-the-joiner", got is not None,
           xml(got) if got is not None else f"owner got: {alice.recent(m_a)}")

    # ---- 7.4: groupchat messages, reflected to everyone with the room's stanza-id ----------
    for sender, s_occ, receivers, tag in ((alice, a_occ, (alice, bob), "owner"), (bob, b_occ, (alice, bob), "guest")):
        text = f"hello from {tag} {uuid.uuid4().hex[:6]}"
        marks = [r.mark() for r in receivers]
        sender.x.send_message(mto=room, mbody=text, mtype="groupchat")
        got = [await r.wait_for(lambda st: is_message(st, s_occ, "groupchat", text), since=m)
               for r, m in zip(receivers, marks)]
        ok = all(g is not None for g in got)
        report(P + f"groupchat.{tag}-reflected-to-all", ok,
               " | ".join(xml(g) if g is not None else f"{r.label} got: {r.recent(m)}"
                          for g, r, m in zip(got, receivers, marks)))
        if ok:
            ids = [[s.get("id") for s in g.xml.findall(NS_SID + "stanza-id") if s.get("by") == str(room)] for g in got]
            same = all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 1
            report(P + f"groupchat.{tag}-stanza-id", same, f"stanza-ids by the room: {ids}")

    # ---- 8.1: the owner changes the subject -------------------------------------------------
    topic = f"topic {uuid.uuid4().hex[:6]}"
    m_b = bob.mark()
    alice.x.plugin["xep_0045"].set_subject(room, topic)

    def is_subject(st):
        if st.tag != NS_CLIENT + "message" or st.xml.get("type") != "groupchat" or st["from"].bare != str(room):
            return False
        s = st.xml.find(NS_CLIENT + "subject")
        return s is not None and s.text == topic and st.xml.find(NS_CLIENT + "body") is None
    got = await bob.wait_for(is_subject, since=m_b)
    report(P + "subject.change", got is not None, xml(got) if got is not None else f"guest got: {bob.recent(m_b)}")

    # ---- 7.5: a private message through the room ---------------------------------------------
    text = f"psst {uuid.uuid4().hex[:6]}"
    m_a = alice.mark()
    bob.x.send_message(mto=a_occ, mbody=text, mtype="chat")
    got = await alice.wait_for(lambda st: is_message(st, b_occ, "chat", text), since=m_a)
    report(P + "private-message", got is not None, xml(got) if got is not None else f"owner got: {alice.recent(m_a)}")

    # ---- 7.14: the guest leaves ---------------------------------------------------------------
    m_a, m_b = alice.mark(), bob.mark()
    bob.x.plugin["xep_0045"].leave_muc(room, b_nick)
    mine = await bob.wait_for(lambda st: is_room_presence(st, b_occ, "unavailable") and "110" in codes(st), since=m_b)
    theirs = await alice.wait_for(lambda st: is_room_presence(st, b_occ, "unavailable"), since=m_a)
    report(P + "leave", mine is not None and theirs is not None,
           f"self={xml(mine) if mine is not None else bob.recent(m_b)} "
           f"others={xml(theirs) if theirs is not None else alice.recent(m_a)}")

    await asyncio.gather(alice.close(), bob.close())


async def main():
    p = base_args(__doc__)
    for i in (1, 2):
        p.add_argument(f"--user{i}", required=True)
        p.add_argument(f"--pass{i}", required=True)
    p.add_argument("--service", default="", help="the MUC service (default: conference.<domain>)")
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 80)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 80 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
