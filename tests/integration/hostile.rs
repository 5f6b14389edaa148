//! Hostile input: every RFC 6120 section 4.9.3 stream error the server raises, provoked with real
//! bytes on a real socket, and the property that matters most: a bad stream closes only itself.
//! Other sessions on the same server keep working and data stored before the attack stays.

use std::time::{Duration, Instant};

use starling::xml::{ns, Element, XmlError, XmlEvent};

use crate::common::{error_condition, Client, Db, TestServer};

const STREAM_NS: &str = "xmlns:stream='http://etherx.jabber.org/streams'";

/// Where on the connection the hostile bytes are sent.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Fresh TCP connection: the bytes are the very first thing the server sees.
    Fresh,
    /// After our stream header and the server's features, before STARTTLS.
    Opened,
    /// Over TLS, authenticated and bound, as `user` with resource `evil`.
    Bound(&'static str),
}

/// How long to wait for the server's verdict on hostile input before reporting that none came
/// (below the harness's 10 s, which would panic instead of reporting).
const VERDICT_WAIT: Duration = Duration::from_secs(8);

/// What the server did with hostile input: the stream error condition if it closed the stream
/// with one, otherwise a description, in parentheses, of what it did instead. With
/// `header_first`, the server must send its own stream header before the error (RFC 6120
/// section 4.9.1.1: it has not sent one yet).
async fn verdict(c: &mut Client, header_first: bool) -> String {
    async fn next(c: &mut Client) -> Result<Result<XmlEvent, XmlError>, tokio::time::error::Elapsed> {
        tokio::time::timeout(VERDICT_WAIT, c.event()).await
    }
    if header_first {
        match next(c).await {
            Ok(Ok(XmlEvent::StreamOpen(h))) if h.ns == ns::STREAM => {}
            other => return format!("(no stream header before the error, RFC 6120 4.9.1.1: {other:?})"),
        }
    }
    loop {
        match next(c).await {
            Err(_) => return "(no answer: the stream stays open)".into(),
            Ok(Ok(XmlEvent::Element(e))) if e.is("error", ns::STREAM) => {
                let cond = e.elements().find(|c| c.ns == ns::STREAM_ERRORS && c.name != "text").map(|c| c.name.clone()).unwrap_or_default();
                return match next(c).await {
                    Ok(Ok(XmlEvent::StreamClose)) | Ok(Err(_)) => cond,
                    other => format!("({cond}, but the stream was not closed: {other:?})"),
                };
            }
            Ok(Ok(XmlEvent::Element(e))) if e.get_attr("type") == Some("error") => {
                let xml = e.to_string();
                return format!("(processed as a stanza; error reply {})", &xml[..xml.len().min(200)]);
            }
            Ok(Ok(XmlEvent::Element(_))) => continue,
            Ok(other) => return format!("(no stream error: {other:?})"),
        }
    }
}

/// Connect (and log in as `stage` needs), send `bytes`, and return the server's verdict.
async fn attack(s: &TestServer, stage: Stage, bytes: &[u8]) -> String {
    let (mut c, header_first) = match stage {
        Stage::Fresh => (Client::connect(s.c2s).await, true),
        Stage::Opened => {
            let mut c = Client::connect(s.c2s).await;
            c.open("localhost").await;
            (c, false)
        }
        Stage::Bound(user) => (s.login(user, "pw", "evil").await, false),
    };
    let _ = c.try_send(bytes).await;
    verdict(&mut c, header_first).await
}

/// One piece of hostile input and the stream error condition it must get.
struct Case {
    what: &'static str,
    stage: Stage,
    bytes: Vec<u8>,
    expected: &'static str,
}

fn case(what: &'static str, stage: Stage, bytes: impl AsRef<[u8]>, expected: &'static str) -> Case {
    Case { what, stage, bytes: bytes.as_ref().to_vec(), expected }
}

/// Run every case, each on its own connection, and fail listing all the wrong verdicts.
async fn check(s: &TestServer, cases: &[Case]) {
    let mut wrong = Vec::new();
    for c in cases {
        let got = attack(s, c.stage, &c.bytes).await;
        if got != c.expected {
            wrong.push(format!("  {} ({:?}): expected <{}/>, got {got}", c.what, c.stage, c.expected));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases got the wrong verdict:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// A ping from `c` to the server gets a result.
async fn ping(c: &mut Client) {
    let id = c.id();
    let r = c.iq(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
}

/// Like [`ping`], but reads the socket directly and checks that nothing the attackers sent
/// arrived meanwhile: no message at all, no stanza from mallory.
async fn ping_checked(c: &mut Client, after: &str) {
    let id = c.id();
    c.send(&format!("<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
    loop {
        let e = match c.event().await {
            Ok(XmlEvent::Element(e)) => e,
            other => panic!("after {after}: the bystander's stream broke: {other:?}"),
        };
        if e.name == "iq" && e.get_attr("id") == Some(id.as_str()) {
            assert_eq!(e.get_attr("type"), Some("result"), "after {after}: {e}");
            return;
        }
        assert!(e.name != "message", "after {after}: attacker's message delivered: {e}");
        assert!(e.get_attr("from").is_none_or(|f| !f.starts_with("mallory@")), "after {after}: attacker's stanza delivered: {e}");
    }
}

/// The roster of `c`'s account, as the server returns it.
async fn roster_jids(c: &mut Client) -> Vec<String> {
    let id = c.id();
    let r = c.iq(&format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    r.find("query", ns::ROSTER).unwrap().elements().filter_map(|i| i.get_attr("jid")).map(str::to_string).collect()
}

fn stanza_error(e: &Element) -> (Option<String>, Option<String>) {
    (error_condition(e), e.find("error", ns::CLIENT).and_then(|x| x.get_attr("type")).map(str::to_string))
}

/// Nested `<x>` elements `depth` deep inside a message (the message itself is depth 1).
fn nested_message(depth: usize) -> String {
    let inner = depth - 1;
    format!("<message to='localhost'>{}{}</message>", "<x xmlns='urn:example:deep'>".repeat(inner), "</x>".repeat(inner))
}

/// A message whose serialised form is about `bytes` long.
fn big_message(to: &str, bytes: usize) -> String {
    format!("<message to='{to}' type='chat' id='big'><body>{}</body></message>", "A".repeat(bytes))
}

/// The first bytes of a TLS ClientHello, as a client configured for direct TLS sends them to
/// the STARTTLS port, then a `<` so that a parser waiting for markup gets some.
const TLS_CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x5a\x8e\x1f\x00\x13\x02\x13\x03\x13\x01<";

fn stream_header(attrs: &str) -> String {
    format!("<stream:stream {attrs}>")
}

async fn not_well_formed(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("mallory", "pw").await;
    use Stage::*;
    let m = Bound("mallory");
    check(
        &s,
        &[
            case("mismatched tags", Opened, "<message><body>hi</message></body>", "not-well-formed"),
            case("mismatched tags", m, "<iq type='get' id='a'><ping xmlns='urn:xmpp:ping'/></message>", "not-well-formed"),
            case("unbound element prefix", Opened, "<foo:message to='localhost'/>", "not-well-formed"),
            case("unbound attribute prefix", m, "<message to='nobody@localhost' foo:bar='x'><body>x</body></message>", "not-well-formed"),
            case("repeated attribute", m, "<message to='nobody@localhost' to='localhost'/>", "not-well-formed"),
            case("binary garbage before the header", Fresh, b"\x00\x01\x02\x03 garbage\r\n<", "not-well-formed"),
            case("TLS ClientHello on the STARTTLS port", Fresh, TLS_CLIENT_HELLO, "not-well-formed"),
            case("markup garbage", Opened, "<<<>>></<<>", "not-well-formed"),
            // XML 1.0: `<` may not appear in an attribute value, `&` must start a reference, and
            // U+0001 is no XML character at all (a recipient's parser would choke on it).
            case("< in an attribute value", m, "<message to='nobody@localhost' id='<'/>", "not-well-formed"),
            case(
                "bare ampersand (not an entity reference)",
                m,
                "<message to='nobody@localhost'><body>fish & chips</body></message>",
                "not-well-formed",
            ),
            case("U+0001 in text", m, "<message to='nobody@localhost'><body>\u{1}</body></message>", "not-well-formed"),
        ],
    )
    .await;
    s.stop().await;
}

async fn invalid_namespace(db: Db) {
    let s = TestServer::start(db).await;
    check(
        &s,
        &[
            // RFC 6120 4.8.1: the stream namespace.
            case(
                "wrong stream namespace",
                Stage::Fresh,
                stream_header("xmlns='jabber:client' xmlns:stream='http://example.com/not-streams' to='localhost' version='1.0'"),
                "invalid-namespace",
            ),
            // RFC 6120 4.8.2 and 4.9.3.10: a content namespace other than jabber:client.
            case(
                "jabber:server on the client port",
                Stage::Fresh,
                stream_header(&format!("xmlns='jabber:server' {STREAM_NS} to='localhost' version='1.0'")),
                "invalid-namespace",
            ),
            case(
                "unknown content namespace",
                Stage::Fresh,
                stream_header(&format!("xmlns='urn:example:wrong' {STREAM_NS} to='localhost' version='1.0'")),
                "invalid-namespace",
            ),
        ],
    )
    .await;
    s.stop().await;
}

async fn host_unknown(db: Db) {
    let s = TestServer::start(db).await;
    check(
        &s,
        &[case(
            "unserved domain",
            Stage::Fresh,
            stream_header(&format!("xmlns='jabber:client' {STREAM_NS} to='unknown.example' version='1.0'")),
            "host-unknown",
        )],
    )
    .await;
    // Both served hosts are accepted.
    for host in ["localhost", "example.test"] {
        let mut c = Client::connect(s.c2s).await;
        c.open(host).await;
    }
    s.stop().await;
}

async fn unsupported_version(db: Db) {
    let s = TestServer::start(db).await;
    check(
        &s,
        &[
            case(
                "version 2.0",
                Stage::Fresh,
                stream_header(&format!("xmlns='jabber:client' {STREAM_NS} to='localhost' version='2.0'")),
                "unsupported-version",
            ),
            // No version attribute means pre-XMPP "0.9" (RFC 6120 4.7.5), which is not spoken.
            case(
                "no version",
                Stage::Fresh,
                stream_header(&format!("xmlns='jabber:client' {STREAM_NS} to='localhost'")),
                "unsupported-version",
            ),
        ],
    )
    .await;
    // A higher minor version is still XMPP 1 and is accepted.
    let mut c = Client::connect(s.c2s).await;
    c.send(&stream_header(&format!("xmlns='jabber:client' {STREAM_NS} to='localhost' version='1.1'"))).await;
    assert!(matches!(c.event().await, Ok(XmlEvent::StreamOpen(_))));
    assert!(c.recv().await.is("features", ns::STREAM));
    s.stop().await;
}

async fn bad_format(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("mallory", "pw").await;
    check(
        &s,
        &[
            case("text between stanzas, before TLS", Stage::Opened, "this is not whitespace</stream:stream>", "bad-format"),
            case(
                "text between stanzas, bound",
                Stage::Bound("mallory"),
                "<iq type='get' id='k' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>stray text<presence/>",
                "bad-format",
            ),
        ],
    )
    .await;
    s.stop().await;
}

async fn restricted_xml(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("mallory", "pw").await;
    use Stage::*;
    let m = Bound("mallory");
    check(
        &s,
        &[
            // A DTD with entity declarations: the start of every entity-expansion bomb.
            case(
                "DTD",
                Fresh,
                format!(
                    "<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]>{}",
                    stream_header(&format!("xmlns='jabber:client' {STREAM_NS} to='localhost' version='1.0'"))
                ),
                "restricted-xml",
            ),
            case("comment between stanzas", Opened, "<!-- a comment -->", "restricted-xml"),
            case("comment in a stanza", m, "<message to='nobody@localhost'><!-- hidden --><body>x</body></message>", "restricted-xml"),
            case("processing instruction between stanzas", Opened, "<?evil instruction?>", "restricted-xml"),
            case("processing instruction in a stanza", m, "<message to='nobody@localhost'><?php echo 1; ?></message>", "restricted-xml"),
            case("undeclared entity in text", m, "<message to='nobody@localhost'><body>&foo;</body></message>", "restricted-xml"),
            case(
                "undeclared entity in an attribute",
                m,
                "<message to='nobody@localhost' id='&bar;'><body>x</body></message>",
                "restricted-xml",
            ),
        ],
    )
    .await;
    s.stop().await;
}

async fn policy_violation_oversized_stanza(db: Db) {
    const LIMIT: usize = 16384;
    let s = TestServer::start_with(db, |cfg| cfg.limits.max_stanza_size = LIMIT).await;
    s.add_user("alice", "pw").await;
    s.add_user("mallory", "pw").await;
    let mut alice = s.login("alice", "pw", "home").await;
    // Under the limit: delivered.
    let mut m = s.login("mallory", "pw", "evil").await;
    m.send(&big_message("alice@localhost/home", 12_000)).await;
    let got = alice.recv_where(|e| e.name == "message").await;
    assert_eq!(got.find("body", ns::CLIENT).unwrap().text_content().len(), 12_000);
    // Over the limit: policy-violation, however far over, before authentication and after.
    // (Addressed to nobody, so a stanza the server accepts comes back as an error reply.)
    use Stage::*;
    let over = |n: usize| big_message("nobody@localhost", n);
    check(
        &s,
        &[
            case("17000-byte stanza, before TLS", Opened, over(17_000 - 70), "policy-violation"),
            case("20000-byte stanza, before TLS", Opened, over(20_000 - 70), "policy-violation"),
            case("60000-byte stanza, before TLS", Opened, over(60_000 - 70), "policy-violation"),
            case("17000-byte stanza, bound", Bound("mallory"), over(17_000 - 70), "policy-violation"),
            case("20000-byte stanza, bound", Bound("mallory"), over(20_000 - 70), "policy-violation"),
            case("60000-byte stanza, bound", Bound("mallory"), over(60_000 - 70), "policy-violation"),
        ],
    )
    .await;
    ping(&mut alice).await;
    s.stop().await;
}

async fn policy_violation_nesting_too_deep(db: Db) {
    let s = TestServer::start_with(db, |cfg| cfg.limits.max_depth = 16).await;
    s.add_user("mallory", "pw").await;
    // At the limit: accepted (a message to the server gets no reply, the stream stays).
    let mut m = s.login("mallory", "pw", "evil").await;
    m.send(&nested_message(16)).await;
    ping(&mut m).await;
    check(
        &s,
        &[
            case("one level too deep", Stage::Bound("mallory"), nested_message(17), "policy-violation"),
            case("far too deep, never closed, before TLS", Stage::Opened, "<message>".to_string() + &"<a>".repeat(100), "policy-violation"),
        ],
    )
    .await;
    s.stop().await;
}

async fn connection_timeout(db: Db) {
    let s = TestServer::start_with(db, |cfg| cfg.c2s.auth_timeout_secs = 1).await;
    s.add_user("alice", "pw").await;
    let mut alice = s.login("alice", "pw", "home").await;
    // Says nothing at all.
    let started = Instant::now();
    let mut silent = Client::connect(s.c2s).await;
    assert_eq!(verdict(&mut silent, true).await, "connection-timeout");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before the 1 s timeout");
    // Opens the stream, then stalls.
    let mut stalled = Client::connect(s.c2s).await;
    stalled.open("localhost").await;
    assert_eq!(verdict(&mut stalled, false).await, "connection-timeout");
    // The timeout covers negotiation only: a session bound before it expired is not affected.
    ping(&mut alice).await;
    s.stop().await;
}

async fn not_authorized_before_authentication(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("mallory", "pw").await;
    let mut alice = s.login("alice", "pw", "home").await;
    // Before TLS.
    let mut c = Client::connect(s.c2s).await;
    c.open("localhost").await;
    c.send("<message to='alice@localhost/home'><body>spam</body></message>").await;
    assert_eq!(verdict(&mut c, false).await, "not-authorized");
    // After TLS, before SASL.
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.send("<presence to='alice@localhost'/>").await;
    assert_eq!(verdict(&mut c, false).await, "not-authorized");
    // After SASL, before binding a resource (RFC 6120 7.1).
    let mut c = Client::connect_tls(s.c2s_tls).await;
    c.open("localhost").await;
    c.auth_plain("mallory", "pw").await.unwrap();
    c.open("localhost").await;
    c.send("<message to='alice@localhost/home'><body>spam</body></message>").await;
    assert_eq!(verdict(&mut c, false).await, "not-authorized");
    // None of it reached alice.
    alice.expect_silence(200).await;
    s.stop().await;
}

async fn unsupported_stanza_type(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("mallory", "pw").await;
    let m = Stage::Bound("mallory");
    check(
        &s,
        &[
            case("unknown element in jabber:client", m, "<foo to='localhost'/>", "unsupported-stanza-type"),
            case(
                "message in another namespace",
                m,
                "<message xmlns='urn:example:other' to='nobody@localhost'/>",
                "unsupported-stanza-type",
            ),
        ],
    )
    .await;
    s.stop().await;
}

async fn invalid_from(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("mallory", "pw").await;
    let mut alice = s.login("alice", "pw", "home").await;
    let m = Stage::Bound("mallory");
    check(
        &s,
        &[
            case(
                "someone else entirely",
                m,
                "<message from='someone@else' to='alice@localhost/home'><body>x</body></message>",
                "invalid-from",
            ),
            case(
                "another local user",
                m,
                "<message from='alice@localhost/home' to='alice@localhost/home'><body>x</body></message>",
                "invalid-from",
            ),
            case(
                "another resource of one's own account",
                m,
                "<iq type='get' id='f' from='mallory@localhost/other' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
                "invalid-from",
            ),
        ],
    )
    .await;
    // One's own full and bare JID are fine.
    let mut m = s.login("mallory", "pw", "good").await;
    let r = m.iq("<iq type='get' id='own1' from='mallory@localhost/good' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let r = m.iq("<iq type='get' id='own2' from='mallory@localhost' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    alice.expect_silence(200).await;
    s.stop().await;
}

async fn whitespace_keepalives_are_accepted(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut bob = s.login("bob", "pw", "b").await;
    let mut c = s.login("alice", "pw", "a").await;
    for ws in [" ", "\n", "\r\n", "\t  \n "] {
        c.send(ws).await;
        ping(&mut c).await;
    }
    // Keepalives right before, between and after stanzas in one write.
    c.send(
        " \n<message to='bob@localhost/b' id='m1'><body>one</body></message>\n\n <message to='bob@localhost/b' id='m2'><body>two</body></message> \t",
    )
    .await;
    ping(&mut c).await;
    let m1 = bob.recv_where(|e| e.name == "message").await;
    let m2 = bob.recv_where(|e| e.name == "message").await;
    assert_eq!((m1.get_attr("id"), m2.get_attr("id")), (Some("m1"), Some("m2")));
    // Keepalives are also fine during negotiation.
    let mut n = Client::connect(s.c2s).await;
    n.open("localhost").await;
    n.send("  \n ").await;
    n.starttls().await;
    n.open("localhost").await;
    n.auth_plain("alice", "pw").await.unwrap();
    n.open("localhost").await;
    n.send("\n").await;
    n.bind("n").await;
    ping(&mut n).await;
    s.stop().await;
}

async fn malformed_to_gets_a_stanza_error_not_a_stream_error(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    let mut c = s.login("alice", "pw", "a").await;
    for to in ["@localhost", "alice@", "alice@localhost/", "a@b@c"] {
        let r = c.iq(&format!("<iq type='get' id='j1' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>")).await;
        assert_eq!(r.get_attr("type"), Some("error"), "{to}: {r}");
        assert_eq!(stanza_error(&r), (Some("jid-malformed".into()), Some("modify".into())), "{to}: {r}");
        c.send(&format!("<message to='{to}' id='j2'><body>x</body></message>")).await;
        let r = c.recv_where(|e| e.name == "message" && e.get_attr("id") == Some("j2")).await;
        assert_eq!(r.get_attr("type"), Some("error"), "{to}: {r}");
        assert_eq!(stanza_error(&r).0.as_deref(), Some("jid-malformed"), "{to}: {r}");
        // The stream is still open and usable.
        ping(&mut c).await;
    }
    s.stop().await;
}

/// Plaintext pipelined behind `<starttls/>` must never be processed, before or after the TLS
/// handshake (the STARTTLS command-injection class of bugs): the server refuses the stream.
async fn plaintext_pipelined_after_starttls_is_refused(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    let mut alice = s.login("alice", "pw", "home").await;
    let mut c = Client::connect(s.c2s).await;
    c.open("localhost").await;
    c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='alice@localhost/home'><body>injected</body></message>").await;
    let got = verdict(&mut c, false).await;
    assert!(!got.is_empty() && !got.starts_with('('), "expected a stream error, got {got}");
    alice.expect_silence(300).await;
    ping(&mut alice).await;
    s.stop().await;
}

/// The property that matters most: whatever one connection sends, the server closes that
/// stream alone. Sessions bound before keep working after every attack, messages still flow
/// between them, and data stored before is intact. Attackers are another account and another
/// resource of the bystander's own account.
async fn one_bad_stream_harms_no_other_session_or_data(db: Db) {
    let s = TestServer::start_with(db, |cfg| cfg.limits.max_stanza_size = 16384).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    s.add_user("mallory", "pw").await;
    let mut alice = s.online("alice", "pw", "home").await;
    let mut bob = s.online("bob", "pw", "home").await;
    let r =
        alice.iq("<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='carol@localhost' name='Carol'/></query></iq>").await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    alice.drain(100).await;

    use Stage::*;
    let (m, a) = (Bound("mallory"), Bound("alice"));
    let header = |attrs: &str| stream_header(&format!("{attrs} {STREAM_NS}"));
    let attacks = [
        case("mismatched tags", Opened, "<message></iq>", "not-well-formed"),
        case("unbound prefix", m, "<x:message/>", "not-well-formed"),
        case("TLS ClientHello", Fresh, TLS_CLIENT_HELLO, "not-well-formed"),
        case(
            "wrong stream namespace",
            Fresh,
            "<stream:stream xmlns='jabber:client' xmlns:stream='urn:wrong' to='localhost' version='1.0'>",
            "invalid-namespace",
        ),
        case("wrong content namespace", Fresh, header("xmlns='jabber:server' to='localhost' version='1.0'"), "invalid-namespace"),
        case("unknown host", Fresh, header("xmlns='jabber:client' to='unknown.example' version='1.0'"), "host-unknown"),
        case("version 2.0", Fresh, header("xmlns='jabber:client' to='localhost' version='2.0'"), "unsupported-version"),
        case("stray text", a, "<presence/>text<presence/>", "bad-format"),
        case("comment", Opened, "<!-- x -->", "restricted-xml"),
        case("processing instruction", m, "<?pi x?>", "restricted-xml"),
        case(
            "DTD",
            Fresh,
            format!("<!DOCTYPE x [<!ENTITY a 'b'>]>{}", header("xmlns='jabber:client' to='localhost' version='1.0'")),
            "restricted-xml",
        ),
        case("entity reference", a, "<message to='bob@localhost'><body>&foo;</body></message>", "restricted-xml"),
        case("oversized stanza", a, big_message("bob@localhost", 40_000), "policy-violation"),
        case("oversized stanza before auth", Opened, big_message("bob@localhost", 40_000), "policy-violation"),
        case("nesting too deep", m, nested_message(200), "policy-violation"),
        case("stanza before auth", Opened, "<message to='alice@localhost'><body>x</body></message>", "not-authorized"),
        case("unknown top-level element", a, "<foo/>", "unsupported-stanza-type"),
        case("forged from", m, "<message from='alice@localhost/home' to='bob@localhost'/>", "invalid-from"),
        case("forged from, own account", a, "<message from='alice@localhost/home' to='bob@localhost'/>", "invalid-from"),
    ];
    let mut wrong = Vec::new();
    for c in &attacks {
        let got = attack(&s, c.stage, &c.bytes).await;
        if got != c.expected {
            wrong.push(format!("  {}: expected <{}/>, got {got}", c.what, c.expected));
        }
        ping_checked(&mut alice, c.what).await;
        ping_checked(&mut bob, c.what).await;
    }
    // Messages still flow between the two sessions.
    alice.send("<message to='bob@localhost/home' id='after'><body>still here</body></message>").await;
    let msg = bob.recv_where(|e| e.name == "message").await;
    assert_eq!(msg.get_attr("id"), Some("after"));
    assert_eq!(msg.get_attr("from"), Some("alice@localhost/home"));
    // The roster item stored before is still there, over the wire and in storage.
    assert_eq!(roster_jids(&mut alice).await, vec!["carol@localhost".to_string()]);
    assert_eq!(s.storage.roster("alice@localhost").await.unwrap().len(), 1);
    // And new sessions can still log in and see it.
    let mut again = s.login("alice", "pw", "later").await;
    ping(&mut again).await;
    assert_eq!(roster_jids(&mut again).await, vec!["carol@localhost".to_string()]);
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    s.stop().await;
}

crate::on_both!(
    not_well_formed,
    invalid_namespace,
    host_unknown,
    unsupported_version,
    bad_format,
    restricted_xml,
    policy_violation_oversized_stanza,
    policy_violation_nesting_too_deep,
    connection_timeout,
    not_authorized_before_authentication,
    unsupported_stanza_type,
    invalid_from,
    whitespace_keepalives_are_accepted,
    malformed_to_gets_a_stanza_error_not_a_stream_error,
    plaintext_pipelined_after_starttls_is_refused,
    one_bad_stream_harms_no_other_session_or_data,
);
