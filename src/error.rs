//! Error enums, and the ONE place where they become wire errors: [`StreamError::to_xml`]
//! and [`StanzaError::reply_to`].

use crate::xml::{ns, Element, XmlError};

/// RFC 6120 section 4.9.3 stream error conditions used by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    BadFormat,
    Conflict,
    ConnectionTimeout,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    ResourceConstraint,
    RestrictedXml,
    SystemShutdown,
    UnsupportedStanzaType,
    UnsupportedVersion,
    UndefinedCondition,
}

impl StreamError {
    pub fn condition(self) -> &'static str {
        use StreamError::*;
        match self {
            BadFormat => "bad-format",
            Conflict => "conflict",
            ConnectionTimeout => "connection-timeout",
            HostUnknown => "host-unknown",
            ImproperAddressing => "improper-addressing",
            InternalServerError => "internal-server-error",
            InvalidFrom => "invalid-from",
            InvalidNamespace => "invalid-namespace",
            InvalidXml => "invalid-xml",
            NotAuthorized => "not-authorized",
            NotWellFormed => "not-well-formed",
            PolicyViolation => "policy-violation",
            ResourceConstraint => "resource-constraint",
            RestrictedXml => "restricted-xml",
            SystemShutdown => "system-shutdown",
            UnsupportedStanzaType => "unsupported-stanza-type",
            UnsupportedVersion => "unsupported-version",
            UndefinedCondition => "undefined-condition",
        }
    }

    /// `<stream:error>` element (the caller writes it with the `stream` prefix).
    pub fn to_xml(self, text: Option<&str>) -> String {
        self.to_xml_with(text, None)
    }

    /// With an application-specific condition element (e.g. XEP-0198 handled-count-too-high).
    pub fn to_xml_with(self, text: Option<&str>, app: Option<&Element>) -> String {
        let mut s = String::from("<stream:error>");
        Element::new(self.condition(), ns::STREAM_ERRORS).write_to(&mut s, "");
        if let Some(t) = text {
            Element::new("text", ns::STREAM_ERRORS).text(t).write_to(&mut s, "");
        }
        if let Some(a) = app {
            a.write_to(&mut s, "");
        }
        s.push_str("</stream:error>");
        s
    }
}

impl From<&XmlError> for StreamError {
    fn from(e: &XmlError) -> Self {
        match e {
            XmlError::Restricted(_) => StreamError::RestrictedXml,
            XmlError::TooLarge | XmlError::TooDeep => StreamError::PolicyViolation,
            XmlError::StrayText => StreamError::BadFormat,
            XmlError::UnboundPrefix(_) | XmlError::NotWellFormed(_) => StreamError::NotWellFormed,
            XmlError::Io(_) | XmlError::Eof => StreamError::UndefinedCondition,
        }
    }
}

/// RFC 6120 section 8.3 stanza error conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    BadRequest,
    Conflict,
    FeatureNotImplemented,
    Forbidden,
    Gone,
    InternalServerError,
    ItemNotFound,
    JidMalformed,
    NotAcceptable,
    NotAllowed,
    NotAuthorized,
    PolicyViolation,
    RecipientUnavailable,
    RegistrationRequired,
    RemoteServerNotFound,
    RemoteServerTimeout,
    ResourceConstraint,
    ServiceUnavailable,
    UndefinedCondition,
    UnexpectedRequest,
}

impl Condition {
    pub fn name(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest => "bad-request",
            Conflict => "conflict",
            FeatureNotImplemented => "feature-not-implemented",
            Forbidden => "forbidden",
            Gone => "gone",
            InternalServerError => "internal-server-error",
            ItemNotFound => "item-not-found",
            JidMalformed => "jid-malformed",
            NotAcceptable => "not-acceptable",
            NotAllowed => "not-allowed",
            NotAuthorized => "not-authorized",
            PolicyViolation => "policy-violation",
            RecipientUnavailable => "recipient-unavailable",
            RegistrationRequired => "registration-required",
            RemoteServerNotFound => "remote-server-not-found",
            RemoteServerTimeout => "remote-server-timeout",
            ResourceConstraint => "resource-constraint",
            ServiceUnavailable => "service-unavailable",
            UndefinedCondition => "undefined-condition",
            UnexpectedRequest => "unexpected-request",
        }
    }

    /// The error type RFC 6120 section 8.3.3 associates with each condition.
    pub fn error_type(self) -> &'static str {
        use Condition::*;
        match self {
            BadRequest | JidMalformed | NotAcceptable | PolicyViolation => "modify",
            Conflict | FeatureNotImplemented | Forbidden | ItemNotFound | NotAllowed | NotAuthorized | RemoteServerNotFound => "cancel",
            Gone | RecipientUnavailable | ServiceUnavailable | UndefinedCondition => "cancel",
            RegistrationRequired => "auth",
            InternalServerError | RemoteServerTimeout | ResourceConstraint | UnexpectedRequest => "wait",
        }
    }
}

/// A stanza error: a condition, optional text, and an optional application-specific child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaError {
    pub condition: Condition,
    pub text: Option<String>,
    pub app: Option<Box<Element>>,
    /// The error type, where a specification names another than RFC 6120's usual one for the
    /// condition (XEP-0045: `forbidden` and `not-authorized` are `auth`, a full room `wait`).
    pub typ: Option<&'static str>,
}

impl From<Condition> for StanzaError {
    fn from(condition: Condition) -> Self {
        StanzaError { condition, text: None, app: None, typ: None }
    }
}

impl From<crate::storage::StorageError> for StanzaError {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::error!(error = %e, "storage error while handling a stanza");
        Condition::InternalServerError.into()
    }
}

impl StanzaError {
    pub fn new(condition: Condition) -> Self {
        condition.into()
    }

    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    pub fn with_type(mut self, typ: &'static str) -> Self {
        self.typ = Some(typ);
        self
    }

    pub fn with_app(mut self, app: Element) -> Self {
        self.app = Some(Box::new(app));
        self
    }

    /// The `<error/>` child.
    pub fn to_element(&self) -> Element {
        let mut e = Element::new("error", ns::CLIENT)
            .attr("type", self.typ.unwrap_or(self.condition.error_type()))
            .child(Element::new(self.condition.name(), ns::STANZA_ERRORS));
        if let Some(t) = &self.text {
            e = e.child(Element::new("text", ns::STANZA_ERRORS).attr("xml:lang", "en").text(t.clone()));
        }
        if let Some(a) = &self.app {
            e = e.child((**a).clone());
        }
        e
    }

    /// The error reply to `original` (RFC 6120 section 8.3.1): addresses swapped, type error,
    /// the original payload kept for messages and presence. Returns `None` when the original is
    /// itself an error, which must never be answered.
    pub fn reply_to(&self, original: &Element) -> Option<Element> {
        if original.get_attr("type") == Some("error") {
            return None;
        }
        let mut reply = Element::new(original.name.clone(), ns::CLIENT);
        reply.attrs = original.attrs.iter().filter(|(k, _)| k != "to" && k != "from" && k != "type").cloned().collect();
        if let Some(from) = original.get_attr("from") {
            reply.set_attr("to", from);
        }
        if let Some(to) = original.get_attr("to") {
            reply.set_attr("from", to);
        }
        reply.set_attr("type", "error");
        if original.name != "iq" {
            reply.children = original.children.clone();
        }
        reply.children.push(crate::xml::Node::Element(self.to_element()));
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_and_never_answers_errors() {
        let msg = Element::new("message", ns::CLIENT).attr("from", "a@x/r").attr("to", "b@x").attr("id", "1").attr("type", "chat");
        let r = StanzaError::new(Condition::ServiceUnavailable).reply_to(&msg).unwrap();
        assert_eq!(r.get_attr("to"), Some("a@x/r"));
        assert_eq!(r.get_attr("from"), Some("b@x"));
        assert_eq!(r.get_attr("type"), Some("error"));
        assert_eq!(r.get_attr("id"), Some("1"));
        let err = r.find("error", ns::CLIENT).unwrap();
        assert_eq!(err.get_attr("type"), Some("cancel"));
        assert!(err.find("service-unavailable", ns::STANZA_ERRORS).is_some());
        assert!(StanzaError::new(Condition::BadRequest).reply_to(&r).is_none());
    }

    #[test]
    fn stream_error_xml() {
        assert_eq!(
            StreamError::HostUnknown.to_xml(None),
            "<stream:error><host-unknown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
        );
    }
}
