//! The in-memory XML tree: an [`Element`] with a resolved namespace, attributes and children.
//! Serialisation lives here too, so every stanza is written by one function.

/// A child node: an element or a run of text (already unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An XML element. `ns` is the resolved namespace; `attrs` keeps qualified names
/// (`xml:lang` stays `xml:lang`), `xmlns` declarations are not kept as attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub ns: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<String>, ns: impl Into<String>) -> Self {
        Element { name: name.into(), ns: ns.into(), attrs: Vec::new(), children: Vec::new() }
    }

    /// Builder: add an attribute.
    pub fn attr(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: add an attribute when a value is present.
    pub fn attr_opt(mut self, name: &str, value: Option<impl Into<String>>) -> Self {
        if let Some(v) = value {
            self.set_attr(name, v);
        }
        self
    }

    /// Builder: add a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: add text.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.children.push(Node::Text(text.into()));
        self
    }

    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        if let Some(slot) = self.attrs.iter_mut().find(|(k, _)| k == name) {
            slot.1 = value;
        } else {
            self.attrs.push((name.to_string(), value));
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let idx = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(idx).1)
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn find(&self, name: &str, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(name, ns))
    }

    pub fn find_ns(&self, ns: &str) -> Option<&Element> {
        self.elements().find(|e| e.ns == ns)
    }

    pub fn find_mut(&mut self, name: &str, ns: &str) -> Option<&mut Element> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.is(name, ns) => Some(e),
            _ => None,
        })
    }

    /// Move this element and every descendant in namespace `from` to `to` (a link's stream
    /// namespace, such as a component's or BOSH's, to the client namespace used inside).
    pub fn move_ns(&mut self, from: &str, to: &str) {
        if self.ns == from {
            self.ns = to.to_string();
        }
        for c in self.children.iter_mut() {
            if let Node::Element(c) = c {
                c.move_ns(from, to);
            }
        }
    }

    /// Remove every child element matching `pred`.
    pub fn retain_children(&mut self, mut keep: impl FnMut(&Element) -> bool) {
        self.children.retain(|n| match n {
            Node::Element(e) => keep(e),
            Node::Text(_) => true,
        });
    }

    /// Concatenated text of direct children.
    pub fn text_content(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s
    }

    /// Serialise, writing `xmlns` only where the namespace differs from `parent_ns`.
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        out.push('<');
        out.push_str(&self.name);
        if self.ns != parent_ns {
            out.push_str(" xmlns='");
            escape_into(out, &self.ns, true);
            out.push('\'');
        }
        for (k, v) in &self.attrs {
            out.push(' ');
            out.push_str(k);
            out.push_str("='");
            escape_into(out, v, true);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for n in &self.children {
            match n {
                Node::Element(e) => e.write_to(out, &self.ns),
                Node::Text(t) => escape_into(out, t, false),
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serialise as a top-level element of a stream whose default namespace is `stream_ns`.
    pub fn to_xml_in(&self, stream_ns: &str) -> String {
        let mut s = String::with_capacity(128);
        self.write_to(&mut s, stream_ns);
        s
    }

    /// Serialise as a standalone document fragment (namespace always declared).
    pub fn to_xml(&self) -> String {
        self.to_xml_in("")
    }
}

impl std::fmt::Display for Element {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_xml())
    }
}

/// Escape text or an attribute value (single-quoted) into `out`. Runs without special
/// characters are copied whole (all of them are ASCII, so byte offsets are char boundaries).
pub fn escape_into(out: &mut String, s: &str, attr: bool) {
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'\'' if attr => "&apos;",
            b'"' if attr => "&quot;",
            b'\r' => "&#13;",
            b'\t' if attr => "&#9;",
            b'\n' if attr => "&#10;",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    escape_into(&mut o, s, true);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_namespaces_only_where_they_change() {
        let e = Element::new("iq", "jabber:client")
            .attr("type", "result")
            .child(Element::new("query", "jabber:iq:roster").child(Element::new("item", "jabber:iq:roster").attr("jid", "a'b@c")));
        assert_eq!(e.to_xml_in("jabber:client"), "<iq type='result'><query xmlns='jabber:iq:roster'><item jid='a&apos;b@c'/></query></iq>");
    }

    #[test]
    fn escapes_text() {
        let e = Element::new("body", "jabber:client").text("<&>");
        assert_eq!(e.to_xml_in("jabber:client"), "<body>&lt;&amp;&gt;</body>");
    }
}
