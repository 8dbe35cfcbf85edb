//! Throwaway PostgreSQL servers for integration tests.
//!
//! Every server lives in its own temporary directory under /tmp (data dir,
//! unix socket dir, log file, TLS material) and listens on a random loopback
//! port. When the tests run as root (CI does), the PostgreSQL binaries are run
//! as the `postgres` OS user via `runuser`, because initdb/postgres refuse to
//! run as root.

use std::collections::HashSet;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tokio_postgres::NoTls;

/// Application name of the support code's own superuser sessions, so that
/// [`PgServer::client_backends`] never counts them (a just-closed session's
/// backend can linger in pg_stat_activity for a moment).
const SUPPORT_APP_NAME: &str = "pgtest-support";

/// Role created on every server; it gets a password when [`PgOptions::password`] is set.
pub const WATCHDOG_USER: &str = "watchdog";

#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// If set, role `watchdog` gets this (SCRAM) password and TCP connections
    /// require scram-sha-256. If unset, TCP connections are trusted. The
    /// superuser `postgres` over the unix socket is always trusted.
    pub password: Option<String>,
    /// Serve TLS with a server certificate (CN=localhost, SAN DNS:localhost,
    /// IP:127.0.0.1) signed by a fresh CA; see [`PgServer::ca_file`].
    pub tls: bool,
    /// Run the server in recovery (a standby with no primary), so
    /// `pg_is_in_recovery()` is true and the server is read-only.
    pub standby: bool,
    /// Make the server a plain streaming standby of this primary
    /// (`pg_basebackup -R` through whatever address is given).
    pub replica_of: Option<SocketAddr>,
}

pub struct PgServer {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    ca_file: Option<PathBuf>,
    port: u16,
    as_postgres_user: bool,
    running: AtomicBool,
    // Declared last so the directory outlives everything else during drop.
    dir: TempDir,
}

enum StartError {
    AddrInUse,
}

impl PgServer {
    pub fn start(opts: PgOptions) -> PgServer {
        blocking(|| Self::start_blocking(opts))
    }

    fn start_blocking(opts: PgOptions) -> PgServer {
        let bin_dir = find_bin_dir();
        let as_postgres_user = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("pgtest-")
            .tempdir_in("/tmp")
            .expect("create temp dir for PostgreSQL");
        let root = dir.path().to_path_buf();
        let socket_dir = root.join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");
        let ca_file = opts.tls.then(|| generate_tls(&root.join("tls")));
        if as_postgres_user {
            fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
            let out = run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&root));
            assert!(
                out.status.success(),
                "chown -R postgres {}: {}",
                root.display(),
                describe(&out)
            );
        }

        let mut server = PgServer {
            data_dir: root.join("data"),
            log_file: root.join("postgres.log"),
            socket_dir,
            ca_file,
            port: free_port(),
            as_postgres_user,
            running: AtomicBool::new(false),
            bin_dir,
            dir,
        };
        match opts.replica_of {
            Some(upstream) => server.basebackup(upstream),
            None => {
                server.initdb(&opts);
                server.setup_roles(&opts);
            }
        }
        if opts.standby {
            server.write_owned_file(&server.data_dir.join("standby.signal"), "");
        }

        for attempt in 1..=3 {
            if attempt > 1 {
                server.port = free_port();
            }
            server.write_config(&opts);
            match server.try_start() {
                Ok(()) => return server,
                Err(StartError::AddrInUse) if attempt < 3 => continue,
                Err(StartError::AddrInUse) => panic!(
                    "PostgreSQL could not bind a free port 3 times in a row\n--- log ---\n{}",
                    server.log_contents()
                ),
            }
        }
        unreachable!()
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone()
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Clean shutdown (`pg_ctl stop -m fast`): clients are disconnected and
    /// the port is closed. Idempotent.
    pub fn stop(&self) {
        blocking(|| self.stop_with_mode("fast"));
    }

    /// Crash-like shutdown (`pg_ctl stop -m immediate`). Idempotent.
    pub fn kill(&self) {
        blocking(|| self.stop_with_mode("immediate"));
    }

    /// Starts a smart shutdown (`pg_ctl stop -m smart`, not waiting): the
    /// server refuses new sessions with SQLSTATE 57P03 ("the database system
    /// is shutting down") and exits once the existing sessions are gone.
    /// [`stop`](Self::stop), [`kill`](Self::kill) and drop still finish it off.
    pub fn begin_smart_shutdown(&self) {
        blocking(|| {
            assert!(self.is_running(), "begin_smart_shutdown on a stopped server");
            let mut cmd = self.pg_command("pg_ctl");
            cmd.arg("stop")
                .args(["-m", "smart", "-W", "-D"])
                .arg(&self.data_dir);
            let out = run(&mut cmd);
            assert!(
                out.status.success(),
                "pg_ctl stop -m smart failed: {}",
                describe(&out)
            );
        })
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)
    /// or [`kill`](Self::kill)) and waits until it accepts connections. A
    /// running server is stopped cleanly first.
    pub fn restart(&self) {
        blocking(|| {
            self.stop_with_mode("fast");
            // The port is ours, but e.g. a client's ephemeral port can
            // transiently collide with it; keep trying on the same port.
            for _ in 0..20 {
                match self.try_start() {
                    Ok(()) => return,
                    Err(StartError::AddrInUse) => std::thread::sleep(Duration::from_millis(250)),
                }
            }
            panic!(
                "PostgreSQL could not re-bind port {}\n--- log ---\n{}",
                self.port,
                self.log_contents()
            );
        })
    }

    /// Number of client backends, excluding the support code's own sessions.
    pub async fn client_backends(&self) -> i64 {
        let client = self.superuser_client().await;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' \
                   AND pid <> pg_backend_pid() \
                   AND application_name IS DISTINCT FROM $1",
                &[&SUPPORT_APP_NAME],
            )
            .await
            .unwrap_or_else(|e| panic!("counting client backends: {e}"));
        row.get(0)
    }

    /// Runs `sql` (may hold several statements) as superuser over the unix socket.
    pub async fn execute(&self, sql: &str) {
        let client = self.superuser_client().await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("executing {sql:?}: {e:?}"));
    }

    /// A superuser connection over the unix socket; its connection task is spawned.
    pub async fn superuser_client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .application_name(SUPPORT_APP_NAME)
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("superuser connection over {}: {e:?}", self.socket_dir.display()));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    pub fn log_contents(&self) -> String {
        fs::read(&self.log_file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn initdb(&self, opts: &PgOptions) {
        let auth_host = if opts.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let out = run(self
            .pg_command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", "postgres", "--auth-local=trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync", "--no-instructions"])
            .arg(format!("--auth-host={auth_host}")));
        assert!(out.status.success(), "initdb failed: {}", describe(&out));
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\ninclude 'watchdog_test.conf'\n");
        fs::write(&conf, text).expect("write postgresql.conf");
    }

    /// A copy of `upstream` that streams from it: roles, config and data
    /// come from the primary; our own config include then sets port etc.
    fn basebackup(&self, upstream: SocketAddr) {
        let out = run(self
            .pg_command("pg_basebackup")
            .args([
                "-h",
                &upstream.ip().to_string(),
                "-p",
                &upstream.port().to_string(),
            ])
            .args(["-U", "postgres", "-R", "-X", "stream", "--checkpoint=fast", "-D"])
            .arg(&self.data_dir));
        assert!(out.status.success(), "pg_basebackup failed: {}", describe(&out));
    }

    /// Creates the roles in single-user mode, before the first start, so
    /// it works for standbys (read-only once started) too.
    fn setup_roles(&self, opts: &PgOptions) {
        let mut sql = format!("CREATE ROLE {WATCHDOG_USER} LOGIN");
        if let Some(password) = &opts.password {
            sql.push_str(&format!(" PASSWORD '{}'", password.replace('\'', "''")));
        }
        sql.push_str(";\n");
        // The server must be able to start with our settings, not initdb's.
        self.write_config(opts);
        let out = run_with_stdin(
            self.pg_command("postgres")
                .arg("--single")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-c", "exit_on_error=on", "postgres"]),
            &sql,
        );
        assert!(
            out.status.success(),
            "creating roles in single-user mode failed: {}",
            describe(&out)
        );
    }

    fn write_config(&self, opts: &PgOptions) {
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sock}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             max_connections = 20\n\
             shared_buffers = 16MB\n\
             max_wal_size = 64MB\n\
             log_connections = on\n\
             log_disconnections = on\n",
            port = self.port,
            sock = self.socket_dir.display(),
        );
        if opts.tls {
            let tls = self.dir.path().join("tls");
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                tls.join("server.crt").display(),
                tls.join("server.key").display(),
            ));
        }
        self.write_owned_file(&self.data_dir.join("watchdog_test.conf"), &conf);
    }

    fn try_start(&self) -> Result<(), StartError> {
        let log_len = fs::metadata(&self.log_file)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        // Marked running up front: if pg_ctl gives up waiting (or we panic
        // below) while a postmaster is up after all, drop still stops it.
        self.running.store(true, Ordering::SeqCst);
        let out = run(self
            .pg_command("pg_ctl")
            .arg("start")
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file));
        if out.status.success() {
            return Ok(());
        }
        let log = self.log_contents();
        let new_log = log.get(log_len..).unwrap_or(&log);
        if new_log.contains("Address already in use") {
            self.running.store(false, Ordering::SeqCst);
            return Err(StartError::AddrInUse);
        }
        panic!(
            "pg_ctl start failed (port {}): {}\n--- log ---\n{log}",
            self.port,
            describe(&out)
        );
    }

    fn stop_with_mode(&self, mode: &str) {
        if !self.running.swap(false, Ordering::SeqCst) {
            return;
        }
        let out = run(&mut self.pg_stop_command(mode));
        // A server that already died on its own is stopped too.
        if !out.status.success() && !describe(&out).contains("Is server running?") {
            panic!(
                "pg_ctl stop -m {mode} failed: {}\n--- log ---\n{}",
                describe(&out),
                self.log_contents()
            );
        }
    }

    fn pg_stop_command(&self, mode: &str) -> Command {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("stop")
            .args(["-m", mode, "-w", "-t", "60", "-D"])
            .arg(&self.data_dir);
        cmd
    }

    /// A command for one of the PostgreSQL binaries, as the `postgres` user if we are root.
    fn pg_command(&self, binary: &str) -> Command {
        let program = self.bin_dir.join(binary);
        let mut cmd = if self.as_postgres_user {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        // The postgres user may not be allowed into the caller's directory.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn write_owned_file(&self, path: &Path, contents: &str) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        if self.as_postgres_user {
            let meta = fs::metadata(self.dir.path()).expect("stat temp dir");
            std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running.swap(false, Ordering::SeqCst) {
            let _ = self.pg_stop_command("immediate").stdin(Stdio::null()).output();
        }
    }
}

/// Newest `/usr/lib/postgresql/<version>/bin`, or `$PG_BIN_DIR` if set.
pub fn find_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries found in /usr/lib/postgresql/*/bin; \
                 install them with `apt-get install postgresql` (or set PG_BIN_DIR)"
            )
        })
}

pub fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
        // Uid: real effective saved fs
        return line.split_whitespace().nth(2) == Some("0");
    }
    let out = run(Command::new("id").arg("-u"));
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Self-signed CA plus a server certificate for localhost/127.0.0.1 signed by
/// it, all in `dir`. Returns the CA certificate path.
pub fn generate_tls(dir: &Path) -> PathBuf {
    fs::create_dir(dir).expect("create tls dir");
    let openssl = |args: &[&str]| {
        let out = run(Command::new("openssl").args(args).current_dir(dir));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            describe(&out)
        );
    };
    let ec_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec_key,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "3650"],
            &["-subj", "/CN=patroni-dr-watchdog test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"][..],
            &ec_key,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    fs::write(
        dir.join("server.ext"),
        "basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    // PostgreSQL refuses a private key readable by group/others.
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600)).expect("chmod server.key");
    dir.join("ca.crt")
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .expect("write to child's stdin");
    child.wait_with_output().expect("wait for child")
}

pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs blocking process work without stalling a multi-threaded tokio
/// runtime's worker (proxy tasks may need to run meanwhile).
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A loopback port that was free a moment ago, never handed out twice by
/// this process. Picked below the kernel's ephemeral range when there is
/// room, so outgoing connections' source ports cannot grab it meanwhile.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..200 {
        let port = if low > 12_000 {
            fastrand::u16(10_000..low)
        } else {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("bind 127.0.0.1:0")
                .port()
        };
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("found no free loopback port");
}
