#!/usr/bin/env python3
"""profanity driver: runs the profanity console client (Debian package) under tmux,
connects over STARTTLS and then over direct TLS ("tls legacy"), sends a message with
/msg to an account logged in with slixmpp (which must receive it), and reads a reply
from that account off the screen (tmux capture-pane).

Usage: profanity_tmux.py --starttls-port P --tls-port Q --user erin --password X \
                         --peer carol --peer-pass Y --workdir DIR --tmux-socket SOCK [--cafile CRT]
"""

import asyncio
import os
import re
import shutil
import sys
import uuid

from common import Client, base_args, finish, report, setup_logging, xml

P = "profanity."
SESSION = "prof"


class Tmux:
    def __init__(self, socket, env):
        self.socket = socket
        self.env = env

    async def run(self, *argv, check=True):
        proc = await asyncio.create_subprocess_exec(
            "tmux", "-S", self.socket, *argv, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
        if check and proc.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(argv)}: {err.decode().strip()}")
        return out.decode(errors="replace")

    async def type(self, text):
        # -l: literal text, so nothing in it is read as a key name.
        await self.run("send-keys", "-t", SESSION, "-l", text)
        await asyncio.sleep(0.1)
        await self.run("send-keys", "-t", SESSION, "Enter")

    async def screen(self, history=300):
        return await self.run("capture-pane", "-p", "-J", "-t", SESSION, "-S", f"-{history}", check=False)

    async def wait_text(self, pattern, timeout=15, since_len=0):
        """Wait until the regex appears on screen (searched after offset since_len
        of the joined scrollback). Returns (match or None, screen)."""
        deadline = asyncio.get_event_loop().time() + timeout
        rx = re.compile(pattern)
        while True:
            scr = await self.screen()
            m = rx.search(scr, since_len if since_len <= len(scr) else 0)
            if m or asyncio.get_event_loop().time() >= deadline:
                return m, scr
            await asyncio.sleep(0.25)


def tail(screen, n=12):
    lines = [l.rstrip() for l in screen.splitlines() if l.strip()]
    return " / ".join(lines[-n:])


async def connect(tm, args, jid, direct, tag):
    """Run /connect and answer the password prompt; returns (ok, detail)."""
    port = args.tls_port if direct else args.starttls_port
    mode = "legacy" if direct else ("force" if args.cafile else "trust")
    before = len(await tm.screen())
    await tm.type(f"/connect {jid} server {args.host} port {port} tls {mode}")
    m, scr = await tm.wait_text(r"(?i)enter password", timeout=10, since_len=max(0, before - 200))
    if not m:
        return False, "no password prompt: " + tail(scr)
    await tm.type(args.password)
    # profanity: "<jid>/<resource> logged in successfully, online (priority 0)."
    m, scr = await tm.wait_text(r"(?i)(\S+) logged in successfully|login failed|"
                                r"certificate|connection (?:failed|lost)|failed to",
                                timeout=20, since_len=max(0, before - 200))
    if m and "logged in successfully" in m.group(0):
        return True, m.group(0)
    if m and "certificate" in m.group(0).lower() and direct:
        # Untrusted certificate prompt: accept it for this session only.
        await tm.type("/tls allow")
        m, scr = await tm.wait_text(r"(?i)(\S+) logged in successfully|login failed|connection (?:failed|lost)",
                                    timeout=20, since_len=max(0, before - 200))
        if m and "logged in successfully" in m.group(0):
            return True, m.group(0) + " (after /tls allow)"
    return False, tail(scr)


async def scenario(args):
    if shutil.which("profanity") is None or shutil.which("tmux") is None:
        report(P + "installed", False, "profanity or tmux not found on PATH")
        return
    home = os.path.join(args.workdir, "profanity-home")
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
               XDG_DATA_HOME=os.path.join(home, ".local/share"), TERM="xterm-256color")
    env.pop("TMUX", None)
    if args.cafile:
        env["SSL_CERT_FILE"] = args.cafile  # OpenSSL default verify paths -> trust only our cert
    jid = f"{args.user}@{args.domain}"
    peer_jid = f"{args.peer}@{args.domain}"

    peer = Client("peer", peer_jid + "/prof-peer", args.peer_pass, args=args, direct_tls=True)
    ok, detail = await peer.login()
    if not ok:
        report(P + "peer-login", False, detail)
        return
    peer.x.send_presence()

    tm = Tmux(args.tmux_socket, env)
    logfile = os.path.join(args.workdir, "profanity.log")
    await tm.run("new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50",
                 f"exec profanity -l DEBUG -f {logfile}")
    try:
        m, scr = await tm.wait_text(r"Profanity", timeout=15)
        if not m:
            report(P + "start", False, "profanity did not start: " + tail(scr))
            return
        await asyncio.sleep(0.5)

        for direct in (False, True):
            tag = "directtls" if direct else "starttls"
            if direct:
                await tm.type("/disconnect")
                await asyncio.sleep(1.0)
            ok, detail = await connect(tm, args, jid, direct, tag)
            report(P + f"login.{tag}", ok, detail)
            if not ok:
                continue
            await asyncio.sleep(1.0)  # let profanity finish its post-login queries

            # profanity -> slixmpp
            body = f"from profanity {tag} {uuid.uuid4().hex[:8]}"
            mk = peer.mark()
            await tm.type(f"/msg {peer_jid} {body}")
            got = await peer.wait_for(lambda st: st.tag == "{jabber:client}message" and st["body"] == body,
                                      since=mk, timeout=10)
            ok = got is not None and got["from"].bare == jid
            report(P + f"message.send.{tag}", ok,
                   xml(got) if got is not None else f"peer got: {peer.recent(mk)}; screen: {tail(await tm.screen())}")
            if got is None:
                continue

            # slixmpp -> profanity (to the full JID the message came from)
            reply = f"reply to profanity {tag} {uuid.uuid4().hex[:8]}"
            before = len(await tm.screen())
            peer.x.send_message(mto=got["from"], mbody=reply, mtype="chat")
            m, scr = await tm.wait_text(re.escape(reply), timeout=10, since_len=max(0, before - 400))
            report(P + f"message.receive.{tag}", m is not None,
                   f"shown on screen" if m else "reply not on screen: " + tail(scr))
        # XEP-0045: the peer creates an instant room; profanity joins it (/join), the two
        # exchange groupchat messages.
        for plugin in ("xep_0004", "xep_0045"):
            peer.x.register_plugin(plugin)
        room = f"prof-{uuid.uuid4().hex[:6]}@conference.{args.domain}"
        try:
            await peer.x.plugin["xep_0045"].join_muc_wait(room, "peer", maxstanzas=0, timeout=10)
            form = peer.x.plugin["xep_0004"].make_form(ftype="submit")
            await peer.x.plugin["xep_0045"].set_room_config(room, form, timeout=10)
            created = None
        except Exception as e:  # reported below, with the reason
            created = f"the peer could not create {room}: {e}"
        if created:
            report(P + "room.join", False, created)
        else:
            mk = peer.mark()
            await tm.type(f"/join {room} nick profnick")
            joined = await peer.wait_for(lambda st: st.tag == "{jabber:client}presence"
                                         and str(st["from"]) == f"{room}/profnick", since=mk, timeout=10)
            report(P + "room.join", joined is not None,
                   xml(joined) if joined is not None else f"peer got: {peer.recent(mk)}; screen: {tail(await tm.screen())}")
            if joined is not None:
                await asyncio.sleep(0.5)
                body = f"profanity in the room {uuid.uuid4().hex[:8]}"
                mk = peer.mark()
                await tm.type(body)  # the room's window is the current one after /join
                got = await peer.wait_for(lambda st: st.tag == "{jabber:client}message" and st["type"] == "groupchat"
                                          and st["body"] == body, since=mk, timeout=10)
                ok = got is not None and str(got["from"]) == f"{room}/profnick"
                report(P + "room.send", ok,
                       xml(got) if got is not None else f"peer got: {peer.recent(mk)}; screen: {tail(await tm.screen())}")
                # The text is unique, so the whole screen is searched (the room's window, with
                # its occupant list, is laid out anew as it fills).
                reply = f"peer in the room {uuid.uuid4().hex[:8]}"
                peer.x.send_message(mto=room, mbody=reply, mtype="groupchat")
                m, scr = await tm.wait_text(re.escape(reply), timeout=10)
                report(P + "room.receive", m is not None, "shown on screen" if m else "not on screen: " + tail(scr))
        await tm.type("/quit")
        await asyncio.sleep(1.0)
    finally:
        with open(os.path.join(args.workdir, "profanity.screen.txt"), "w") as f:
            f.write(await tm.screen(history=2000))
        await tm.run("kill-server", check=False)
        await peer.close()


async def main():
    p = base_args(__doc__)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--peer", required=True)
    p.add_argument("--peer-pass", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--tmux-socket", required=True)
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 100)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 100 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
