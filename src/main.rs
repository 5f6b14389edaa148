//! The `starling` command: run the server, manage accounts, check a config.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use starling::config::Config;
use starling::sasl::credentials::Credentials;
use starling::storage::Storage;

#[derive(Parser)]
#[command(name = "starling", version, about = "A fast, lean XMPP server")]
struct Cli {
    /// Configuration file (TOML); without it, the zero-config defaults are used.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        action: UserCmd,
    },
    /// Check a configuration and print every problem found.
    CheckConfig,
    /// Print the table of implemented specifications (Markdown).
    Features,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        /// user@host
        jid: String,
        #[command(flatten)]
        pw: PasswordSource,
    },
    /// Delete an account and all its data.
    Del { jid: String },
    /// Change a password.
    Passwd {
        jid: String,
        #[command(flatten)]
        pw: PasswordSource,
    },
    /// Create many accounts: one `user@host password` per line (the password is the rest of
    /// the line after the first run of spaces or tabs), from FILE or standard input. Blank lines
    /// and lines starting with `#` are skipped; accounts that exist already are left as they
    /// are. Passwords are hashed on every core.
    Import {
        /// The list (default: standard input).
        file: Option<PathBuf>,
    },
    /// List accounts.
    List {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
}

#[derive(clap::Args)]
struct PasswordSource {
    /// The password (visible in the process list: prefer --password-stdin or the prompt).
    #[arg(long)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordSource {
    fn read(&self) -> Result<String, String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        let stdin = std::io::stdin();
        if !self.password_stdin && stdin.is_terminal() {
            // Typed at a terminal: read without echo, twice.
            let p = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
            let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
            if p != again {
                return Err("the passwords differ".into());
            }
            if p.is_empty() {
                return Err("empty password".into());
            }
            return Ok(p);
        }
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map_err(|e| e.to_string())?;
        let p = line.trim_end_matches(['\n', '\r']).to_string();
        if p.is_empty() {
            return Err("empty password".into());
        }
        Ok(p)
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, Vec<String>> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}

fn init_logging(cfg: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

async fn user_command(cfg: &Config, action: UserCmd) -> Result<(), String> {
    let storage = Storage::open(&cfg.storage_url(), 2).await.map_err(|e| e.to_string())?;
    let r = match action {
        UserCmd::Add { jid, pw } => {
            let (_, host, node) = cfg.local_account(&jid)?;
            let creds = Credentials::new(&pw.read()?, cfg.auth.scram_iterations);
            if storage.create_user(&host, &node, &creds).await.map_err(|e| e.to_string())? {
                println!("created {node}@{host}");
                Ok(())
            } else {
                Err(format!("{node}@{host} already exists"))
            }
        }
        UserCmd::Del { jid } => {
            let (_, host, node) = cfg.local_account(&jid)?;
            if storage.delete_user(&host, &node).await.map_err(|e| e.to_string())? {
                println!("deleted {node}@{host}");
                Ok(())
            } else {
                Err(format!("{node}@{host} does not exist"))
            }
        }
        UserCmd::Passwd { jid, pw } => {
            let (_, host, node) = cfg.local_account(&jid)?;
            let creds = Credentials::new(&pw.read()?, cfg.auth.scram_iterations);
            if storage.set_password(&host, &node, &creds).await.map_err(|e| e.to_string())? {
                println!("password changed for {node}@{host}");
                Ok(())
            } else {
                Err(format!("{node}@{host} does not exist"))
            }
        }
        UserCmd::Import { file } => import_users(cfg, &storage, file.as_deref()).await,
        UserCmd::List { host } => {
            for (h, u) in storage.list_users(host.as_deref()).await.map_err(|e| e.to_string())? {
                println!("{u}@{h}");
            }
            Ok(())
        }
    };
    storage.close().await;
    r
}

/// `starling user import`: every line checked first, then the hashes made in parallel, then
/// the accounts created one by one; a line in error is reported and the others go on.
async fn import_users(cfg: &Config, storage: &Storage, file: Option<&std::path::Path>) -> Result<(), String> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?,
        None => std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?,
    };
    let mut errors = 0usize;
    let mut wanted: Vec<(String, String, &str)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (jid, password) = match line.split_once([' ', '\t']) {
            Some((j, p)) => (j, p.trim_start_matches([' ', '\t']).trim_end_matches('\r')),
            None => (line, ""),
        };
        match cfg.local_account(jid) {
            Ok(_) if password.is_empty() => {
                eprintln!("line {}: {jid}: no password", n + 1);
                errors += 1;
            }
            Ok((_, host, node)) => wanted.push((host, node, password)),
            Err(e) => {
                eprintln!("line {}: {e}", n + 1);
                errors += 1;
            }
        }
    }
    let iterations = cfg.auth.scram_iterations;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(wanted.len().max(1));
    let creds: Vec<Credentials> = std::thread::scope(|s| {
        let chunk = wanted.len().div_ceil(threads).max(1);
        let parts: Vec<_> = wanted
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|(_, _, p)| Credentials::new(p, iterations)).collect::<Vec<_>>()))
            .collect();
        parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    if creds.len() != wanted.len() {
        return Err("hashing the passwords failed".into());
    }
    let (mut created, mut existed) = (0usize, 0usize);
    for ((host, node, _), c) in wanted.iter().zip(&creds) {
        match storage.create_user(host, node, c).await {
            Ok(true) => created += 1,
            Ok(false) => existed += 1,
            Err(e) => {
                eprintln!("{node}@{host}: {e}");
                errors += 1;
            }
        }
    }
    println!("created {created}, already there {existed}, refused {errors}");
    if errors > 0 {
        return Err(format!("{errors} line(s) refused"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("configuration refused:");
            for e in errors {
                eprintln!("  - {e}");
            }
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("configuration is valid");
            return ExitCode::SUCCESS;
        }
        Command::Features => {
            print!("{}", starling::modules::spec_table());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    init_logging(&cfg);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(cfg.server.worker_threads()).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Serve => starling::server::run(cfg).await.map_err(|e| e.to_string()),
            Command::User { action } => user_command(&cfg, action).await,
            Command::CheckConfig | Command::Features => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
