#!/usr/bin/env python3
"""slixmpp driver for keeping clients in sync: XEP-0313 archive paging (XEP-0059 RSM),
XEP-0280 carbons, XEP-0198 resumption after a cut connection, XEP-0160 offline
messages with the XEP-0359 stanza-id of the archive.

Usage: slixmpp_sync.py --starttls-port P --tls-port Q --user-a grace --pass-a X \
           --user-b heidi --pass-b Y --user-c ivan --pass-c Z --user-sm judy --pass-sm S \
           --user-offline karl --pass-offline O [--cafile CRT] [--log FILE]

Every account must be fresh (no archive, no offline messages): the checks count exactly.
"""

import asyncio
import datetime
import sys
import time
import uuid

from common import Client, base_args, finish, report, setup_logging, xml

P = "slixmpp-sync."
NS_CLIENT = "{jabber:client}"
NS_MAM = "{urn:xmpp:mam:2}"
NS_FWD = "{urn:xmpp:forward:0}"
NS_DELAY = "{urn:xmpp:delay}"
NS_SID = "{urn:xmpp:sid:0}"
NS_RSM = "{http://jabber.org/protocol/rsm}"
NS_CARBONS = "{urn:xmpp:carbons:2}"

PLUGINS = ("xep_0030", "xep_0059", "xep_0297", "xep_0313", "xep_0280", "xep_0203", "xep_0359")


def make_client(label, jid, password, args, *, direct_tls=False, sm=False):
    c = Client(label, jid, password, args=args, direct_tls=direct_tls)
    for p in PLUGINS:
        c.x.register_plugin(p)
    if sm:
        c.x.register_plugin("xep_0198")
    return c


async def login_or_report(name, *clients):
    """Log the clients in; on failure report `name` FAIL and return False."""
    results = await asyncio.gather(*(c.login() for c in clients))
    bad = [f"{c.label}: {d}" for c, (ok, d) in zip(clients, results) if not ok]
    if bad:
        report(name, False, "login failed: " + "; ".join(bad))
        return False
    return True


def is_chat(st, body=None):
    if st.tag != NS_CLIENT + "message":
        return False
    b = st.xml.find(NS_CLIENT + "body")
    if b is None:
        return False
    return body is None or b.text == body


def body_of(el):
    b = el.find(NS_CLIENT + "body") if el is not None else None
    return b.text if b is not None else None


def stanza_id(el, by):
    """The <stanza-id/> stamped by `by` on a message element, or None."""
    for sid in el.findall(NS_SID + "stanza-id"):
        if sid.get("by") == by:
            return sid.get("id")
    return None


def parse_stamp(stamp):
    if not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def mam_items(iq):
    """(results, fin) of a MAM query answer: results as dicts, fin as the raw element."""
    out = []
    for msg in iq["mam"]["results"]:
        res = msg.xml.find(NS_MAM + "result")
        fwd = res.find(NS_FWD + "forwarded") if res is not None else None
        delay = fwd.find(NS_DELAY + "delay") if fwd is not None else None
        inner = fwd.find(NS_CLIENT + "message") if fwd is not None else None
        out.append({
            "id": res.get("id") if res is not None else None,
            "stamp": delay.get("stamp") if delay is not None else None,
            "body": body_of(inner),
            "from": inner.get("from") if inner is not None else None,
            "to": inner.get("to") if inner is not None else None,
            "raw": xml(msg),
        })
    fin = iq.xml.find(NS_MAM + "fin")
    return out, fin


def fin_desc(fin):
    if fin is None:
        return "no <fin/>"
    from slixmpp.xmlstream import ET
    return ET.tostring(fin, encoding="unicode")


def fin_complete(fin):
    return fin is not None and fin.get("complete") in ("true", "1")


def fin_rsm(fin, what):
    s = fin.find(NS_RSM + "set") if fin is not None else None
    el = s.find(NS_RSM + what) if s is not None else None
    return el.text if el is not None else None


async def mam_query(client, *, with_jid=None, after=None, max_=10, timeout=10):
    rsm = {"max": max_}
    if after is not None:
        rsm["after"] = after
    iq = await client.x.plugin["xep_0313"].retrieve(with_jid=with_jid, rsm=rsm, timeout=timeout)
    return mam_items(iq)


# ---------------------------------------------------------------- checks -----

async def check_mam(args, a, b, c, a_bare, b_bare, c_bare):
    # A sends 25 chat messages to B's bare JID; B (available) receives and archives them.
    tag = uuid.uuid4().hex[:6]
    bodies = [f"mam {tag} #{i:02d}" for i in range(1, 26)]
    m = b.mark()
    for body in bodies:
        a.x.send_message(mto=b_bare, mbody=body, mtype="chat")
    live = {}
    deadline = time.monotonic() + 10
    while len(live) < len(bodies) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        for _, st in b.incoming[m:]:
            if is_chat(st) and st["body"] in bodies:
                live[st["body"]] = stanza_id(st.xml, b_bare)
    if len(live) < len(bodies):
        report(P + "mam.paging", False, f"B received only {len(live)}/25 live messages: {b.recent(m, 3)}")
        report(P + "mam.after_id", False, "not run: live delivery failed")
        report(P + "mam.with", False, "not run: live delivery failed")
        return

    # ---- 1. paging with max=10 and RSM <after/> ---------------------------------
    pages, problems, after = [], [], None
    try:
        for _ in range(5):
            items, fin = await mam_query(b, after=after, max_=10)
            pages.append((items, fin))
            if fin is None:
                problems.append("answer without <fin/>")
                break
            if items and (fin_rsm(fin, "first") != items[0]["id"] or fin_rsm(fin, "last") != items[-1]["id"]):
                problems.append(f"page {len(pages)}: RSM first/last do not match the results: {fin_desc(fin)}")
            if fin_complete(fin) or not items:
                break
            after = fin_rsm(fin, "last")
    except Exception as e:
        problems.append(f"MAM query failed: {type(e).__name__}: {e}")
    got = [it for items, _ in pages for it in items]
    sizes = [len(items) for items, _ in pages]
    if sizes != [10, 10, 5]:
        problems.append(f"page sizes {sizes} != [10, 10, 5]")
    completes = [fin.get("complete") if fin is not None else None for _, fin in pages]
    if not pages or not fin_complete(pages[-1][1]):
        problems.append(f"last page not complete='true' (complete attributes: {completes})")
    if any(fin_complete(fin) for _, fin in pages[:-1]):
        problems.append(f"an earlier page already says complete (complete attributes: {completes})")
    got_bodies = [it["body"] for it in got]
    if got_bodies != bodies:
        problems.append(f"bodies not the 25 sent in order: got {got_bodies}")
    ids = [it["id"] for it in got]
    if any(not i for i in ids) or len(set(ids)) != len(ids):
        problems.append(f"result ids missing or not unique: {ids}")
    nostamp = [it["body"] for it in got if parse_stamp(it["stamp"]) is None]
    if nostamp:
        problems.append(f"results without a valid delay stamp: {nostamp[:3]}")
    badfrom = [it["raw"] for it in got if (it["from"] or "").split("/")[0] != a_bare]
    if badfrom:
        problems.append(f"forwarded message not from A: {badfrom[0]}")
    mismatch = [(bd, live.get(bd), it["id"]) for bd, it in zip(got_bodies, got) if live.get(bd) != it["id"]]
    if got_bodies == bodies and mismatch:
        problems.append(f"archive id differs from the live stanza-id (body, live, archive): {mismatch[:3]}")
    report(P + "mam.paging", not problems,
           "; ".join(problems) if problems else
           f"3 pages {sizes}, complete={completes}, ids {ids[0]}..{ids[-1]}, stamps {got[0]['stamp']}..{got[-1]['stamp']}")

    # ---- 2a. after=<id of the 20th> --------------------------------------------
    problems = []
    if len(ids) == 25 and got_bodies == bodies:
        try:
            items, fin = await mam_query(b, after=ids[19], max_=10)
            if [it["body"] for it in items] != bodies[20:]:
                problems.append(f"got {[it['body'] for it in items]} != the last 5")
            if not fin_complete(fin):
                problems.append(f"not complete: {fin_desc(fin)}")
        except Exception as e:
            problems.append(f"MAM query failed: {type(e).__name__}: {e}")
        report(P + "mam.after_id", not problems,
               "; ".join(problems) if problems else f"after={ids[19]} -> 5 results, {fin_desc(fin)}")
    else:
        report(P + "mam.after_id", False, "not run: paging did not return the 25 ids")

    # ---- 2b. with=<peer> -------------------------------------------------------
    # C sends 3 messages to B, so B's archive holds two conversations.
    c_bodies = [f"mam-with {tag} from C #{i}" for i in range(1, 4)]
    m = b.mark()
    for body in c_bodies:
        c.x.send_message(mto=b_bare, mbody=body, mtype="chat")
    await b.wait_for(lambda st: is_chat(st, c_bodies[-1]), since=m, timeout=5)
    problems = []
    try:
        items_c, fin_c = await mam_query(b, with_jid=c_bare, max_=50)
        if [it["body"] for it in items_c] != c_bodies:
            problems.append(f"with=C returned {[it['body'] for it in items_c]} != {c_bodies}")
        if not fin_complete(fin_c):
            problems.append(f"with=C not complete: {fin_desc(fin_c)}")
        items_a, fin_a = await mam_query(b, with_jid=a_bare, max_=50)
        if [it["body"] for it in items_a] != bodies:
            problems.append(f"with=A returned {len(items_a)} results, bodies {[it['body'] for it in items_a][:5]}... "
                            f"!= the 25 from A")
        items_all, _ = await mam_query(b, max_=50)
        if len(items_all) != 28:
            problems.append(f"unfiltered query returned {len(items_all)} != 28 (sanity check)")
    except Exception as e:
        problems.append(f"MAM query failed: {type(e).__name__}: {e}")
    report(P + "mam.with", not problems,
           "; ".join(problems) if problems else f"with=C -> 3, with=A -> 25, unfiltered -> 28")


async def check_carbons(args, a1, a2, b, a_bare, b_bare):
    name = P + "carbons.two_resources"
    try:
        await asyncio.gather(a1.x.plugin["xep_0280"].enable(timeout=5), a2.x.plugin["xep_0280"].enable(timeout=5))
    except Exception as e:
        report(name, False, f"enabling carbons failed: {type(e).__name__}: {e}")
        return
    await asyncio.sleep(0.2)
    problems, details = [], []

    def carbon(st, kind, body):
        if st.tag != NS_CLIENT + "message":
            return None
        w = st.xml.find(NS_CARBONS + kind)
        fwd = w.find(NS_FWD + "forwarded") if w is not None else None
        inner = fwd.find(NS_CLIENT + "message") if fwd is not None else None
        return inner if inner is not None and body_of(inner) == body else None

    # B -> A1 (full JID): A2 gets <received/>.
    body = f"carbon received {uuid.uuid4().hex[:8]}"
    m1, m2 = a1.mark(), a2.mark()
    b.x.send_message(mto=str(a1.jid), mbody=body, mtype="chat")
    got1 = await a1.wait_for(lambda st: is_chat(st, body), since=m1)
    got2 = await a2.wait_for(lambda st: carbon(st, "received", body) is not None, since=m2)
    if got1 is None:
        problems.append(f"A1 did not get B's message: {a1.recent(m1, 3)}")
    if got2 is None:
        problems.append(f"A2 got no <received/> carbon: {a2.recent(m2, 3)}")
    else:
        inner = carbon(got2, "received", body)
        if str(got2["from"]) != a_bare:
            problems.append(f"received carbon from {got2['from']} != {a_bare}")
        if (inner.get("from") or "").split("/")[0] != b_bare or inner.get("to") != str(a1.jid):
            problems.append(f"received carbon's inner from/to wrong: {xml(got2)}")
        details.append("received: " + xml(got2))

    # A1 -> B: A2 gets <sent/>; A1 itself gets no copy.
    body = f"carbon sent {uuid.uuid4().hex[:8]}"
    m1, m2, mb = a1.mark(), a2.mark(), b.mark()
    a1.x.send_message(mto=b_bare, mbody=body, mtype="chat")
    gotb = await b.wait_for(lambda st: is_chat(st, body), since=mb)
    got2 = await a2.wait_for(lambda st: carbon(st, "sent", body) is not None, since=m2)
    if gotb is None:
        problems.append(f"B did not get A1's message: {b.recent(mb, 3)}")
    if got2 is None:
        problems.append(f"A2 got no <sent/> carbon: {a2.recent(m2, 3)}")
    else:
        inner = carbon(got2, "sent", body)
        if str(got2["from"]) != a_bare:
            problems.append(f"sent carbon from {got2['from']} != {a_bare}")
        if inner.get("from") != str(a1.jid) or (inner.get("to") or "").split("/")[0] != b_bare:
            problems.append(f"sent carbon's inner from/to wrong: {xml(got2)}")
        details.append("sent: " + xml(got2))
    await asyncio.sleep(0.3)
    own = [xml(st) for _, st in a1.incoming[m1:] if carbon(st, "sent", body) is not None]
    if own:
        problems.append(f"the sending resource got a carbon of its own message: {own[0]}")
    report(name, not problems, "; ".join(problems) if problems else " | ".join(details))


async def check_sm_resume(args, s, sender, s_bare):
    name = P + "sm.resume"
    x = s.x
    sm = x.plugin["xep_0198"]
    events = {"enabled": asyncio.get_event_loop().create_future(),
              "resumed": asyncio.get_event_loop().create_future(),
              "lost": asyncio.get_event_loop().create_future()}
    binds, failed, starts = [], [], []
    x.add_event_handler("sm_enabled", lambda st: events["enabled"].done() or events["enabled"].set_result(st))
    x.add_event_handler("session_resumed", lambda st: events["resumed"].done() or events["resumed"].set_result(st))
    x.add_event_handler("sm_failed", lambda st: failed.append(xml(st)))
    x.add_event_handler("session_bind", lambda jid: binds.append(str(jid)))
    x.add_event_handler("session_start", lambda _: starts.append(time.monotonic()))
    x.add_event_handler("disconnected", lambda *_: events["lost"].done() or events["lost"].set_result(True))

    ok, detail = await s.login()
    if not ok:
        report(name, False, f"login failed: {detail}")
        return
    try:
        enabled = await asyncio.wait_for(asyncio.shield(events["enabled"]), 5)
    except asyncio.TimeoutError:
        report(name, False, f"no <enabled/> within 5 s; failed={failed}")
        await s.close()
        return
    if not sm.sm_id or enabled.xml.get("resume") not in ("true", "1"):
        report(name, False, f"stream management enabled without resumption: {xml(enabled)}")
        await s.close()
        return
    full = str(s.jid)
    x.send_presence()
    await asyncio.sleep(0.3)

    # One message before the cut: handled, so it must not come again.
    tag = uuid.uuid4().hex[:6]
    before = f"sm before cut {tag}"
    m = s.mark()
    sender.x.send_message(mto=full, mbody=before, mtype="chat")
    if await s.wait_for(lambda st: is_chat(st, before), since=m) is None:
        report(name, False, f"message before the cut not delivered: {s.recent(m, 3)}")
        await s.close()
        return
    # Ack what we have so far, as a live client would when asked.
    sm.send_ack()
    await asyncio.sleep(0.2)
    h_before = sm.handled

    # ---- cut the connection: no </stream:stream>, no TLS close_notify ----------
    x.transport.abort()
    try:
        await asyncio.wait_for(asyncio.shield(events["lost"]), 5)
    except asyncio.TimeoutError:
        report(name, False, "transport.abort() did not lose the connection")
        return
    await asyncio.sleep(0.5)
    during = [f"sm during cut {tag} full #{i}" for i in (1, 2)] + [f"sm during cut {tag} bare #{i}" for i in (1, 2)]
    for body in during[:2]:
        sender.x.send_message(mto=full, mbody=body, mtype="chat")
    for body in during[2:]:
        sender.x.send_message(mto=s_bare, mbody=body, mtype="chat")
    await asyncio.sleep(0.7)

    # ---- reconnect: slixmpp resumes because it kept sm_id ----------------------
    m = s.mark()
    n_binds, n_starts = len(binds), len(starts)
    sm_id_before = sm.sm_id
    x.connect(args.host, args.starttls_port)
    problems = []
    try:
        resumed = await asyncio.wait_for(asyncio.shield(events["resumed"]), 10)
    except asyncio.TimeoutError:
        resumed = None
        problems.append(f"no session_resumed within 10 s (sm_failed={failed}, new binds={binds[n_binds:]}); "
                        f"received: {s.recent(m, 4)}")
    if resumed is not None:
        if resumed.xml.get("previd") != sm_id_before:
            problems.append(f"<resumed/> previd {resumed.xml.get('previd')} != {sm_id_before}")
        await s.wait_for(lambda st: is_chat(st, during[-1]), since=m, timeout=5)
        await asyncio.sleep(1.0)  # give duplicates a chance to show up
        counts = {bd: 0 for bd in [before] + during}
        for _, st in s.incoming[m:]:
            if is_chat(st) and st["body"] in counts:
                counts[st["body"]] += 1
        if counts[before]:
            problems.append(f"message handled before the cut (h={h_before}) delivered again {counts[before]}x")
        wrong = {bd: n for bd, n in counts.items() if bd != before and n != 1}
        if wrong:
            problems.append(f"messages sent during the cut not delivered exactly once: {wrong}; "
                            f"received: {s.recent(m, 6)}")
    if len(binds) != n_binds or len(starts) != n_starts:
        problems.append(f"resource bound again / new session started: binds={binds}")
    if str(x.boundjid) != full:
        problems.append(f"full JID changed: {x.boundjid} != {full}")
    report(name, not problems,
           "; ".join(problems) if problems else
           f"previd={sm_id_before}, h before cut={h_before}, resumed: {xml(resumed)}, "
           f"4 messages sent during the cut delivered once each, no re-bind")
    try:
        x.disconnect(wait=1.0)
        await asyncio.sleep(0.3)
    except Exception:
        pass


async def check_offline(args, sender, o_user, o_pass, o_bare):
    name = P + "offline.delivery"
    tag = uuid.uuid4().hex[:6]
    bodies = [f"offline {tag} #{i}" for i in (1, 2, 3)]
    for body in bodies:
        sender.x.send_message(mto=o_bare, mbody=body, mtype="chat")
    await asyncio.sleep(0.7)
    o = make_client("offline", o_bare + "/sync", o_pass, args, direct_tls=True)
    ok, detail = await o.login()
    if not ok:
        report(name, False, f"login failed: {detail}")
        return
    problems = []
    # Step 2 of the README recipe: the archive first (no local history: all of it) ...
    try:
        items, fin = await mam_query(o, max_=50)
    except Exception as e:
        items, fin = [], None
        problems.append(f"MAM query failed: {type(e).__name__}: {e}")
    if [it["body"] for it in items] != bodies:
        problems.append(f"archive bodies {[it['body'] for it in items]} != {bodies}")
    archive_ids = {it["body"]: it["id"] for it in items}
    # ... then initial presence, which releases the offline messages.
    m = o.mark()
    o.x.send_presence()
    await o.wait_for(lambda st: is_chat(st, bodies[-1]), since=m, timeout=5)
    await asyncio.sleep(0.3)
    got = [st for _, st in o.incoming[m:] if is_chat(st) and st["body"] in bodies]
    if [st["body"] for st in got] != bodies:
        problems.append(f"offline messages received {[st['body'] for st in got]} != {bodies}: {o.recent(m, 4)}")
    details = []
    for st in got:
        delay = st.xml.find(NS_DELAY + "delay")
        if delay is None or parse_stamp(delay.get("stamp")) is None:
            problems.append(f"no valid <delay/>: {xml(st)}")
        sid = stanza_id(st.xml, o_bare)
        if sid is None:
            problems.append(f"no <stanza-id by='{o_bare}'/>: {xml(st)}")
        elif archive_ids.get(st["body"]) != sid:
            problems.append(f"stanza-id {sid} != archive id {archive_ids.get(st['body'])}: {xml(st)}")
        details.append(xml(st))
    report(name, not problems, "; ".join(problems) if problems else details[0] if details else "")
    await o.close()


async def scenario(args):
    d = args.domain
    a_bare, b_bare, c_bare = f"{args.user_a}@{d}", f"{args.user_b}@{d}", f"{args.user_c}@{d}"
    s_bare, o_bare = f"{args.user_sm}@{d}", f"{args.user_offline}@{d}"
    a1 = make_client("A1", a_bare + "/one", args.pass_a, args)
    b = make_client("B", b_bare + "/sync", args.pass_b, args, direct_tls=True)
    c = make_client("C", c_bare + "/sync", args.pass_c, args)
    if not await login_or_report(P + "mam.paging", a1, b, c):
        for n in ("mam.after_id", "mam.with", "carbons.two_resources", "sm.resume", "offline.delivery"):
            report(P + n, False, "not run: login failed")
        await asyncio.gather(a1.close(), b.close(), c.close())
        return
    for cl in (a1, b, c):
        cl.x.send_presence()
    await asyncio.sleep(0.3)

    await check_mam(args, a1, b, c, a_bare, b_bare, c_bare)
    await c.close()

    a2 = make_client("A2", a_bare + "/two", args.pass_a, args, direct_tls=True)
    if await login_or_report(P + "carbons.two_resources", a2):
        a2.x.send_presence()
        await asyncio.sleep(0.3)
        await check_carbons(args, a1, a2, b, a_bare, b_bare)
    await asyncio.gather(a2.close(), b.close())

    s = make_client("SM", s_bare + "/sm", args.pass_sm, args, sm=True)
    await check_sm_resume(args, s, a1, s_bare)

    await check_offline(args, a1, args.user_offline, args.pass_offline, o_bare)
    await a1.close()


async def main():
    p = base_args(__doc__)
    for who in ("a", "b", "c", "sm", "offline"):
        p.add_argument(f"--user-{who}", required=True)
        p.add_argument(f"--pass-{who}", required=True)
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 55)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 55 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
