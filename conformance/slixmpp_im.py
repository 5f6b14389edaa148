#!/usr/bin/env python3
"""slixmpp driver: login (STARTTLS and direct TLS, forced SCRAM-SHA-256), roster,
mutual subscription, presence and messages between two accounts.

Usage: slixmpp_im.py --starttls-port P --tls-port Q --user1 alice --pass1 X \
                     --user2 bob --pass2 Y [--user3 carol --pass3 Z] [--cafile CRT] [--log FILE]
"""

import asyncio
import sys
import uuid

from common import (Client, base_args, finish, is_presence, item_desc, report,
                    roster_get, roster_push_item, roster_set, setup_logging, xml)

P = "slixmpp."


async def login_check(name, client, want_mech, want_direct):
    ok, detail = await client.login()
    if ok:
        problems = []
        if client.mech_used != want_mech:
            problems.append(f"mechanism {client.mech_used} != {want_mech}")
        if client.tls_version is None:
            problems.append("not encrypted")
        if want_direct:
            if client.used_starttls:
                problems.append("STARTTLS used on the direct TLS port")
            if client.alpn != "xmpp-client":
                problems.append(f"ALPN {client.alpn!r} != 'xmpp-client'")
        elif not client.used_starttls:
            problems.append("STARTTLS was not negotiated")
        if problems:
            ok, detail = False, "; ".join(problems) + " -- " + detail
    report(name, ok, detail)
    return ok


async def scenario(args):
    d = args.domain
    a_jid, b_jid = f"{args.user1}@{d}", f"{args.user2}@{d}"
    alice = Client("alice", a_jid + "/starttls", args.pass1, args=args, direct_tls=False)
    bob = Client("bob", b_jid + "/directtls", args.pass2, args=args, direct_tls=True)

    # ---- logins ------------------------------------------------------------
    ok_a, ok_b = await asyncio.gather(
        login_check(P + "login.starttls.scram-sha-256", alice, "SCRAM-SHA-256", False),
        login_check(P + "login.directtls.scram-sha-256", bob, "SCRAM-SHA-256", True),
    )
    if ok_a:
        offered = alice.mechs_offered
        want = {"SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"}
        report(P + "sasl.mechanisms-offered", want <= set(offered), f"offered={offered}")
    if not (ok_a and ok_b):
        report(P + "scenario", False, "cannot run the two-account scenario without both logins")
        await asyncio.gather(alice.close(), bob.close())
        return

    # Other mechanisms, and a bad password (fresh connections, closed at once).
    for mech, direct in (("SCRAM-SHA-1", False), ("PLAIN", True)):
        c = Client("alt", a_jid + "/alt-" + mech.lower(), args.pass1, args=args, direct_tls=direct, mech=mech)
        await login_check(P + f"login.{'directtls' if direct else 'starttls'}.{mech.lower()}", c, mech, direct)
        await c.close()
    c = Client("bad", a_jid + "/bad", args.pass1 + "-wrong", args=args, direct_tls=False)
    ok, detail = await c.login(timeout=10)
    rejected = (not ok) and c.auth_failure is not None and "not-authorized" in c.auth_failure
    report(P + "login.bad-password-rejected", rejected,
           f"auth failure: {c.auth_failure}" if not ok else f"login unexpectedly succeeded: {detail}")
    await c.close()

    # ---- initial roster, initial presence ------------------------------------
    for who, c in (("alice", alice), ("bob", bob)):
        try:
            items, raw = await roster_get(c)
            report(P + f"roster.initial-empty.{who}", items == {}, raw)
        except Exception as e:
            report(P + f"roster.initial-empty.{who}", False, f"roster get failed: {e}")
    alice.x.send_presence()
    bob.x.send_presence()
    await asyncio.sleep(0.3)

    # ---- roster add ----------------------------------------------------------
    for who, c, other, name in (("alice", alice, b_jid, "Bob"), ("bob", bob, a_jid, "Alice")):
        m = c.mark()
        try:
            res = await roster_set(c, other, name)
        except Exception as e:
            report(P + f"roster.add.{who}", False, f"roster set failed: {e}")
            continue
        push = await c.wait_for(lambda st: roster_push_item(st, other) is not None, since=m)
        item = roster_push_item(push, other) if push is not None else None
        problems = []
        if item is None:
            problems.append("no roster push")
        else:
            if item.get("subscription", "none") != "none":
                problems.append(f"push subscription={item.get('subscription')}")
            if item.get("name") != name:
                problems.append(f"push name={item.get('name')}")
        try:
            items, raw = await roster_get(c)
            got = items.get(other)
            if got is None or got.get("name") != name:
                problems.append(f"roster get lacks the item: {raw}")
        except Exception as e:
            problems.append(f"roster get failed: {e}")
        report(P + f"roster.add.{who}", not problems,
               "; ".join(problems) + f" result={res} push={item_desc(item)}")

    # ---- subscription: alice -> bob --------------------------------------------
    async def subscribe_flow(sub, sub_bare, contact, contact_bare, tag):
        """sub subscribes to contact's presence; contact approves."""
        ms, mc = sub.mark(), contact.mark()
        sub.x.send_presence(pto=contact_bare, ptype="subscribe")
        req = await contact.wait_for(lambda st: is_presence(st, sub_bare, "subscribe"), since=mc)
        report(P + f"subscription.request-delivered.{tag}", req is not None and str(req["from"]) == sub_bare,
               xml(req) if req is not None else f"contact got: {contact.recent(mc)}")
        push = await sub.wait_for(lambda st: (roster_push_item(st, contact_bare) is not None and
                                              roster_push_item(st, contact_bare).get("ask") == "subscribe"), since=ms)
        report(P + f"subscription.pending-out-push.{tag}", push is not None,
               xml(push) if push is not None else f"subscriber got: {sub.recent(ms)}")
        ms, mc = sub.mark(), contact.mark()
        contact.x.send_presence(pto=sub_bare, ptype="subscribed")
        got = await sub.wait_for(lambda st: is_presence(st, contact_bare, "subscribed"), since=ms)
        report(P + f"subscription.approval-delivered.{tag}", got is not None,
               xml(got) if got is not None else f"subscriber got: {sub.recent(ms)}")
        # RFC 6121 3.1.5/3.1.6: after approval the contact's server sends the
        # contact's available presence from each available resource.
        pres = await sub.wait_for(lambda st: is_presence(st, contact.jid, "available")
                                  and str(st["from"]) == str(contact.jid), since=ms)
        report(P + f"presence.available-after-approval.{tag}", pres is not None,
               xml(pres) if pres is not None else f"subscriber got: {sub.recent(ms)}")

    await subscribe_flow(alice, a_jid, bob, b_jid, "alice-to-bob")
    await subscribe_flow(bob, b_jid, alice, a_jid, "bob-to-alice")
    await asyncio.sleep(0.3)

    for who, c, other in (("alice", alice, b_jid), ("bob", bob, a_jid)):
        try:
            items, raw = await roster_get(c)
            it = items.get(other)
            ok = it is not None and it.get("subscription") == "both" and it.get("ask") is None
            report(P + f"subscription.both.{who}", ok, f"item={item_desc(it)}")
        except Exception as e:
            report(P + f"subscription.both.{who}", False, f"roster get failed: {e}")

    # ---- messages ------------------------------------------------------------
    async def message_check(name, sender, receiver, to):
        body = f"hello {name} {uuid.uuid4().hex[:8]}"
        m = receiver.mark()
        sender.x.send_message(mto=to, mbody=body, mtype="chat")
        got = await receiver.wait_for(lambda st: st.tag == "{jabber:client}message" and st["body"] == body, since=m)
        ok = got is not None and str(got["from"]) == str(sender.jid)
        report(name, ok, (f"from={got['from']} to={got['to']} " + xml(got)) if got is not None
               else f"receiver got: {receiver.recent(m)}")

    await message_check(P + "message.alice-to-bob-bare", alice, bob, b_jid)
    await message_check(P + "message.bob-to-alice-full", bob, alice, str(alice.jid))
    await message_check(P + "message.alice-to-bob-full", alice, bob, str(bob.jid))
    await message_check(P + "message.bob-to-alice-bare", bob, alice, a_jid)

    # ---- presence goes: clean disconnect ---------------------------------------
    bob_full = str(bob.jid)
    m = alice.mark()
    await bob.close()
    got = await alice.wait_for(lambda st: is_presence(st, bob_full, "unavailable") and str(st["from"]) == bob_full, since=m)
    report(P + "presence.unavailable-on-logout", got is not None,
           xml(got) if got is not None else f"alice got: {alice.recent(m)}")

    # ---- presence comes: login broadcast and probe -----------------------------
    bob2 = Client("bob2", b_jid + "/again", args.pass2, args=args, direct_tls=True)
    ok, detail = await bob2.login()
    if not ok:
        report(P + "presence.available-on-login", False, f"bob could not log in again: {detail}")
    else:
        m_a, m_b = alice.mark(), bob2.mark()
        bob2.x.send_presence()
        got = await alice.wait_for(lambda st: is_presence(st, bob2.jid, "available") and str(st["from"]) == str(bob2.jid), since=m_a)
        report(P + "presence.available-on-login", got is not None,
               xml(got) if got is not None else f"alice got: {alice.recent(m_a)}")
        got = await bob2.wait_for(lambda st: is_presence(st, alice.jid, "available") and str(st["from"]) == str(alice.jid), since=m_b)
        report(P + "presence.probe-answered-on-login", got is not None,
               xml(got) if got is not None else f"bob got: {bob2.recent(m_b)}")

        # ---- presence goes: connection lost without </stream> -------------------
        full = str(bob2.jid)
        m = alice.mark()
        bob2.abort()
        got = await alice.wait_for(lambda st: is_presence(st, full, "unavailable") and str(st["from"]) == full,
                                   since=m, timeout=10)
        report(P + "presence.unavailable-on-connection-loss", got is not None,
               xml(got) if got is not None else f"alice got: {alice.recent(m)}")
        await bob2.close(timeout=2)

    await alice.close()


async def main():
    p = base_args(__doc__)
    for i in (1, 2):
        p.add_argument(f"--user{i}", required=True)
        p.add_argument(f"--pass{i}", required=True)
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 120)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 120 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
