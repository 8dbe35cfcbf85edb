//! The line protocol the harness examples (two-sites, three-places) speak
//! over stdin/stdout, and what they share to serve it: every answer is zero
//! or more payload lines starting with `| `, then one line `ok` or
//! `error: <why>`. Commands are read on their own thread, so SIGTERM and
//! SIGINT are seen while no command comes; end of input, a signal or `stop`
//! ends [`serve`].

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

/// One answer: payload lines, or why the command failed.
pub type Answer = Result<Vec<String>, String>;

pub enum Input {
    Line(String),
    Eof,
    Signal(&'static str),
}

/// Starts reading stdin (one [`Input::Line`] a line, then [`Input::Eof`]) on
/// its own thread and watching SIGTERM/SIGINT on `rt`.
pub fn inputs(rt: &tokio::runtime::Runtime) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel();
    watch_signals(rt, tx.clone());
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) => {
                    if tx.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Input::Eof);
    });
    rx
}

/// Answers each command line with `command` until `stop` (answered `ok`
/// after `state` is dropped), end of input or a signal; `state` is dropped
/// before this returns in every case, so exactly what it started is stopped.
/// A command that panics is answered with the panic's text.
pub fn serve<T>(
    name: &str,
    rx: &mpsc::Receiver<Input>,
    mut state: T,
    mut command: impl FnMut(&mut T, &str) -> Answer,
) {
    loop {
        match rx.recv() {
            Ok(Input::Line(line)) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line == "stop" {
                    drop(state);
                    answer(Ok(Vec::new()));
                    return;
                }
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command(&mut state, line)))
                        .unwrap_or_else(|panic| Err(panic_text(&*panic)));
                answer(result);
            }
            Ok(Input::Signal(signal)) => {
                eprintln!("{name}: {signal}: stopping everything");
                break;
            }
            Ok(Input::Eof) | Err(_) => break,
        }
    }
    drop(state);
}

pub fn answer(result: Answer) {
    let mut out = std::io::stdout().lock();
    let text = match result {
        Ok(lines) => {
            let mut text: String = lines
                .iter()
                .map(|l| format!("| {}\n", l.replace('\n', " ")))
                .collect();
            text.push_str("ok\n");
            text
        }
        Err(why) => format!("error: {}\n", why.replace('\n', " ")),
    };
    // Nobody left to read it: we stop anyway at the next EOF.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".to_string())
}

fn watch_signals(rt: &tokio::runtime::Runtime, tx: mpsc::Sender<Input>) {
    use tokio::signal::unix::{SignalKind, signal};
    rt.spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = tx.send(Input::Signal(name));
    });
}

/// A superuser connection's settings over a unix socket directory.
pub fn superuser(socket_dir: &std::path::Path, port: u16, app: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .application_name(app)
        .connect_timeout(Duration::from_secs(5));
    config
}

/// The server's own message when there is one ("cannot execute INSERT in a
/// read-only transaction"), else the client's.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// Runs `sql` (several statements allowed, simple protocol) within 30 s:
/// each row as its columns joined by `|`.
pub fn sql(rt: &tokio::runtime::Runtime, config: &tokio_postgres::Config, sql: &str) -> Answer {
    rt.block_on(async {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_error(&e))?;
        tokio::spawn(connection);
        let messages = tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
            .await
            .map_err(|_| "no answer within 30 s".to_string())?
            .map_err(|e| pg_error(&e))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect())
    })
}
