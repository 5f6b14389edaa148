//! Incremental, namespace-aware reader of an XMPP stream over any `AsyncRead`.
//!
//! It turns bytes into [`XmlEvent`]s: the stream header, one complete top-level element
//! (stanza or nonza) at a time, and the stream close. It enforces RFC 6120 section 11
//! (restricted XML: no DTD, comments, processing instructions or entities beyond the five
//! predefined ones), a maximum top-level element size and a maximum nesting depth.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use quick_xml::events::{BytesStart, Event};
use tokio::io::{AsyncRead, ReadBuf};

use super::buf::IdleBuf;

use super::element::{Element, Node};

pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// What went wrong while reading; `error.rs` maps each to its stream error condition.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("connection closed")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not well-formed: {0}")]
    NotWellFormed(String),
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    #[error("element too large")]
    TooLarge,
    #[error("element nested too deeply")]
    TooDeep,
    #[error("unbound namespace prefix {0}")]
    UnboundPrefix(String),
    #[error("text outside any stanza")]
    StrayText,
}

/// The stream's opening tag, namespaces resolved.
#[derive(Debug, Clone)]
pub struct StreamHeader {
    /// Local name of the root element (`stream` when correct).
    pub name: String,
    /// Namespace of the root element.
    pub ns: String,
    /// Default namespace declared on the root (`jabber:client`, `jabber:server`, ...).
    pub default_ns: String,
    pub attrs: Vec<(String, String)>,
}

impl StreamHeader {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub enum XmlEvent {
    StreamOpen(StreamHeader),
    Element(Element),
    StreamClose,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_element_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_element_bytes: 256 * 1024, max_depth: 64 }
    }
}

/// Counts bytes pulled from the socket since the last top-level element ended, and refuses to
/// read past the limit, so a peer can never make the server buffer more than that.
pub struct Counted<R> {
    inner: R,
    count: usize,
    limit: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.count > self.limit {
            return Poll::Ready(Err(io::Error::other(TooLargeMarker)));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.count += buf.filled().len() - before;
        }
        r
    }
}

#[derive(Debug)]
struct TooLargeMarker;
impl std::fmt::Display for TooLargeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("element too large")
    }
}
impl std::error::Error for TooLargeMarker {}

#[derive(Default, Clone)]
struct Scope {
    default_ns: Option<String>,
    prefixes: Vec<(String, String)>,
}

pub struct XmlReader<R> {
    reader: quick_xml::Reader<IdleBuf<Counted<R>>>,
    buf: Vec<u8>,
    scopes: Vec<Scope>,
    /// Elements under construction below the stream root (stack; index 0 is the top-level one).
    building: Vec<Element>,
    opened: bool,
    /// The first byte was checked (see `check_first_byte`).
    started: bool,
    limits: Limits,
}

fn wf(e: impl std::fmt::Display) -> XmlError {
    XmlError::NotWellFormed(e.to_string())
}

/// A reference to an entity that is not predefined is restricted XML (RFC 6120 section 11.1);
/// a broken reference (a bare `&`, a bad character reference) is not well-formed XML.
fn escape_error(err: quick_xml::Error) -> XmlError {
    use quick_xml::escape::EscapeError;
    match err {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(..)) => XmlError::Restricted("entity reference"),
        other => wf(other),
    }
}

/// XML 1.0 `Char`: what may appear in text and attribute values.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn check_chars(s: &str) -> Result<(), XmlError> {
    match s.chars().find(|c| !is_xml_char(*c)) {
        None => Ok(()),
        Some(c) => Err(XmlError::NotWellFormed(format!("character U+{:04X} is not allowed in XML", c as u32))),
    }
}

/// XML 1.0 `Name` (ASCII part checked strictly; other characters as allowed name characters).
fn check_name(name: &str) -> Result<(), XmlError> {
    let mut chars = name.chars();
    let ok_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':' || (!c.is_ascii() && is_xml_char(c));
    let ok_rest = |c: char| ok_start(c) || c.is_ascii_digit() || c == '-' || c == '.';
    let valid = match chars.next() {
        Some(c) => ok_start(c) && chars.all(ok_rest),
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(XmlError::NotWellFormed(format!("invalid name {name:?}")))
    }
}

impl<R: AsyncRead + Unpin> XmlReader<R> {
    pub fn new(inner: R, limits: Limits) -> Self {
        let counted = Counted { inner, count: 0, limit: limits.max_element_bytes };
        Self::from_buffered(IdleBuf::new(counted), limits)
    }

    fn from_buffered(br: IdleBuf<Counted<R>>, limits: Limits) -> Self {
        let mut reader = quick_xml::Reader::from_reader(br);
        let cfg = reader.config_mut();
        cfg.trim_text(false);
        cfg.check_end_names = true;
        cfg.expand_empty_elements = false;
        XmlReader { reader, buf: Vec::with_capacity(256), scopes: Vec::new(), building: Vec::new(), opened: false, started: false, limits }
    }

    /// Start a new stream on the same connection (after SASL success), keeping any bytes the
    /// peer already pipelined.
    pub fn restart(self) -> Self {
        let limits = self.limits;
        Self::from_buffered(self.reader.into_inner(), limits)
    }

    /// Give back the transport (for STARTTLS). Whitespace the peer sent after its last element
    /// is dropped (it is legal between elements); anything else past the point where it must
    /// wait for the TLS handshake is refused, so no plaintext can be injected into the TLS
    /// session (the STARTTLS command-injection class of bugs).
    pub fn into_inner(self) -> Result<R, XmlError> {
        let br = self.reader.into_inner();
        if !br.buffer().iter().all(|b| b.is_ascii_whitespace()) {
            return Err(XmlError::NotWellFormed("data after starttls".into()));
        }
        Ok(br.into_inner().inner)
    }

    /// A top-level element ended: check its exact size (bytes pulled from the socket minus
    /// what is still buffered past it) and start counting the next one.
    fn finish_element(&mut self) -> Result<(), XmlError> {
        let br = self.reader.get_mut();
        let pending = br.buffer().len();
        let counted = br.get_mut();
        let used = counted.count.saturating_sub(pending);
        counted.count = pending;
        if used > self.limits.max_element_bytes {
            return Err(XmlError::TooLarge);
        }
        Ok(())
    }

    /// Before the stream header: the first byte that is not whitespace must open a tag, so that
    /// a peer speaking another protocol (HTTP, a TLS ClientHello) is told at once.
    async fn check_first_byte(&mut self) -> Result<(), XmlError> {
        use tokio::io::AsyncBufReadExt;
        let br = self.reader.get_mut();
        loop {
            let buf = br.fill_buf().await?;
            if buf.is_empty() {
                return Err(XmlError::Eof);
            }
            let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
            if ws < buf.len() {
                if buf[ws] != b'<' {
                    return Err(XmlError::NotWellFormed("not XML".into()));
                }
                br.consume(ws);
                return Ok(());
            }
            let n = buf.len();
            br.consume(n);
        }
    }

    fn resolve(&self, scope: &Scope, qname: &str) -> Result<(String, String), XmlError> {
        let (prefix, local) = match qname.split_once(':') {
            Some((p, l)) => (Some(p), l),
            None => (None, qname),
        };
        let lookup = |p: Option<&str>| -> Option<String> {
            if let Some(p) = p {
                if p == "xml" {
                    return Some(NS_XML.to_string());
                }
                if let Some((_, ns)) = scope.prefixes.iter().rev().find(|(k, _)| k == p) {
                    return Some(ns.clone());
                }
                for s in self.scopes.iter().rev() {
                    if let Some((_, ns)) = s.prefixes.iter().rev().find(|(k, _)| k == p) {
                        return Some(ns.clone());
                    }
                }
                None
            } else {
                if let Some(d) = &scope.default_ns {
                    return Some(d.clone());
                }
                for s in self.scopes.iter().rev() {
                    if let Some(d) = &s.default_ns {
                        return Some(d.clone());
                    }
                }
                Some(String::new())
            }
        };
        match lookup(prefix) {
            Some(ns) => Ok((local.to_string(), ns)),
            None => Err(XmlError::UnboundPrefix(prefix.unwrap_or_default().to_string())),
        }
    }

    /// Parse a start tag: returns the element (no children), its scope.
    fn start(&self, e: &BytesStart<'_>) -> Result<(Element, Scope), XmlError> {
        let qname = std::str::from_utf8(e.name().as_ref()).map_err(wf)?.to_string();
        check_name(&qname)?;
        let mut scope = Scope::default();
        let mut attrs = Vec::new();
        for a in e.attributes().with_checks(true) {
            let a = a.map_err(wf)?;
            let key = std::str::from_utf8(a.key.as_ref()).map_err(wf)?;
            check_name(key)?;
            if a.value.contains(&b'<') {
                return Err(XmlError::NotWellFormed("'<' in an attribute value".into()));
            }
            let value = a.unescape_value().map_err(escape_error)?;
            check_chars(&value)?;
            if key == "xmlns" {
                scope.default_ns = Some(value.into_owned());
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                scope.prefixes.push((p.to_string(), value.into_owned()));
            } else {
                attrs.push((key.to_string(), value.into_owned()));
            }
        }
        let (name, ns) = self.resolve(&scope, &qname)?;
        // Prefixed attributes other than xml: must be bound too (namespace well-formedness).
        for (k, _) in &attrs {
            if let Some((p, _)) = k.split_once(':') {
                if p != "xml"
                    && !scope.prefixes.iter().any(|(q, _)| q == p)
                    && !self.scopes.iter().any(|s| s.prefixes.iter().any(|(q, _)| q == p))
                {
                    return Err(XmlError::UnboundPrefix(p.to_string()));
                }
            }
        }
        Ok((Element { name, ns, attrs, children: Vec::new() }, scope))
    }

    fn push_text(&mut self, text: Cow<'_, str>) -> Result<(), XmlError> {
        match self.building.last_mut() {
            Some(el) => {
                if let Some(Node::Text(t)) = el.children.last_mut() {
                    t.push_str(&text);
                } else {
                    el.children.push(Node::Text(text.into_owned()));
                }
                Ok(())
            }
            None if text.chars().all(|c| c.is_ascii_whitespace()) => Ok(()),
            None => Err(XmlError::StrayText),
        }
    }

    /// Finish the innermost element under construction; returns it if it was top-level.
    fn close_element(&mut self) -> Option<Element> {
        self.scopes.pop();
        let el = self.building.pop()?;
        match self.building.last_mut() {
            Some(parent) => {
                parent.children.push(Node::Element(el));
                None
            }
            None => Some(el),
        }
    }

    /// Read the next stream-level event.
    pub async fn next(&mut self) -> Result<XmlEvent, XmlError> {
        if !self.opened && self.building.is_empty() && self.scopes.is_empty() && !self.started {
            self.check_first_byte().await?;
            self.started = true;
        }
        loop {
            self.buf.clear();
            let ev = match self.reader.read_event_into_async(&mut self.buf).await {
                Ok(ev) => ev.into_owned(),
                Err(quick_xml::Error::Io(e)) => {
                    if e.get_ref().is_some_and(|i| i.is::<TooLargeMarker>()) {
                        return Err(XmlError::TooLarge);
                    }
                    return Err(XmlError::Io(io::Error::new(e.kind(), e.to_string())));
                }
                Err(e) => return Err(wf(e)),
            };
            match ev {
                Event::Decl(_) if !self.opened => continue,
                Event::Decl(_) | Event::PI(_) => return Err(XmlError::Restricted("processing instruction")),
                Event::Comment(_) => return Err(XmlError::Restricted("comment")),
                Event::DocType(_) => return Err(XmlError::Restricted("DTD")),
                Event::Eof => return Err(XmlError::Eof),
                Event::Start(s) if !self.opened => {
                    let (el, scope) = self.start(&s)?;
                    let default_ns = scope.default_ns.clone().unwrap_or_default();
                    self.scopes.push(scope);
                    self.opened = true;
                    self.finish_element()?;
                    return Ok(XmlEvent::StreamOpen(StreamHeader { name: el.name, ns: el.ns, default_ns, attrs: el.attrs }));
                }
                Event::Empty(_) if !self.opened => return Err(XmlError::NotWellFormed("stream header closed at once".into())),
                Event::Start(s) => {
                    if self.building.len() + 1 > self.limits.max_depth {
                        return Err(XmlError::TooDeep);
                    }
                    let (el, scope) = self.start(&s)?;
                    self.scopes.push(scope);
                    self.building.push(el);
                }
                Event::Empty(s) => {
                    if self.building.len() + 1 > self.limits.max_depth {
                        return Err(XmlError::TooDeep);
                    }
                    let (el, scope) = self.start(&s)?;
                    self.scopes.push(scope);
                    self.building.push(el);
                    if let Some(top) = self.close_element() {
                        self.finish_element()?;
                        return Ok(XmlEvent::Element(top));
                    }
                }
                Event::End(_) => {
                    if self.building.is_empty() {
                        self.scopes.clear();
                        return Ok(XmlEvent::StreamClose);
                    }
                    if let Some(top) = self.close_element() {
                        self.finish_element()?;
                        return Ok(XmlEvent::Element(top));
                    }
                }
                Event::Text(t) => {
                    if !self.opened {
                        let raw: &[u8] = t.as_ref();
                        if raw.iter().all(|b| b.is_ascii_whitespace()) {
                            continue;
                        }
                        return Err(XmlError::NotWellFormed("text before stream header".into()));
                    }
                    let text = t.unescape().map_err(escape_error)?;
                    check_chars(&text)?;
                    self.push_text(text)?;
                }
                Event::CData(c) => {
                    let s = std::str::from_utf8(c.as_ref()).map_err(wf)?.to_string();
                    check_chars(&s)?;
                    self.push_text(Cow::Owned(s))?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events(input: &str, limits: Limits) -> Vec<Result<XmlEvent, XmlError>> {
        let mut r = XmlReader::new(input.as_bytes(), limits);
        let mut out = Vec::new();
        loop {
            let ev = r.next().await;
            let stop = ev.is_err() || matches!(ev, Ok(XmlEvent::StreamClose));
            out.push(ev);
            if stop {
                return out;
            }
        }
    }

    const HEAD: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    #[tokio::test]
    async fn parses_header_stanzas_and_close() {
        let input = format!("{HEAD} <message to='a@b'><body>hi &amp; &#x41;</body><x xmlns='urn:x'><y/></x></message>\n</stream:stream>");
        let ev = events(&input, Limits::default()).await;
        match &ev[0] {
            Ok(XmlEvent::StreamOpen(h)) => {
                assert_eq!(h.name, "stream");
                assert_eq!(h.ns, "http://etherx.jabber.org/streams");
                assert_eq!(h.default_ns, "jabber:client");
                assert_eq!(h.attr("to"), Some("localhost"));
            }
            other => panic!("{other:?}"),
        }
        match &ev[1] {
            Ok(XmlEvent::Element(m)) => {
                assert!(m.is("message", "jabber:client"));
                assert_eq!(m.find("body", "jabber:client").unwrap().text_content(), "hi & A");
                assert!(m.find("x", "urn:x").unwrap().find("y", "urn:x").is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(ev[2], Ok(XmlEvent::StreamClose)));
    }

    #[tokio::test]
    async fn rejects_restricted_xml() {
        for bad in ["<!-- c -->", "<?pi x?>", "<message>&foo;</message>", "<message a='&bar;'/>"] {
            let ev = events(&format!("{HEAD}{bad}"), Limits::default()).await;
            assert!(matches!(ev.last(), Some(Err(XmlError::Restricted(_)))), "{bad}: {ev:?}");
        }
        let ev = events("<!DOCTYPE x [<!ENTITY a 'b'>]><stream:stream/>", Limits::default()).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::Restricted(_)))), "{ev:?}");
    }

    #[tokio::test]
    async fn rejects_malformed_and_oversized() {
        let ev = events(&format!("{HEAD}<message></iq>"), Limits::default()).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::NotWellFormed(_)))), "{ev:?}");
        let ev = events(&format!("{HEAD}<a:message/>"), Limits::default()).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::UnboundPrefix(_)))), "{ev:?}");
        let big = format!("{HEAD}<message><body>{}</body></message>", "x".repeat(10_000));
        let ev = events(&big, Limits { max_element_bytes: 4096, max_depth: 8 }).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::TooLarge))), "{ev:?}");
        let deep = format!("{HEAD}{}", "<a>".repeat(20));
        let ev = events(&deep, Limits { max_element_bytes: 4096, max_depth: 8 }).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::TooDeep))), "{ev:?}");
        let ev = events(&format!("{HEAD}hello"), Limits::default()).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::StrayText))), "{ev:?}");
    }

    #[tokio::test]
    async fn refuses_what_xml_forbids() {
        for bad in
            ["<message>\u{1}</message>", "<message a='<'/>", "<<<>>></<<>", "<message>a & b</message>", "<message>&#0;</message>", "<1a/>"]
        {
            let ev = events(&format!("{HEAD}{bad}"), Limits::default()).await;
            assert!(matches!(ev.last(), Some(Err(XmlError::NotWellFormed(_)))), "{bad}: {ev:?}");
        }
        let ev = events("GET / HTTP/1.1\r\n", Limits::default()).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::NotWellFormed(_)))), "{ev:?}");
    }

    #[tokio::test]
    async fn the_size_limit_is_exact() {
        let limits = Limits { max_element_bytes: 1000, max_depth: 8 };
        let fits = format!("<message><body>{}</body></message>", "x".repeat(1000 - 32));
        assert_eq!(fits.len(), 1000);
        let ev = events(&format!("{HEAD}{fits}</stream:stream>"), limits).await;
        assert!(matches!(ev[1], Ok(XmlEvent::Element(_))), "{ev:?}");
        let over = format!("<message><body>{}</body></message>", "x".repeat(1000 - 31));
        let ev = events(&format!("{HEAD}{over}</stream:stream>"), limits).await;
        assert!(matches!(ev.last(), Some(Err(XmlError::TooLarge))), "{ev:?}");
    }

    #[tokio::test]
    async fn many_small_stanzas_do_not_trip_the_size_limit() {
        let mut input = HEAD.to_string();
        for _ in 0..200 {
            input.push_str("<message><body>0123456789012345678901234567890123456789</body></message>");
        }
        input.push_str("</stream:stream>");
        let ev = events(&input, Limits { max_element_bytes: 1024, max_depth: 8 }).await;
        assert_eq!(ev.len(), 202);
        assert!(ev.iter().all(|e| e.is_ok()));
    }
}
