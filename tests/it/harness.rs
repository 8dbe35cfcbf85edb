//! Self-test of the integration-test support code (tests/support).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};
use crate::support::proxy::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

fn pg_config(port: u16, user: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(Duration::from_secs(5));
    config
}

/// Connects with an overall deadline, since tokio-postgres' connect_timeout
/// does not cover the startup handshake.
async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls))
        .await
        .expect("connect hung for 10 s")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn select_one(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

/// A loopback echo server; it lives as long as the test's runtime.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echo_roundtrip(addr: SocketAddr) -> std::io::Result<Duration> {
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(ErrorKind::TimedOut, "echo timed out"))??;
    assert_eq!(&buf, b"ping");
    Ok(started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_through_proxy_and_backend_count() {
    crate::support::init_tracing();
    let pg = PgServer::start(PgOptions::default());
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.client_backends().await, 0);

    let proxy = FaultProxy::start(pg.addr()).await;
    let client = connect(&pg_config(proxy.port(), WATCHDOG_USER)).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert_eq!(pg.client_backends().await, 1);
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.open_connections(), 1);

    // Leaving Forward cuts the established connection.
    proxy.set(Fault::Blackhole).await;
    let err = select_one(&client).await.unwrap_err();
    eprintln!("query on a cut connection: {err} / {err:?}");
    assert!(err.is_closed() || err.code().is_none(), "{err:?}");
    crate::support::wait_for("the cut backend to exit", Duration::from_secs(5), || async {
        pg.client_backends().await == 0
    })
    .await;
    crate::support::wait_for(
        "the proxy to drop the cut connection",
        Duration::from_secs(5),
        || async { proxy.open_connections() == 0 },
    )
    .await;

    // tokio-postgres' connect_timeout only bounds the TCP connect, which the
    // proxy completes: through a blackhole the startup handshake hangs forever.
    let config = pg_config(proxy.port(), WATCHDOG_USER);
    let hung = tokio::time::timeout(Duration::from_millis(300), config.connect(NoTls)).await;
    assert!(hung.is_err(), "connect through Blackhole did not hang");
    assert_eq!(proxy.accepted(), 2);

    proxy.set(Fault::Reset).await;
    let err = connect(&pg_config(proxy.port(), WATCHDOG_USER))
        .await
        .unwrap_err();
    eprintln!("connect through Reset: {err} / {err:?}");
    assert_eq!(proxy.accepted(), 3);

    proxy.set(Fault::Refuse).await;
    let err = connect(&pg_config(proxy.port(), WATCHDOG_USER))
        .await
        .unwrap_err();
    eprintln!("connect through Refuse: {err} / {err:?}");

    proxy.set(Fault::Forward).await;
    let client = connect(&pg_config(proxy.port(), WATCHDOG_USER)).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn refuse_closes_the_port_and_forward_rebinds_it() {
    let proxy = FaultProxy::start(echo_server().await).await;
    echo_roundtrip(proxy.addr()).await.unwrap();

    proxy.set(Fault::Refuse).await;
    let err = TcpStream::connect(proxy.addr()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err:?}");

    proxy.set(Fault::Forward).await;
    assert_eq!(proxy.fault(), Fault::Forward);
    echo_roundtrip(proxy.addr()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn blackhole_accepts_but_never_answers() {
    let proxy = FaultProxy::start(echo_server().await).await;
    proxy.set(Fault::Blackhole).await;

    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(read.is_err(), "blackhole answered: {read:?}");
    crate::support::wait_for(
        "the blackholed connection to be counted",
        Duration::from_secs(2),
        || async { proxy.accepted() == 1 && proxy.open_connections() == 1 },
    )
    .await;

    // Leaving Blackhole cuts the held connection.
    proxy.set(Fault::Forward).await;
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .expect("cut blackholed connection still open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    crate::support::wait_for("no open connection", Duration::from_secs(2), || async {
        proxy.open_connections() == 0
    })
    .await;
    echo_roundtrip(proxy.addr()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_kills_connections_at_once() {
    let proxy = FaultProxy::start(echo_server().await).await;
    proxy.set(Fault::Reset).await;
    // The kernel completes the handshake before the proxy accepts, so the
    // reset shows up either on connect or on the first read.
    let result = async {
        let mut stream = TcpStream::connect(proxy.addr()).await?;
        let mut buf = [0u8; 4];
        stream.read(&mut buf).await
    };
    let result = tokio::time::timeout(Duration::from_secs(2), result)
        .await
        .expect("reset connection still open");
    eprintln!("raw connect+read through Reset: {result:?}");
    assert!(
        matches!(&result, Err(e) if e.kind() == ErrorKind::ConnectionReset) || matches!(result, Ok(0)),
        "{result:?}"
    );
    assert_eq!(proxy.open_connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn delay_holds_back_both_directions() {
    let proxy = FaultProxy::start(echo_server().await).await;
    proxy.set(Fault::Delay(Duration::from_millis(150))).await;
    let rtt = echo_roundtrip(proxy.addr()).await.unwrap();
    assert!(rtt >= Duration::from_millis(300), "round trip took only {rtt:?}");

    proxy.set(Fault::Forward).await;
    let rtt = echo_roundtrip(proxy.addr()).await.unwrap();
    assert!(rtt < Duration::from_millis(150), "round trip took {rtt:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn flap_alternates_and_ends_in_forward() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let flap = proxy.flap(Duration::from_millis(100));
    let (mut refused, mut served) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < deadline {
        match echo_roundtrip(proxy.addr()).await {
            Ok(_) => served += 1,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
            // A connection accepted just before a switch to Refuse may be reset.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 0 && served > 0, "refused {refused}, served {served}");

    drop(flap);
    assert_eq!(proxy.fault(), Fault::Forward);
    echo_roundtrip(proxy.addr()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_kill_and_restart_on_the_same_port() {
    let pg = PgServer::start(PgOptions::default());
    let port = pg.port();
    let client = connect(&pg_config(port, "postgres")).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);

    pg.stop();
    pg.stop();
    assert!(!pg.is_running());
    assert!(select_one(&client).await.is_err());
    let err = TcpStream::connect(pg.addr()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err:?}");

    pg.restart();
    assert_eq!(pg.port(), port);
    let client = connect(&pg_config(port, "postgres")).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);

    pg.kill();
    pg.kill();
    let err = TcpStream::connect(pg.addr()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err:?}");

    pg.restart();
    let client = connect(&pg_config(port, "postgres")).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
    assert!(
        pg.log_contents()
            .contains("database system is ready to accept connections")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_is_in_recovery() {
    let pg = PgServer::start(PgOptions {
        standby: true,
        ..PgOptions::default()
    });
    let client = connect(&pg_config(pg.port(), WATCHDOG_USER)).await.unwrap();
    let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap();
    assert!(row.get::<_, bool>(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn password_server_requires_the_right_password() {
    let pg = PgServer::start(PgOptions {
        password: Some("s3cret'pw".into()),
        ..PgOptions::default()
    });

    let mut config = pg_config(pg.port(), WATCHDOG_USER);
    config.password("wrong");
    let err = connect(&config).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

    config.password("s3cret'pw");
    let client = connect(&config).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);

    // The superuser over the unix socket needs no password.
    assert_eq!(pg.client_backends().await, 1);
    drop(client);
    crate::support::wait_for("the backend to exit", Duration::from_secs(5), || async {
        pg.client_backends().await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_server_still_accepts_plaintext_and_exposes_its_ca() {
    let pg = PgServer::start(PgOptions {
        tls: true,
        ..PgOptions::default()
    });
    let ca = pg.ca_file().expect("TLS server has a CA file");
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let key = ca.with_file_name("server.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let client = connect(&pg_config(pg.port(), WATCHDOG_USER)).await.unwrap();
    let row = client.query_one("SHOW ssl", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "on");
    pg.execute("CREATE TABLE t (x int); DROP TABLE t;").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smart_shutdown_refuses_new_sessions_until_the_last_one_leaves() {
    let pg = PgServer::start(PgOptions::default());
    let holder = pg.superuser_client().await;
    pg.begin_smart_shutdown();

    let mut last_err = None;
    crate::support::wait_for(
        "new sessions to be refused",
        Duration::from_secs(10),
        async || match connect(&pg_config(pg.port(), WATCHDOG_USER)).await {
            Ok(_) => false,
            Err(err) => {
                last_err = Some(err);
                true
            }
        },
    )
    .await;
    let err = last_err.unwrap();
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err:?}");
    assert_eq!(select_one(&holder).await.unwrap(), 1);

    drop(holder);
    crate::support::wait_for("the server to exit", Duration::from_secs(10), || async {
        TcpStream::connect(pg.addr()).await.is_err()
    })
    .await;
    pg.stop();
    pg.restart();
    let client = connect(&pg_config(pg.port(), WATCHDOG_USER)).await.unwrap();
    assert_eq!(select_one(&client).await.unwrap(), 1);
}
