#!/usr/bin/env python3
"""biboumi driver for external components (XEP-0114): Debian's biboumi (an XMPP-IRC gateway)
is started with a config of its own under --workdir and connects as irc.localhost to the
component listener; a slixmpp account then queries it through the server (disco#info,
software version, the ad-hoc command list and the `ping` command), and biboumi is stopped
with SIGTERM. One check per step.

No IRC server is available here, so no IRC traffic (joining channels, messages to IRC users)
is tested: only what biboumi answers itself, as a component.

biboumi runs as whatever user runs this driver (root included: it does not refuse root).

Usage: biboumi.py --starttls-port P --tls-port Q --component-port C \
           --component-domain irc.localhost --component-secret S --user olga --password X \
           --workdir DIR --server-log FILE [--biboumi /usr/bin/biboumi] [--cafile CRT] [--log FILE]
"""

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream import ET

from common import Client, base_args, finish, report, setup_logging, xml

P = "biboumi."
NS_DISCO_INFO = "{http://jabber.org/protocol/disco#info}"
NS_DISCO_ITEMS = "{http://jabber.org/protocol/disco#items}"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_VERSION = "{jabber:iq:version}"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def package_version():
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "biboumi"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def server_lines(path, pattern):
    """Lines of the server log (colours stripped) that match `pattern`."""
    rx = re.compile(pattern)
    return [line for line in (ANSI.sub("", l) for l in read(path).splitlines()) if rx.search(line)]


def tail(text, n=8):
    return " | ".join(text.strip().splitlines()[-n:])


class Biboumi:
    def __init__(self, args):
        self.args = args
        self.dir = Path(args.workdir) / "biboumi"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = self.dir / "biboumi.cfg"
        self.logfile = self.dir / "biboumi.log"
        self.stdout = self.dir / "biboumi.stdout"
        self.proc = None

    def write_config(self):
        a = self.args
        # policy_directory: an empty directory of our own (TLS policies only matter for IRC).
        policies = self.dir / "policy"
        policies.mkdir(exist_ok=True)
        self.cfg.write_text("\n".join([
            f"hostname={a.component_domain}",
            f"password={a.component_secret}",
            f"xmpp_server_ip={a.host}",
            f"port={a.component_port}",
            f"admin={a.user}@{a.domain}",
            f"db_name={self.dir / 'biboumi.sqlite'}",
            f"log_file={self.logfile}",
            "log_level=0",
            "identd_port=0",
            f"policy_directory={policies}",
            "realname_customization=true",
            "realname_from_jid=false",
            "",
        ]))
        os.chmod(self.cfg, 0o600)

    async def start(self):
        self.write_config()
        out = open(self.stdout, "wb")
        # Same process group as this driver: `timeout` in conformance/run reaches it too.
        self.proc = await asyncio.create_subprocess_exec(
            self.args.biboumi, str(self.cfg), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=str(self.dir))
        out.close()
        (self.dir / "biboumi.pid").write_text(f"{self.proc.pid}\n")

    def log(self):
        return read(self.logfile) + read(self.stdout)

    async def wait_log(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            if self.proc.returncode is not None:
                return False
            await asyncio.sleep(0.1)
        return text in self.log()

    async def stop(self, timeout=5):
        """SIGTERM; returns the exit status, or None when it had to be killed."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return None


async def host_items(user, domain):
    items = await user.x.plugin["xep_0030"].get_items(jid=domain, timeout=10)
    q = items.xml.find(NS_DISCO_ITEMS + "query")
    return [i.get("jid") for i in q.findall(NS_DISCO_ITEMS + "item")] if q is not None else [], items


async def checks(args, bib, user):
    d, irc = args.domain, args.component_domain

    # ---- the gateway is listed by the host --------------------------------------------
    try:
        jids, items = await host_items(user, d)
        report(P + "disco-items-host", irc in jids, xml(items))
    except (IqError, IqTimeout) as e:
        report(P + "disco-items-host", False, f"disco#items on {d} failed: {e}")

    # ---- disco#info: biboumi's identity -----------------------------------------------
    try:
        info = await user.x.plugin["xep_0030"].get_info(jid=irc, timeout=10)
        q = info.xml.find(NS_DISCO_INFO + "query")
        idents = [(i.get("category"), i.get("type"), i.get("name")) for i in q.findall(NS_DISCO_INFO + "identity")] if q is not None else []
        feats = [f.get("var") for f in q.findall(NS_DISCO_INFO + "feature")] if q is not None else []
        ok = str(info["from"]) == irc and any((c, t) in (("conference", "irc"), ("gateway", "irc")) for c, t, _ in idents)
        report(P + "disco-info", ok, f"identities={idents} features={feats}")
    except (IqError, IqTimeout) as e:
        report(P + "disco-info", False, f"disco#info on {irc} failed: {e}")

    # ---- XEP-0092: the software version -------------------------------------------------
    iq = user.x.Iq()
    iq["type"] = "get"
    iq["to"] = irc
    ET.SubElement(iq.xml, NS_VERSION + "query")
    try:
        resp = await iq.send(timeout=10)
        q = resp.xml.find(NS_VERSION + "query")
        name = q.findtext(NS_VERSION + "name") if q is not None else None
        version = q.findtext(NS_VERSION + "version") if q is not None else None
        report(P + "version", name == "biboumi" and bool(version),
               f"biboumi says name={name} version={version}; Debian package {package_version()}")
    except (IqError, IqTimeout) as e:
        report(P + "version", False, f"jabber:iq:version on {irc} failed: {e}")

    # ---- XEP-0050: the ad-hoc commands, listed through disco#items, and `ping` run ---------
    try:
        items = await user.x.plugin["xep_0030"].get_items(jid=irc, node=NS_COMMANDS, timeout=10)
        q = items.xml.find(NS_DISCO_ITEMS + "query")
        nodes = [i.get("node") for i in q.findall(NS_DISCO_ITEMS + "item")] if q is not None else []
        report(P + "adhoc.list", str(items["from"]) == irc and "ping" in nodes, f"commands={nodes} {xml(items)}")
    except (IqError, IqTimeout) as e:
        report(P + "adhoc.list", False, f"disco#items node={NS_COMMANDS} on {irc} failed: {e}")

    iq = user.x.Iq()
    iq["type"] = "set"
    iq["to"] = irc
    ET.SubElement(iq.xml, "{%s}command" % NS_COMMANDS, {"node": "ping", "action": "execute"})
    try:
        resp = await iq.send(timeout=10)
        cmd = resp.xml.find("{%s}command" % NS_COMMANDS)
        status = cmd.get("status") if cmd is not None else None
        notes = [n.text for n in cmd.findall("{%s}note" % NS_COMMANDS)] if cmd is not None else []
        report(P + "adhoc.ping", status == "completed" and any(n and "pong" in n.lower() for n in notes), xml(resp))
    except (IqError, IqTimeout) as e:
        report(P + "adhoc.ping", False, f"executing ping on {irc} failed: {e}")


async def scenario(args):
    irc = args.component_domain
    if not shutil.which(args.biboumi):
        report(P + "handshake", False, f"{args.biboumi} not found")
        return
    bib = Biboumi(args)
    conn_rx = rf'component connected.*domain="?{re.escape(irc)}"?\b'
    disc_rx = rf'component disconnected.*domain="?{re.escape(irc)}"?\b'
    try:
        conn_before = len(server_lines(args.server_log, conn_rx))
        await bib.start()
        # ---- biboumi connects and completes the handshake -----------------------------------
        authed = await bib.wait_log("Authenticated with the XMPP server", 15)
        await asyncio.sleep(0.2)
        connected = server_lines(args.server_log, conn_rx)[conn_before:]
        exchange = [l for l in bib.log().splitlines()
                    if any(w in l.lower() for w in ("handshake", "authenticated", "receiving: <error", "stream error"))]
        report(P + "handshake", authed and bool(connected),
               f"biboumi {package_version()} (pid {bib.proc.pid}, exit {bib.proc.returncode}); "
               f"server: {connected[-1] if connected else 'no component-connected line for ' + irc}; "
               f"biboumi: {' | '.join(exchange) or tail(bib.log())}")
        if not authed:
            return

        user = Client("user", f"{args.user}@{args.domain}/biboumi", args.password, args=args, direct_tls=False)
        user.x.register_plugin("xep_0030")
        ok, detail = await user.login()
        report(P + "login", ok, detail)
        if ok:
            await checks(args, bib, user)

        # ---- SIGTERM: biboumi closes its stream and the server lets go of the domain ---------
        disc_before = len(server_lines(args.server_log, disc_rx))
        rc = await bib.stop()
        gone = False
        items = None
        if ok:
            deadline = time.monotonic() + 5
            while not gone and time.monotonic() < deadline:
                try:
                    jids, items = await host_items(user, args.domain)
                    gone = irc not in jids
                except (IqError, IqTimeout):
                    pass
                if not gone:
                    await asyncio.sleep(0.1)
            await user.close()
        await asyncio.sleep(0.2)
        disconnected = server_lines(args.server_log, disc_rx)[disc_before:]
        report(P + "stop", rc == 0 and bool(disconnected) and (gone or not ok),
               f"exit status {rc}; server: {disconnected[-1] if disconnected else 'no component-disconnected line'}; "
               f"host items after: {xml(items) if items is not None else 'not queried'}; biboumi log: {tail(bib.log(), 4)}")
    finally:
        await bib.stop()


async def main():
    p = base_args(__doc__)
    p.add_argument("--component-port", type=int, required=True)
    p.add_argument("--component-domain", default="irc.localhost")
    p.add_argument("--component-secret", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--server-log", required=True)
    p.add_argument("--biboumi", default="biboumi")
    args = p.parse_args()
    setup_logging(args.log)
    try:
        await asyncio.wait_for(scenario(args), 60)
    except asyncio.TimeoutError:
        report(P + "scenario", False, "driver timed out after 60 s")
    return finish()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
