//! Entity Capabilities (XEP-0115), as the server uses them: a client's presence announces a
//! `ver` (a hash of its disco#info); the server asks the client once per `ver` (disco#info to
//! `node#ver`), checks the answer against the hash, and keeps the features for every session
//! that announces the same `ver`. PEP (XEP-0163) sends a session a node's events, and the
//! node's last item when it comes online, only if the client asked for them with `<node>+notify`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine;
use sha1::{Digest, Sha1};

use super::{Module, Spec};
use crate::jid::FullJid;
use crate::server::Server;
use crate::stanza::Stanza;
use crate::xml::{ns, Element};

pub const NS_CAPS: &str = "http://jabber.org/protocol/caps";

pub const MODULE: Module = Module {
    name: "caps",
    specs: &[Spec {
        id: "XEP-0115",
        title: "Entity Capabilities",
        note: "clients' caps read (SHA-1 checked, one query per ver) for PEP +notify",
    }],
    host_features: &[],
    account_features: &[],
    iq: &[],
};
/// Feature sets kept (the distinct client versions seen); half go past it.
const MAX_KNOWN: usize = 10_000;
/// Queries awaiting an answer; clients that never answer would otherwise leave theirs here.
const MAX_PENDING: usize = 10_000;

pub type Features = Arc<HashSet<String>>;
/// A form field in the verification string: its var and sorted values.
type Field = (String, Vec<String>);

#[derive(Default)]
pub struct Caps {
    /// Checked feature sets, by `ver`.
    known: Mutex<HashMap<String, Features>>,
    /// Queries on their way: iq id -> (ver, the session asked).
    pending: Mutex<HashMap<String, (String, FullJid)>>,
}

impl Caps {
    pub fn features(&self, ver: &str) -> Option<Features> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).get(ver).cloned()
    }

    fn learn(&self, ver: String, f: Features) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= MAX_KNOWN {
            let drop: Vec<String> = known.keys().take(MAX_KNOWN / 2).cloned().collect();
            for k in drop {
                known.remove(&k);
            }
        }
        known.insert(ver, f);
    }
}

/// The `(node, ver)` a presence announces with a SHA-1 hash.
pub fn announced(el: &Element) -> Option<(String, String)> {
    let c = el.find("c", NS_CAPS)?;
    if c.get_attr("hash") != Some("sha-1") {
        return None;
    }
    Some((c.get_attr("node")?.to_string(), c.get_attr("ver")?.to_string()))
}

/// A session's presence carried caps: if the `ver` is new, ask the client for it. The features,
/// when already known.
pub async fn on_presence(server: &Server, me: &FullJid, node: &str, ver: &str) -> Option<Features> {
    on_presence_from(server, me.domain().as_str(), me, node, ver).await
}

/// As [`on_presence`], for any entity whose presence reached us (a contact on another server
/// too): the query goes from `asker`, one of our domains.
pub async fn on_presence_from(server: &Server, asker: &str, me: &FullJid, node: &str, ver: &str) -> Option<Features> {
    if let Some(f) = server.caps.features(ver) {
        return Some(f);
    }
    let id = format!("caps-{}", crate::stanza::new_id());
    {
        let mut pending = server.caps.pending.lock().unwrap_or_else(|p| p.into_inner());
        // One query per session and ver at a time.
        if pending.values().any(|(v, j)| v == ver && j == me) {
            return None;
        }
        if pending.len() >= MAX_PENDING {
            // Unanswered queries are forgotten; their clients are asked again next time.
            pending.clear();
        }
        pending.insert(id.clone(), (ver.to_string(), me.clone()));
    }
    let iq = Element::new("iq", ns::CLIENT)
        .attr("from", asker)
        .attr("to", me.to_string())
        .attr("type", "get")
        .attr("id", id)
        .child(Element::new("query", ns::DISCO_INFO).attr("node", format!("{node}#{ver}")));
    crate::router::route_element(server, iq).await;
    None
}

/// An IQ result or error addressed to a host: the answer to a caps query?
pub async fn on_answer(server: &Server, st: &Stanza) {
    let Some(id) = st.el.get_attr("id") else { return };
    let Some((ver, who)) = server.caps.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(id) else { return };
    if st.typ() != Some("result") || st.from.as_ref().map(|f| f.to_string()) != Some(who.to_string()) {
        return;
    }
    let Some(q) = st.el.find("query", ns::DISCO_INFO) else { return };
    if ver_of(q) != ver {
        tracing::debug!(jid = %who, %ver, "caps answer does not match its hash; not kept");
        return;
    }
    let features: Features =
        Arc::new(q.elements().filter(|e| e.name == "feature").filter_map(|e| e.get_attr("var").map(str::to_string)).collect());
    server.caps.learn(ver.clone(), features.clone());
    super::pep::came_online(server, &who, &features).await;
}

/// XEP-0115 section 5.1: the verification string of a disco#info result, hashed (SHA-1, base64).
pub fn ver_of(q: &Element) -> String {
    let mut ids: Vec<String> = q
        .elements()
        .filter(|e| e.name == "identity")
        .map(|e| {
            let a = |n: &str| e.get_attr(n).unwrap_or("").to_string();
            format!("{}/{}/{}/{}", a("category"), a("type"), a("xml:lang"), a("name"))
        })
        .collect();
    ids.sort();
    let mut features: Vec<&str> = q.elements().filter(|e| e.name == "feature").filter_map(|e| e.get_attr("var")).collect();
    features.sort_unstable();
    let mut s = String::new();
    for i in ids {
        s.push_str(&i);
        s.push('<');
    }
    for f in features {
        s.push_str(f);
        s.push('<');
    }
    let mut forms: Vec<(String, Vec<Field>)> = q
        .elements()
        .filter(|e| e.is("x", ns::DATA))
        .filter_map(|x| {
            let values = |f: &Element| f.elements().filter(|v| v.name == "value").map(|v| v.text_content()).collect::<Vec<_>>();
            let fields: Vec<&Element> = x.elements().filter(|f| f.name == "field").collect();
            let form_type = fields.iter().find(|f| f.get_attr("var") == Some("FORM_TYPE")).map(|f| values(f).concat())?;
            let mut rest: Vec<Field> = fields
                .iter()
                .filter(|f| f.get_attr("var") != Some("FORM_TYPE"))
                .map(|f| {
                    let mut v = values(f);
                    v.sort();
                    (f.get_attr("var").unwrap_or("").to_string(), v)
                })
                .collect();
            rest.sort();
            Some((form_type, rest))
        })
        .collect();
    forms.sort();
    for (form_type, fields) in forms {
        s.push_str(&form_type);
        s.push('<');
        for (var, values) in fields {
            s.push_str(&var);
            s.push('<');
            for v in values {
                s.push_str(&v);
                s.push('<');
            }
        }
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(crate::xml::parse_stored(xml)).unwrap()
    }

    #[test]
    fn the_simple_example_of_xep_0115() {
        // Section 5.2.
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'><identity category='client' name='Exodus 0.9.1' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/></query>",
        );
        assert_eq!(ver_of(&q), "QgayPKawpkPSDYmwT/WM94uAlu0=");
    }

    #[test]
    fn the_complex_example_of_xep_0115() {
        // Section 5.3: identities in two languages and an extended form.
        let q = parse(
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>\
             <identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>\
             <feature var='http://jabber.org/protocol/caps'/><feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/><feature var='http://jabber.org/protocol/muc'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>\
             <field var='ip_version'><value>ipv4</value><value>ipv6</value></field>\
             <field var='os'><value>Mac</value></field><field var='os_version'><value>10.5.1</value></field>\
             <field var='software'><value>Psi</value></field><field var='software_version'><value>0.11</value></field>\
             </x></query>",
        );
        assert_eq!(ver_of(&q), "q07IKJEyjvHSyhy//CH0CxmKi8w=");
    }
}
