//! The `starling` binary itself: zero-config start, certificate made once and reused, SIGTERM,
//! account commands, config refusal. (Uses the default ports 5222/5223.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use starling::sasl::credentials::Hash;

use crate::common::Client;

const BIN: &str = env!("CARGO_BIN_EXE_starling");

fn run(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child =
        Command::new(BIN).args(args).current_dir(dir).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server did not start listening on {port}");
}

async fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..200 {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("server did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_config_start_accounts_and_sigterm() {
    let dir = std::env::temp_dir().join(format!("starling-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let (ok, out, err) = run(&dir, &["user", "add", "alice@localhost", "--password-stdin"], Some("wonderland\n"));
    assert!(ok, "{out}{err}");
    assert!(dir.join("data/starling.db").exists(), "SQLite database created under ./data");
    let (ok, _, err) = run(&dir, &["user", "add", "alice@localhost", "--password", "x"], None);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, _) = run(&dir, &["user", "add", "bob@localhost", "--password", "builder"], None);
    assert!(ok);
    let (ok, out, _) = run(&dir, &["user", "list"], None);
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["alice@localhost", "bob@localhost"]);
    let (ok, _, err) = run(&dir, &["user", "add", "carol@elsewhere.example", "--password", "x"], None);
    assert!(!ok && err.contains("not a host"), "{err}");
    // Bulk import: the good lines are created, an existing account is left alone, the bad
    // lines are reported and make the command fail.
    let list =
        "# accounts\n\ncarol@localhost \tpass word\nalice@localhost other\nerin@elsewhere.example x\ndave@localhost\nfrank@localhost f\n";
    let (ok, out, err) = run(&dir, &["user", "import"], Some(list));
    assert!(!ok, "{out}{err}");
    assert!(out.contains("created 2, already there 1, refused 2"), "{out}{err}");
    assert!(err.contains("line 5: erin@elsewhere.example") || err.contains("line 5: elsewhere.example"), "{err}");
    assert!(err.contains("line 6: dave@localhost: no password"), "{err}");
    let (ok, out, _) = run(&dir, &["user", "list"], None);
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["alice@localhost", "bob@localhost", "carol@localhost", "frank@localhost"]);
    let (ok, out, err) = run(&dir, &["user", "import"], Some("frank@localhost f\n"));
    assert!(ok && out.contains("created 0, already there 1, refused 0"), "{out}{err}");

    let mut server = Command::new(BIN).arg("serve").current_dir(&dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_port(5222).await;
    let cert = std::fs::read(dir.join("data/certs/localhost.crt")).expect("self-signed certificate made on first start");

    let mut c = Client::connect("127.0.0.1:5222".parse().unwrap()).await;
    c.open("localhost").await;
    c.starttls().await;
    c.open("localhost").await;
    c.auth_scram("alice", "wonderland", Hash::Sha256, None).await.unwrap();
    c.open("localhost").await;
    assert_eq!(c.bind("desk").await, "alice@localhost/desk");
    let mut d = Client::connect_tls("127.0.0.1:5223".parse().unwrap()).await;
    d.open("localhost").await;
    d.auth_scram("bob", "builder", Hash::Sha1, None).await.unwrap();
    let mut e = Client::connect_tls("127.0.0.1:5223".parse().unwrap()).await;
    e.open("localhost").await;
    e.auth_scram("carol", "pass word", Hash::Sha256, None).await.expect("an imported account logs in with its password");
    let mut e = Client::connect_tls("127.0.0.1:5223".parse().unwrap()).await;
    e.open("localhost").await;
    assert_eq!(e.auth_scram("alice", "other", Hash::Sha256, None).await.unwrap_err(), "not-authorized", "import left alice as she was");

    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    assert_eq!(c.stream_error().await, "system-shutdown");
    let st = wait_exit(&mut server).await;
    assert!(st.success(), "clean exit after SIGTERM: {st:?}");

    // Password change and a second start that reuses the certificate.
    let (ok, _, _) = run(&dir, &["user", "passwd", "alice@localhost", "--password", "looking-glass"], None);
    assert!(ok);
    let (ok, _, _) = run(&dir, &["user", "del", "bob@localhost"], None);
    assert!(ok);
    let mut server = Command::new(BIN).arg("serve").current_dir(&dir).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_port(5222).await;
    assert_eq!(std::fs::read(dir.join("data/certs/localhost.crt")).unwrap(), cert, "certificate reused");
    let mut c = Client::connect_tls("127.0.0.1:5223".parse().unwrap()).await;
    c.open("localhost").await;
    assert_eq!(c.auth_scram("alice", "wonderland", Hash::Sha256, None).await.unwrap_err(), "not-authorized");
    let mut c = Client::connect_tls("127.0.0.1:5223".parse().unwrap()).await;
    c.open("localhost").await;
    c.auth_scram("alice", "looking-glass", Hash::Sha256, None).await.unwrap();
    let mut c = Client::connect_tls("127.0.0.1:5223".parse().unwrap()).await;
    c.open("localhost").await;
    assert_eq!(c.auth_scram("bob", "builder", Hash::Sha256, None).await.unwrap_err(), "not-authorized");
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    assert!(wait_exit(&mut server).await.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_is_refused_with_every_error() {
    let dir = std::env::temp_dir().join(format!("starling-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "[server]\nhosts = ['Not A Host']\n[auth]\nscram_iterations = 1\n[limits]\nmax_stanza_size = 10\n").unwrap();
    let (ok, _, err) = run(&dir, &["check-config", "--config", f.to_str().unwrap()], None);
    assert!(!ok);
    assert!(err.contains("server.hosts") && err.contains("scram_iterations") && err.contains("max_stanza_size"), "{err}");
    std::fs::write(&f, "[server]\nhostz = []\n").unwrap();
    let (ok, _, err) = run(&dir, &["serve", "--config", f.to_str().unwrap()], None);
    assert!(!ok && err.contains("hostz"), "{err}");
    let (ok, out, _) = run(&dir, &["check-config", "--config", concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")], None);
    assert!(ok, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
