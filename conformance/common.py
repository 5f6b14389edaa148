"""Shared helpers for the Starling conformance drivers.

Every driver prints one line per check on stdout:

    CHECK <name> PASS|FAIL <detail>

`conformance/run` collects those lines. Stanzas and library debug output go to
the log file given with --log (the evidence to read when a check fails).
"""

import argparse
import asyncio
import logging
import ssl
import sys
import time
from pathlib import Path

import slixmpp
from slixmpp.xmlstream import ET

RESULTS = []


def report(name, ok, detail=""):
    detail = " ".join(str(detail).split())  # one line
    if len(detail) > 600:
        detail = detail[:600] + "..."
    RESULTS.append((name, ok))
    print(f"CHECK {name} {'PASS' if ok else 'FAIL'} {detail}".rstrip(), flush=True)
    logging.getLogger("conformance").info("CHECK %s %s %s", name, "PASS" if ok else "FAIL", detail)


def base_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1", help="address to connect to")
    p.add_argument("--domain", default="localhost", help="XMPP domain")
    p.add_argument("--starttls-port", type=int, required=True)
    p.add_argument("--tls-port", type=int, required=True)
    p.add_argument("--cafile", default="", help="CA file to verify the server (the self-signed cert); empty: no verification")
    p.add_argument("--log", default="", help="debug log file (stanzas)")
    return p


def setup_logging(path):
    if not path:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return
    logging.basicConfig(
        level=logging.DEBUG,
        filename=path,
        filemode="a",
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )


def xml(stanza):
    try:
        return ET.tostring(stanza.xml, encoding="unicode")
    except Exception:  # pragma: no cover - best effort for reports
        return str(stanza)


class Inbox:
    """What a connection received (`self.incoming`: (time, stanza) pairs), and waiting on it."""

    def mark(self):
        return len(self.incoming)

    async def wait_for(self, pred, timeout=5, since=0):
        """Wait until an incoming stanza (index >= since) satisfies pred."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            while seen < len(self.incoming):
                st = self.incoming[seen][1]
                seen += 1
                try:
                    if pred(st):
                        return st
                except Exception:
                    pass
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.02)

    def recent(self, since=0, limit=8):
        items = [xml(s) for _, s in self.incoming[since:]]
        return " | ".join(items[-limit:]) if items else "(nothing received)"


class Client(Inbox):
    """A slixmpp client that records every incoming top-level element."""

    def __init__(self, label, jid, password, *, args, direct_tls, mech="SCRAM-SHA-256"):
        self.label = label
        self.args = args
        self.direct_tls = direct_tls
        self.x = slixmpp.ClientXMPP(jid, password, sasl_mech=mech)
        x = self.x
        x.enable_plaintext = False
        x.enable_direct_tls = direct_tls
        x.enable_starttls = not direct_tls
        x.use_ipv6 = False
        x.use_aiodns = False
        # Never retry on our own: a failed connection is a failed check.
        x.reconnect_max_attempts = 0
        ctx = ssl.create_default_context()
        if args.cafile:
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=args.cafile)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if direct_tls:
            ctx.set_alpn_protocols(["xmpp-client"])  # XEP-0368
        x.ssl_context = ctx
        # We drive subscriptions by hand and assert on what the server sends.
        x.auto_authorize = None
        x.auto_subscribe = False
        x.whitespace_keepalive = False
        self.incoming = []  # (monotonic time, stanza)
        self.session = asyncio.get_event_loop().create_future()
        self.disconnected = asyncio.get_event_loop().create_future()
        self.auth_failure = None
        self.alpn = None
        self.tls_version = None
        x.add_filter("in", self._filter_in)
        x.add_event_handler("session_start", self._on_session)
        x.add_event_handler("failed_auth", self._on_failed_auth)
        x.add_event_handler("failed_all_auth", self._on_failed_all_auth)
        x.add_event_handler("session_end", self._on_disconnected)
        x.add_event_handler("disconnected", self._on_disconnected)
        x.add_event_handler("connection_failed", self._on_conn_failed)
        x.add_event_handler("ssl_invalid_chain", self._on_conn_failed)
        x.add_event_handler("stream_error", self._on_stream_error)

    # --- events -------------------------------------------------------------
    def _filter_in(self, stanza):
        self.incoming.append((time.monotonic(), stanza))
        return stanza

    def _on_session(self, _):
        self._note_tls()
        if not self.session.done():
            self.session.set_result(True)

    def _note_tls(self):
        t = self.x.transport
        obj = t.get_extra_info("ssl_object") if t is not None else None
        if obj is not None:
            self.alpn = obj.selected_alpn_protocol()
            self.tls_version = obj.version()

    def _on_failed_auth(self, stanza=None):
        # The server's <failure/> (slixmpp passes the stanza).
        self.auth_failure = xml(stanza) if stanza is not None else "failed_auth"
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"authentication failed: {self.auth_failure}"))

    def _on_failed_all_auth(self, *_):
        if self.auth_failure is None:
            self.auth_failure = "no acceptable mechanism"
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"authentication failed: {self.auth_failure}"))

    def _on_conn_failed(self, err=None):
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"connection failed: {err}"))

    def _on_stream_error(self, err):
        if not self.session.done():
            self.session.set_exception(RuntimeError(f"stream error: {xml(err)}"))

    def _on_disconnected(self, *_):
        if not self.session.done():
            self.session.set_exception(RuntimeError("disconnected before session start"))
        if not self.disconnected.done():
            self.disconnected.set_result(True)

    # --- actions ------------------------------------------------------------
    @property
    def port(self):
        return self.args.tls_port if self.direct_tls else self.args.starttls_port

    async def login(self, timeout=15):
        """Connect, authenticate and bind. Returns (ok, detail)."""
        self.x.connect(self.args.host, self.port)
        try:
            await asyncio.wait_for(asyncio.shield(self.session), timeout)
        except asyncio.TimeoutError:
            return False, f"no session within {timeout}s"
        except Exception as e:  # auth / connection failures
            return False, str(e)
        return True, self.describe()

    def describe(self):
        mech = self.x.plugin["feature_mechanisms"].mech
        return (f"jid={self.x.boundjid} mech={getattr(mech, 'name', None)} "
                f"tls={self.tls_version} alpn={self.alpn} starttls={self.used_starttls}")

    @property
    def used_starttls(self):
        return "starttls" in self.x.features

    @property
    def mech_used(self):
        mech = self.x.plugin["feature_mechanisms"].mech
        return getattr(mech, "name", None)

    @property
    def mechs_offered(self):
        return sorted(self.x.plugin["feature_mechanisms"].mech_list)

    @property
    def jid(self):
        return self.x.boundjid

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
            self.abort()

    def abort(self):
        """Drop the TCP connection without closing the stream."""
        t = self.x.transport
        if t is not None:
            t.abort()



def is_presence(st, frm=None, ptype=None):
    if st.tag != "{jabber:client}presence":
        return False
    if frm is not None and str(st["from"]) != str(frm) and st["from"].bare != str(frm):
        return False
    t = st.xml.get("type")
    if ptype == "available":
        return t is None
    return t == ptype


def roster_push_item(st, jid):
    """If st is a roster push naming jid, return the <item/> element."""
    if st.tag != "{jabber:client}iq" or st.xml.get("type") != "set":
        return None
    q = st.xml.find("{jabber:iq:roster}query")
    if q is None:
        return None
    for item in q.findall("{jabber:iq:roster}item"):
        if item.get("jid") == str(jid):
            return item
    return None


async def roster_get(client, timeout=5):
    """Fetch the roster from the server; returns {jid: item element} or raises."""
    iq = client.x.Iq()
    iq["type"] = "get"
    iq.enable("roster")
    resp = await iq.send(timeout=timeout)
    q = resp.xml.find("{jabber:iq:roster}query")
    items = {}
    if q is not None:
        for item in q.findall("{jabber:iq:roster}item"):
            items[item.get("jid")] = item
    return items, xml(resp)


async def roster_set(client, jid, name=None, timeout=5):
    iq = client.x.Iq()
    iq["type"] = "set"
    q = ET.SubElement(iq.xml, "{jabber:iq:roster}query")
    item = ET.SubElement(q, "{jabber:iq:roster}item", {"jid": str(jid)})
    if name:
        item.set("name", name)
    resp = await iq.send(timeout=timeout)
    return xml(resp)


def item_desc(item):
    if item is None:
        return "None"
    return ET.tostring(item, encoding="unicode")


def finish():
    failed = [n for n, ok in RESULTS if not ok]
    return 1 if failed else 0
