//! Durable messaging: offline storage (XEP-0160), the archive (XEP-0313 with RSM), stable
//! stanza ids (XEP-0359) and carbons (XEP-0280).

use starling::xml::{ns, Element};

use crate::common::{error_condition, Client, Db, TestServer};

const MAM: &str = "urn:xmpp:mam:2";
const SID: &str = "urn:xmpp:sid:0";
const RSM: &str = "http://jabber.org/protocol/rsm";
const CARBONS: &str = "urn:xmpp:carbons:2";
const FWD: &str = "urn:xmpp:forward:0";

fn body(m: &Element) -> String {
    m.find("body", ns::CLIENT).map(|b| b.text_content()).unwrap_or_default()
}

fn stanza_id(m: &Element, by: &str) -> Option<String> {
    m.elements().find(|e| e.is("stanza-id", SID) && e.get_attr("by") == Some(by)).and_then(|e| e.get_attr("id")).map(String::from)
}

/// Run a MAM query; returns (forwarded messages with their archive ids, fin element).
async fn mam(c: &mut Client, form: &str, rsm: &str, extra: &str) -> (Vec<(String, Element)>, Element) {
    let qid = c.id();
    let x = if form.is_empty() {
        String::new()
    } else {
        format!("<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>{MAM}</value></field>{form}</x>")
    };
    let set = if rsm.is_empty() { String::new() } else { format!("<set xmlns='{RSM}'>{rsm}</set>") };
    c.send(&format!("<iq type='set' id='{qid}'><query xmlns='{MAM}' queryid='{qid}'>{x}{set}{extra}</query></iq>")).await;
    let mut results = Vec::new();
    loop {
        let e = c
            .recv_where(|e| {
                (e.name == "message" && e.find("result", MAM).is_some()) || (e.name == "iq" && e.get_attr("id") == Some(qid.as_str()))
            })
            .await;
        if e.name == "iq" {
            if e.get_attr("type") == Some("error") {
                return (results, e);
            }
            return (results, e.find("fin", MAM).cloned().expect("fin"));
        }
        let r = e.find("result", MAM).unwrap();
        assert_eq!(r.get_attr("queryid"), Some(qid.as_str()));
        let fwd = r.find("forwarded", FWD).unwrap();
        assert!(fwd.find("delay", ns::DELAY).and_then(|d| d.get_attr("stamp")).is_some());
        results.push((r.get_attr("id").unwrap().to_string(), fwd.find("message", ns::CLIENT).unwrap().clone()));
    }
}

fn bodies(r: &[(String, Element)]) -> Vec<String> {
    r.iter().map(|(_, m)| body(m)).collect()
}

async fn offline_messages_are_delivered_with_delay_and_the_archive_id(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a = s.online("alice", "pw", "a").await;
    for i in 0..3 {
        a.send(&format!(
            "<message to='bob@localhost' type='chat' id='m{i}'><body>hello {i}</body><origin-id xmlns='{SID}' id='o{i}'/></message>"
        ))
        .await;
    }
    // A chat state alone is not kept; a forged stanza-id is removed.
    a.send("<message to='bob@localhost' type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    a.send(&format!(
        "<message to='bob@localhost' type='chat'><body>forged</body><stanza-id xmlns='{SID}' by='bob@localhost' id='fake'/></message>"
    ))
    .await;
    a.expect_silence(300).await; // no error comes back: the messages were accepted
    let mut b = s.login("bob", "pw", "phone").await;
    b.send("<presence/>").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = b.recv_where(|e| e.name == "message").await;
        assert!(m.find("delay", ns::DELAY).is_some(), "delay stamp: {m}");
        got.push(m);
    }
    assert_eq!(got.iter().map(body).collect::<Vec<_>>(), vec!["hello 0", "hello 1", "hello 2", "forged"]);
    assert_ne!(stanza_id(&got[3], "bob@localhost").as_deref(), Some("fake"));
    assert_eq!(got[3].elements().filter(|e| e.is("stanza-id", SID)).count(), 1);
    // The same ids are in the archive.
    let (res, fin) = mam(&mut b, "", "", "").await;
    assert_eq!(fin.get_attr("complete"), Some("true"));
    assert_eq!(bodies(&res), vec!["hello 0", "hello 1", "hello 2", "forged"]);
    for (m, (id, _)) in got.iter().zip(&res) {
        assert_eq!(stanza_id(m, "bob@localhost").as_deref(), Some(id.as_str()));
    }
    // Delivered once: a new resource gets nothing more from the offline store.
    let mut b2 = s.online("bob", "pw", "desk").await;
    b2.recv_where(|e| e.name == "presence" && e.get_attr("from") == Some("bob@localhost/phone")).await;
    b2.expect_silence(300).await;
    s.stop().await;
}

async fn offline_quota(db: Db) {
    let s = TestServer::start_with(db, |c| c.offline.max_per_account = 2).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a = s.online("alice", "pw", "a").await;
    for i in 0..3 {
        a.send(&format!("<message to='bob@localhost' type='chat' id='q{i}'><body>{i}</body></message>")).await;
    }
    let e = a.recv_where(|e| e.name == "message" && e.get_attr("type") == Some("error")).await;
    assert_eq!(e.get_attr("id"), Some("q2"));
    assert_eq!(error_condition(&e).as_deref(), Some("service-unavailable"));
    s.stop().await;
}

async fn archive_paging_filters_and_metadata(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    s.add_user("carol", "pw").await;
    let mut a = s.online("alice", "pw", "a").await;
    let mut b = s.online("bob", "pw", "b").await;
    let mut c = s.online("carol", "pw", "c").await;
    for i in 0..10 {
        a.send(&format!("<message to='bob@localhost/b' type='chat'><body>m{i}</body></message>")).await;
        b.recv_where(|e| e.name == "message").await;
    }
    c.send("<message to='bob@localhost' type='chat'><body>from carol</body></message>").await;
    b.recv_where(|e| e.name == "message").await;
    let (all, fin) = mam(&mut b, "", "", "").await;
    assert_eq!(all.len(), 11);
    assert_eq!(fin.get_attr("complete"), Some("true"));
    // Alice archived her sent copies too.
    let (sent, _) = mam(&mut a, "", "", "").await;
    assert_eq!(bodies(&sent), (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(sent[0].1.get_attr("from"), Some("alice@localhost/a"));

    // Forward paging by RSM after.
    let (p1, f1) = mam(&mut b, "", "<max>4</max>", "").await;
    assert_eq!(bodies(&p1), vec!["m0", "m1", "m2", "m3"]);
    assert_eq!(f1.get_attr("complete"), Some("false"));
    let set = f1.find("set", RSM).unwrap();
    assert_eq!(set.find("first", RSM).unwrap().text_content(), p1[0].0);
    let last = set.find("last", RSM).unwrap().text_content();
    assert_eq!(last, p1[3].0);
    let (p2, _) = mam(&mut b, "", &format!("<max>4</max><after>{last}</after>"), "").await;
    assert_eq!(bodies(&p2), vec!["m4", "m5", "m6", "m7"]);
    let (p3, f3) = mam(&mut b, "", &format!("<max>4</max><after>{}</after>", p2[3].0), "").await;
    assert_eq!(bodies(&p3), vec!["m8", "m9", "from carol"]);
    assert_eq!(f3.get_attr("complete"), Some("true"));

    // Backward paging: the last page, then the one before, chronological inside a page.
    let (l1, lf1) = mam(&mut b, "", "<max>3</max><before/>", "").await;
    assert_eq!(bodies(&l1), vec!["m8", "m9", "from carol"]);
    assert_eq!(lf1.get_attr("complete"), Some("false"));
    let (l2, _) = mam(&mut b, "", &format!("<max>3</max><before>{}</before>", l1[0].0), "").await;
    assert_eq!(bodies(&l2), vec!["m5", "m6", "m7"]);
    let (fl, _) = mam(&mut b, "", "<max>3</max><before/>", "<flip-page/>").await;
    assert_eq!(bodies(&fl), vec!["from carol", "m9", "m8"]);
    let (first_page, ff) = mam(&mut b, "", &format!("<max>5</max><before>{}</before>", all[3].0), "").await;
    assert_eq!(bodies(&first_page), vec!["m0", "m1", "m2"]);
    assert_eq!(ff.get_attr("complete"), Some("true"));

    // Filters.
    let (w, _) = mam(&mut b, "<field var='with'><value>carol@localhost</value></field>", "", "").await;
    assert_eq!(bodies(&w), vec!["from carol"]);
    let (w, _) = mam(&mut b, "<field var='with'><value>alice@localhost/a</value></field>", "<max>2</max>", "").await;
    assert_eq!(bodies(&w), vec!["m0", "m1"]);
    let (w, _) = mam(&mut b, "<field var='with'><value>alice@localhost/other</value></field>", "", "").await;
    assert!(w.is_empty());
    let (w, _) = mam(&mut b, &format!("<field var='after-id'><value>{}</value></field>", all[8].0), "", "").await;
    assert_eq!(bodies(&w), vec!["m9", "from carol"]);
    let (w, _) = mam(&mut b, &format!("<field var='before-id'><value>{}</value></field>", all[2].0), "", "").await;
    assert_eq!(bodies(&w), vec!["m0", "m1"]);
    let (w, _) = mam(&mut b, &format!("<field var='ids'><value>{}</value><value>{}</value></field>", all[1].0, all[5].0), "", "").await;
    assert_eq!(bodies(&w), vec!["m1", "m5"]);
    let (w, _) = mam(
        &mut b,
        "<field var='start'><value>2000-01-01T00:00:00Z</value></field><field var='end'><value>2001-01-01T00:00:00Z</value></field>",
        "",
        "",
    )
    .await;
    assert!(w.is_empty());
    let (w, _) = mam(&mut b, "<field var='start'><value>2000-01-01T00:00:00Z</value></field>", "<max>1</max>", "").await;
    assert_eq!(bodies(&w), vec!["m0"]);

    // Errors.
    let (_, e) = mam(&mut b, "", "<after>no-such-id</after>", "").await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    let (_, e) = mam(&mut b, "<field var='after-id'><value>nope</value></field>", "", "").await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    // An id from another account's archive, and one naming the right row with the wrong random
    // part, name nothing here.
    let (_, e) = mam(&mut b, "", &format!("<after>{}</after>", sent[0].0), "").await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    let forged = format!("{}-AAAAAAAAAAAA", all[0].0.split_once('-').expect("row-random").0);
    let (_, e) = mam(&mut b, "", &format!("<after>{forged}</after>"), "").await;
    assert_eq!(error_condition(&e).as_deref(), Some("item-not-found"));
    let (_, e) = mam(&mut b, "<field var='colour'><value>blue</value></field>", "", "").await;
    assert_eq!(error_condition(&e).as_deref(), Some("feature-not-implemented"));
    // Another account's archive is not readable.
    let r = a.iq(&format!("<iq type='set' id='x1' to='bob@localhost'><query xmlns='{MAM}'/></iq>")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("forbidden"));

    // Metadata and form.
    let r = b.iq(&format!("<iq type='get' id='md'><metadata xmlns='{MAM}'/></iq>")).await;
    let md = r.find("metadata", MAM).unwrap();
    assert_eq!(md.find("start", MAM).unwrap().get_attr("id"), Some(all[0].0.as_str()));
    assert_eq!(md.find("end", MAM).unwrap().get_attr("id"), Some(all[10].0.as_str()));
    let r = b.iq(&format!("<iq type='get' id='fm'><query xmlns='{MAM}'/></iq>")).await;
    assert!(r.find("query", MAM).unwrap().find("x", "jabber:x:data").is_some());
    s.stop().await;
}

async fn preferences_and_hints(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    s.add_user("carol", "pw").await;
    let mut a = s.online("alice", "pw", "a").await;
    let mut b = s.online("bob", "pw", "b").await;
    let mut c = s.online("carol", "pw", "c").await;
    let r = b
        .iq(&format!(
            "<iq type='set' id='p1'><prefs xmlns='{MAM}' default='always'><always/><never><jid>carol@localhost</jid></never></prefs></iq>"
        ))
        .await;
    assert_eq!(r.get_attr("type"), Some("result"), "{r}");
    let r = b.iq(&format!("<iq type='get' id='p2'><prefs xmlns='{MAM}'/></iq>")).await;
    let p = r.find("prefs", MAM).unwrap();
    assert_eq!(p.find("never", MAM).unwrap().elements().next().unwrap().text_content(), "carol@localhost");
    c.send("<message to='bob@localhost' type='chat'><body>not archived</body></message>").await;
    a.send("<message to='bob@localhost' type='chat'><body>archived</body></message>").await;
    a.send("<message to='bob@localhost' type='chat'><body>secret</body><no-store xmlns='urn:xmpp:hints'/></message>").await;
    a.send("<message to='bob@localhost' type='chat'><received xmlns='urn:xmpp:receipts' id='r1'/></message>").await;
    a.send("<message to='bob@localhost' type='chat'><displayed xmlns='urn:xmpp:chat-markers:0' id='r1'/></message>").await;
    a.send("<message to='bob@localhost' type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>").await;
    for _ in 0..6 {
        b.recv_where(|e| e.name == "message").await;
    }
    let (res, _) = mam(&mut b, "", "", "").await;
    assert_eq!(res.len(), 3, "body, receipt and marker archived: {:?}", res.iter().map(|r| r.1.to_string()).collect::<Vec<_>>());
    assert_eq!(body(&res[0].1), "archived");
    assert!(res[1].1.find("received", "urn:xmpp:receipts").is_some());
    assert!(res[2].1.find("displayed", "urn:xmpp:chat-markers:0").is_some());
    let r = b.iq(&format!("<iq type='set' id='p3'><prefs xmlns='{MAM}' default='sometimes'/></iq>")).await;
    assert_eq!(error_condition(&r).as_deref(), Some("bad-request"));
    s.stop().await;
}

async fn carbons_copy_sent_and_received(db: Db) {
    let s = TestServer::start(db).await;
    s.add_user("alice", "pw").await;
    s.add_user("bob", "pw").await;
    let mut a1 = s.online("alice", "pw", "one").await;
    let mut a2 = s.online("alice", "pw", "two").await;
    let mut b = s.online("bob", "pw", "b").await;
    let r = a1.iq(&format!("<iq type='set' id='c1'><enable xmlns='{CARBONS}'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"));
    a1.drain(200).await;
    a2.drain(200).await;
    // Sent from the other resource.
    a2.send("<message to='bob@localhost' type='chat' id='s1'><body>from two</body></message>").await;
    b.recv_where(|e| e.name == "message").await;
    let cc = a1.recv_where(|e| e.name == "message").await;
    assert_eq!(cc.get_attr("from"), Some("alice@localhost"));
    let inner = cc.find("sent", CARBONS).unwrap().find("forwarded", FWD).unwrap().find("message", ns::CLIENT).unwrap();
    assert_eq!(body(inner), "from two");
    assert_eq!(inner.get_attr("from"), Some("alice@localhost/two"));
    // Received by the other resource (full JID).
    b.send("<message to='alice@localhost/two' type='chat'><body>to two</body></message>").await;
    assert_eq!(body(&a2.recv_where(|e| e.name == "message").await), "to two");
    let cc = a1.recv_where(|e| e.name == "message").await;
    let inner = cc.find("received", CARBONS).unwrap().find("forwarded", FWD).unwrap().find("message", ns::CLIENT).unwrap();
    assert_eq!(body(inner), "to two");
    assert!(stanza_id(inner, "alice@localhost").is_some(), "carbon carries the archive id");
    // Private and no-copy: no carbon; a2 without carbons gets no copies of a1's traffic.
    b.send(&format!("<message to='alice@localhost/two' type='chat'><body>p</body><private xmlns='{CARBONS}'/></message>")).await;
    b.send("<message to='alice@localhost/two' type='chat'><body>n</body><no-copy xmlns='urn:xmpp:hints'/></message>").await;
    a2.recv_where(|e| e.name == "message").await;
    a2.recv_where(|e| e.name == "message").await;
    a1.send("<message to='bob@localhost' type='chat'><body>from one</body></message>").await;
    b.recv_where(|e| e.name == "message").await;
    a1.expect_silence(300).await;
    a2.expect_silence(100).await;
    // Disable.
    let r = a1.iq(&format!("<iq type='set' id='c2'><disable xmlns='{CARBONS}'/></iq>")).await;
    assert_eq!(r.get_attr("type"), Some("result"));
    b.send("<message to='alice@localhost/two' type='chat'><body>after</body></message>").await;
    a2.recv_where(|e| e.name == "message").await;
    a1.expect_silence(300).await;
    s.stop().await;
}

crate::on_both!(
    offline_messages_are_delivered_with_delay_and_the_archive_id,
    offline_quota,
    archive_paging_filters_and_metadata,
    preferences_and_hints,
    carbons_copy_sent_and_received,
);

mod retention {
    use super::*;
    use starling::storage::archive::ArchiveFilter;

    async fn old_messages_are_expired(db: Db) {
        let s = TestServer::start_with(db, |c| c.archive.retention_days = 1).await;
        let now = starling::modules::mam::now_micros();
        // Rows of other days, as the archive's clock numbered them then (ids are its time).
        for (i, age_days) in [(0, 3i64), (1, 2), (2, 0)] {
            let id = now - age_days * 86_400_000_000 - 10 + i;
            sqlx::query(
                "INSERT INTO archive (id, owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml) \
                 VALUES ($1, 'alice@localhost', $2, 'bob@localhost', 'bob@localhost/b', 0, $1, NULL, $3)",
            )
            .bind(id)
            .bind(format!("r{i}"))
            .bind("<message xmlns='jabber:client'><body>x</body></message>")
            .execute(&s.storage.pool)
            .await
            .unwrap();
        }
        let server = s.running.as_ref().unwrap().server.clone();
        tokio::spawn(starling::modules::mam::retention_task(server));
        let filter = ArchiveFilter { owner: "alice@localhost".into(), limit: 10, ..Default::default() };
        let mut left = Vec::new();
        for _ in 0..50 {
            left = s.storage.archive_query(&filter).await.unwrap().into_iter().map(|r| r.stanza_id).collect();
            if left.len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(left, vec!["r2"], "only the message younger than the retention period stays");
        s.stop().await;
    }

    crate::on_both!(old_messages_are_expired);
}

mod migration {
    use super::*;
    use starling::storage::archive::{stanza_id_for, ArchiveFilter, NewArchived};

    const BASE: i64 = 1_700_000_000_000_000;
    /// Alice's archive as migration 0002 left it: AUTOINCREMENT ids, 18-character stanza ids,
    /// and a clock that went back once (the fourth message) and gave two messages one time.
    const LEGACY: [(&str, i64); 5] = [
        ("legacyAAAAAAAAAAA1", 1_000),
        ("legacyAAAAAAAAAAA2", 2_000),
        ("legacyAAAAAAAAAAA3", 2_000),
        ("legacyAAAAAAAAAAA4", 1_500),
        ("legacyAAAAAAAAAAA5", 3_000),
    ];

    async fn at_version_2(db: Db, url: &str) {
        let url = if db == Db::Sqlite { format!("{url}?mode=rwc") } else { url.to_string() };
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let files = match db {
            Db::Sqlite => [include_str!("../../schema/sqlite/0001_core.sql"), include_str!("../../schema/sqlite/0002_archive.sql")],
            Db::Postgres => [include_str!("../../schema/postgres/0001_core.sql"), include_str!("../../schema/postgres/0002_archive.sql")],
        };
        sqlx::raw_sql("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        for sql in files {
            sqlx::raw_sql(sql).execute(&pool).await.unwrap();
        }
        sqlx::raw_sql("INSERT INTO schema_migrations (version, applied_at) VALUES (1, 0), (2, 0)").execute(&pool).await.unwrap();
        for (i, (sid, ts)) in LEGACY.iter().enumerate() {
            for (owner, peer, sid) in
                [("alice@localhost", "bob@localhost", sid.to_string()), ("bob@localhost", "alice@localhost", format!("b{i}"))]
            {
                sqlx::query("INSERT INTO archive (owner, stanza_id, peer, peer_full, outgoing, ts, origin_id, xml) VALUES ($1, $2, $3, $4, 0, $5, NULL, $6)")
                    .bind(owner)
                    .bind(sid)
                    .bind(peer)
                    .bind(format!("{peer}/r"))
                    .bind(BASE + ts)
                    .bind(format!("<message xmlns='jabber:client' type='chat'><body>old{i}</body></message>"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }
        pool.close().await;
    }

    async fn archive_ids_are_renumbered_and_old_stanza_ids_still_resolve(db: Db) {
        let s = TestServer::start_after(db, |_| {}, async |url: &str| at_version_2(db, url).await).await;
        s.add_user("alice", "pw").await;
        let all = ArchiveFilter { owner: "alice@localhost".into(), limit: 100, ..Default::default() };
        let rows = s.storage.archive_query(&all).await.unwrap();
        let sids: Vec<&str> = rows.iter().map(|r| r.stanza_id.as_str()).collect();
        assert_eq!(sids, LEGACY.iter().map(|(s, _)| *s).collect::<Vec<_>>(), "order kept");
        assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
        assert!(rows.iter().all(|r| r.id >= r.ts), "an id is never earlier than its message");
        assert_eq!((rows[0].id, rows[4].id), (BASE + 1_000, BASE + 3_000), "where the clock was sound, the id is the time");
        assert_eq!(rows[3].ts, BASE + 1_500, "timestamps are kept as they were");
        for r in &rows {
            assert_eq!(s.storage.archive_row_id("alice@localhost", &r.stanza_id).await.unwrap(), Some(r.id));
            assert_eq!(s.storage.archive_row_id("bob@localhost", &r.stanza_id).await.unwrap(), None, "stanza ids are per archive");
        }
        // Time filters are id ranges: after the clock went back, the archive's order wins.
        let from = |start| ArchiveFilter { start: Some(start), ..all.clone() };
        let later: Vec<String> = s.storage.archive_query(&from(BASE + 2_001)).await.unwrap().into_iter().map(|r| r.stanza_id).collect();
        assert_eq!(later, vec![LEGACY[2].0, LEGACY[3].0, LEGACY[4].0]);

        // New rows follow, with stanza ids that carry their row.
        let mut sid = String::new();
        s.storage
            .archive_insert(|id| {
                sid = stanza_id_for(id);
                NewArchived {
                    id,
                    owner: "alice@localhost".into(),
                    stanza_id: sid.clone(),
                    peer: "bob@localhost".into(),
                    peer_full: "bob@localhost/r".into(),
                    outgoing: false,
                    ts: id,
                    origin_id: None,
                    xml: "<message xmlns='jabber:client' type='chat'><body>new</body></message>".into(),
                }
            })
            .await
            .unwrap();
        let new = s.storage.archive_row_id("alice@localhost", &sid).await.unwrap().expect("the new row resolves");
        assert!(new > rows[4].id);

        // Over XMPP: paging from an old id reaches the new message; the ids field takes both kinds.
        let mut a = s.online("alice", "pw", "a").await;
        let (page, fin) = mam(&mut a, "", &format!("<after>{}</after>", LEGACY[2].0), "").await;
        assert_eq!(bodies(&page), vec!["old3", "old4", "new"]);
        assert_eq!(page[2].0, sid);
        assert_eq!(fin.get_attr("complete"), Some("true"));
        let (page, _) = mam(&mut a, &format!("<field var='ids'><value>{}</value><value>{sid}</value></field>", LEGACY[1].0), "", "").await;
        assert_eq!(bodies(&page), vec!["old1", "new"]);
        let (page, _) = mam(&mut a, &format!("<field var='before-id'><value>{sid}</value></field>"), "<max>2</max><before/>", "").await;
        assert_eq!(bodies(&page), vec!["old3", "old4"]);
        s.stop().await;
    }

    crate::on_both!(archive_ids_are_renumbered_and_old_stanza_ids_still_resolve);
}
