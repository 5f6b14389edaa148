#!/usr/bin/env python3
"""go-sendxmpp driver: go-sendxmpp (Debian package) logs in as the sender and sends a
message, over STARTTLS and over direct TLS, to an account logged in with slixmpp,
which must receive it; then it sends to a group chat room (`-c`) the slixmpp account created,
and the room's occupant must receive it as a groupchat message from go-sendxmpp's nick.

Usage: gosendxmpp_send.py --starttls-port P --tls-port Q --sender dave --sender-pass X \
                          --receiver carol --receiver-pass Y --workdir DIR [--cafile CRT]
"""

import asyncio
import os
import re
import shutil
import sys
import uuid

from common import Client, base_args, finish, report, setup_logging, xml

P = "go-sendxmpp."


async def run_sendxmpp(args, direct, body, env, logf, room=None):
    sender = f"{args.sender}@{args.domain}"
    port = args.tls_port if direct else args.starttls_port
    cmd = ["go-sendxmpp", "-d", "-u", sender, "-p", args.sender_pass,
           "-j", f"{args.host}:{port}", "--timeout", "10"]
    if direct:
        cmd.append("-t")
    if not args.cafile:
        cmd.append("-n")
    if room:
        cmd += ["-c", "-a", "gosend", room]
    else:
        cmd.append(f"{args.receiver}@{args.domain}")
    logf.write(f"\n$ {' '.join(cmd)}\n")
    logf.flush()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(body.encode() + b"\n"), 30)
    except asyncio.TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        logf.write(out.decode(errors="replace"))
        return None, out.decode(errors="replace")
    text = out.decode(errors="replace")
    logf.write(text)
    logf.write(f"[exit {proc.returncode}]\n")
    logf.flush()
    return proc.returncode, text


def summarize(text):
    """Pick the interesting facts out of go-sendxmpp's debug output (it prints what it
    receives, not what it sends)."""
    facts = []
    m = re.search(r"<stream:error>.*?</stream:error>", text, re.S)
    if m:
        facts.append("server sent " + m.group(0))
    errs = [l.strip()[-160:] for l in text.splitlines()
            if re.search(r"(?i)error|fail|panic|refused|EOF|handshake", l) and "<stream:" not in l]
    if errs:
        facts.append("go-sendxmpp said: " + " / ".join(errs[:3]))
    if "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>" in text and "<challenge" not in text:
        facts.append("(SASL without challenge: PLAIN)")
    return " ".join(facts)


async def scenario(args):
    if shutil.which("go-sendxmpp") is None:
        report(P + "installed", False, "go-sendxmpp not found on PATH")
        return
    home = os.path.join(args.workdir, "gosendxmpp-home")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
               XDG_DATA_HOME=os.path.join(home, ".local/share"))
    if args.cafile:
        env["SSL_CERT_FILE"] = args.cafile  # Go's crypto/x509 trusts exactly this file
    receiver_jid = f"{args.receiver}@{args.domain}"
    sender_jid = f"{args.sender}@{args.domain}"
    rx = Client("receiver", receiver_jid + "/rx", args.receiver_pass, args=args, direct_tls=False)
    ok, detail = await rx.login()
    if not ok:
        report(P + "receiver-login", False, detail)
        return
    rx.x.send_presence()
    await asyncio.sleep(0.3)

    logpath = os.path.join(args.workdir, "go-sendxmpp.log")
    with open(logpath, "a") as logf:
        for direct in (False, True):
            name = P + ("send.directtls" if direct else "send.starttls")
            body = f"go-sendxmpp {'direct' if direct else 'starttls'} {uuid.uuid4().hex[:8]}"
            m = rx.mark()
            rc, text = await run_sendxmpp(args, direct, body, env, logf)
            got = await rx.wait_for(lambda st: st.tag == "{jabber:client}message"
                                    and st["body"].strip() == body, since=m, timeout=5)
            problems = []
            if rc is None:
                problems.append("go-sendxmpp timed out")
            elif rc != 0:
                problems.append(f"go-sendxmpp exited {rc}")
            if got is None:
                problems.append("message not received")
            elif got["from"].bare != sender_jid:
                problems.append(f"from={got['from']}")
            detail = "; ".join(problems)
            detail += f" {summarize(text)} "
            detail += xml(got) if got is not None else f"receiver got: {rx.recent(m)}"
            report(name, not problems, detail.strip())

        # XEP-0045: the receiver creates an instant room and stays in it; go-sendxmpp joins
        # it under the nick "gosend" and sends one message.
        for plugin in ("xep_0004", "xep_0045"):
            rx.x.register_plugin(plugin)
        room = f"gosend-{uuid.uuid4().hex[:6]}@conference.{args.domain}"
        name = P + "send.chatroom"
        try:
            await rx.x.plugin["xep_0045"].join_muc_wait(room, "rx", maxstanzas=0, timeout=10)
            form = rx.x.plugin["xep_0004"].make_form(ftype="submit")
            await rx.x.plugin["xep_0045"].set_room_config(room, form, timeout=10)
        except Exception as e:  # a refused room is a failed check, with the reason
            report(name, False, f"the receiver could not create {room}: {e}")
            await rx.close()
            return
        body = f"go-sendxmpp chatroom {uuid.uuid4().hex[:8]}"
        m = rx.mark()
        rc, text = await run_sendxmpp(args, False, body, env, logf, room=room)
        got = await rx.wait_for(lambda st: st.tag == "{jabber:client}message" and st["type"] == "groupchat"
                                and st["body"].strip() == body, since=m, timeout=5)
        problems = []
        if rc is None:
            problems.append("go-sendxmpp timed out")
        elif rc != 0:
            problems.append(f"go-sendxmpp exited {rc}")
        if got is None:
            problems.append("groupchat message not received")
        elif str(got["from"]) != f"{room}/gosend":
            problems.append(f"from={got['from']}")
        detail = "; ".join(problems) + f" {summarize(text)} "
        detail += xml(got) if got is not None else f"receiver got: {rx.recent(m)}"
        report(name, not problems, detail.strip())
    await rx.close()


async def main():
    p = base_args(__doc__)
    p.add_argument("--sender", required=True)
    p.add_argument("--sender-pass", required=True)
    p.add_argument("--receiver", required=True)
    p.add_argument("--receiver-pass", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 90)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 90 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
