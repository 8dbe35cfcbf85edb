//! A split-brain sampler ([`WriteSampler`]): every 150 ms it asks each given
//! PostgreSQL endpoint, directly (not through any proxy), whether it accepts
//! writes, and optionally whether a site's heartbeat URL (Patroni's REST
//! API) answers at all. Endpoints are grouped by site name ("gold",
//! "golddr"): a site is writable in a round if any of its endpoints is, so
//! Gold counts once however many members it has.
//!
//! Each round starts on its own 150 ms tick and probes every endpoint
//! concurrently, each probe bounded by 1 s; rounds may overlap, so one
//! endpoint that hangs does not slow the sampling down. "At the same time"
//! means in the same round: answers that came within one round's span
//! (normally a few ms, at most the 1 s bound) of each other.
//!
//! [`SamplerReport::assert_never_two_writable`] also checks that sampling
//! really happened (at least 3 rounds per second over the sampler's life and
//! an answer from every endpoint), so "never two writable" is not vacuous.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::{JoinHandle, JoinSet};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_util::sync::CancellationToken;

/// Round period: at least 5 rounds per second when the machine keeps up.
pub const PERIOD: Duration = Duration::from_millis(150);
/// Bound of one probe (connect and query, or the HTTP request).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Fewer rounds per second than this over the sampler's life and its report
/// refuses to vouch for anything (generous for a busy 2-core machine).
pub const MIN_RATE: f64 = 3.0;

/// Application name of the sampler's sessions, to tell them apart in
/// `pg_stat_activity` and the server logs.
const APP_NAME: &str = "pgtest-sampler";

#[derive(Clone, Debug)]
pub enum Target {
    /// A PostgreSQL server on loopback: `SELECT NOT pg_is_in_recovery()` as
    /// `postgres` (trusted from 127.0.0.1 by every server of the harness).
    Postgres(SocketAddr),
    /// An HTTP URL (Patroni's REST API): any HTTP answer, whatever the
    /// status, means the site's heartbeat is there.
    Heartbeat(String),
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub site: String,
    pub target: Target,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Postgres(addr) => write!(f, "{}:pg:{addr}", self.site),
            Target::Heartbeat(url) => write!(f, "{}:api:{url}", self.site),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// PostgreSQL said it is not in recovery.
    Writable,
    /// PostgreSQL said it is in recovery.
    ReadOnly,
    /// The heartbeat URL answered with this HTTP status.
    Answered(u16),
    /// No answer within the bound, or an error: counts as not writable.
    NoAnswer(String),
}

#[derive(Clone, Debug)]
pub struct Round {
    /// When the round started.
    pub at: Instant,
    /// Until its last probe finished.
    pub took: Duration,
    /// One outcome per endpoint, in the order of [`SamplerReport::endpoints`].
    pub outcomes: Vec<Outcome>,
}

/// Starts a [`WriteSampler`]; add endpoints, then [`start`](Self::start).
#[derive(Default)]
pub struct SamplerBuilder {
    endpoints: Vec<Endpoint>,
    insert: Option<String>,
}

impl SamplerBuilder {
    /// A PostgreSQL endpoint of `site`.
    pub fn postgres(mut self, site: &str, addr: SocketAddr) -> Self {
        assert!(
            addr.ip().is_loopback(),
            "the sampler only probes loopback, not {addr}"
        );
        self.endpoints.push(Endpoint {
            site: site.to_string(),
            target: Target::Postgres(addr),
        });
        self
    }

    /// Several PostgreSQL endpoints of `site` (e.g. every Gold member).
    pub fn postgres_all(self, site: &str, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        addrs.into_iter().fold(self, |b, addr| b.postgres(site, addr))
    }

    /// A heartbeat URL of `site` (on 127.0.0.1), e.g. a Gold member's REST API.
    pub fn heartbeat(mut self, site: &str, url: &str) -> Self {
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "the sampler only probes loopback, not {url}"
        );
        self.endpoints.push(Endpoint {
            site: site.to_string(),
            target: Target::Heartbeat(url.to_string()),
        });
        self
    }

    /// A PostgreSQL endpoint counts as writable only if an `INSERT INTO
    /// table DEFAULT VALUES` also succeeds there (the table must exist on
    /// every site, e.g. created on Gold before GoldDR was built).
    pub fn insert_into(mut self, table: &str) -> Self {
        self.insert = Some(format!("INSERT INTO {table} DEFAULT VALUES"));
        self
    }

    /// Starts sampling now (inside a tokio runtime); the first round starts at once.
    pub fn start(self) -> WriteSampler {
        assert!(
            !self.endpoints.is_empty(),
            "a sampler with no endpoint proves nothing"
        );
        let endpoints = Arc::new(self.endpoints);
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let started = Instant::now();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            // A fresh connection each time: a dead site must not look alive
            // through a pooled one, nor a live one dead through a stale one.
            .pool_max_idle_per_host(0)
            .build()
            .expect("build HTTP client");
        let task = tokio::spawn(sample(
            Arc::clone(&endpoints),
            Arc::clone(&rounds),
            http,
            self.insert.map(Arc::<str>::from),
            stop.clone(),
        ));
        WriteSampler {
            endpoints,
            rounds,
            stop,
            task: Some(task),
            started,
        }
    }
}

/// The running sampler; [`stop`](Self::stop) it for its report. Dropping it
/// stops it too (without a report).
pub struct WriteSampler {
    endpoints: Arc<Vec<Endpoint>>,
    rounds: Arc<Mutex<Vec<Round>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    started: Instant,
}

impl WriteSampler {
    pub fn builder() -> SamplerBuilder {
        SamplerBuilder::default()
    }

    /// Rounds finished so far.
    pub fn round_count(&self) -> usize {
        self.rounds.lock().unwrap().len()
    }

    /// A copy of the report so far, without stopping.
    pub fn snapshot(&self) -> SamplerReport {
        self.report(self.started.elapsed())
    }

    /// Stops ticking, waits for the rounds in flight (at most the probe
    /// bound) and returns everything recorded.
    pub async fn stop(mut self) -> SamplerReport {
        self.stop.cancel();
        let lifetime = self.started.elapsed();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.report(lifetime)
    }

    fn report(&self, lifetime: Duration) -> SamplerReport {
        let mut rounds = self.rounds.lock().unwrap().clone();
        rounds.sort_by_key(|r| r.at);
        SamplerReport {
            endpoints: self.endpoints.as_ref().clone(),
            rounds,
            started: self.started,
            lifetime,
        }
    }
}

impl Drop for WriteSampler {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn sample(
    endpoints: Arc<Vec<Endpoint>>,
    rounds: Arc<Mutex<Vec<Round>>>,
    http: reqwest::Client,
    insert: Option<Arc<str>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(PERIOD);
    // After a stall, go on at the period rather than firing a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let (endpoints, rounds, http, insert) = (
            Arc::clone(&endpoints),
            Arc::clone(&rounds),
            http.clone(),
            insert.clone(),
        );
        in_flight.spawn(async move {
            let at = Instant::now();
            let probes = endpoints
                .iter()
                .map(|e| probe(&http, &e.target, insert.as_deref()));
            let outcomes = futures::future::join_all(probes).await;
            rounds.lock().unwrap().push(Round {
                at,
                took: at.elapsed(),
                outcomes,
            });
        });
        // Reap finished rounds so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

async fn probe(http: &reqwest::Client, target: &Target, insert: Option<&str>) -> Outcome {
    match target {
        Target::Postgres(addr) => match accepts_writes(*addr, PROBE_TIMEOUT, insert).await {
            Ok(true) => Outcome::Writable,
            Ok(false) => Outcome::ReadOnly,
            Err(e) => Outcome::NoAnswer(e),
        },
        Target::Heartbeat(url) => match http.get(url).send().await {
            Ok(resp) => Outcome::Answered(resp.status().as_u16()),
            Err(e) => Outcome::NoAnswer(e.to_string()),
        },
    }
}

/// `SELECT NOT pg_is_in_recovery()` on `addr` over a fresh connection as
/// `postgres`, sslmode disable, connecting and querying within `timeout`.
pub async fn probe_writable(addr: SocketAddr, timeout: Duration) -> Result<bool, String> {
    accepts_writes(addr, timeout, None).await
}

/// [`probe_writable`], and when it says writable and `insert` is given,
/// that statement must succeed too.
pub async fn accepts_writes(
    addr: SocketAddr,
    timeout: Duration,
    insert: Option<&str>,
) -> Result<bool, String> {
    let work = async {
        let (client, connection) = tokio_postgres::Config::new()
            .host(addr.ip().to_string())
            .port(addr.port())
            .user("postgres")
            .dbname("postgres")
            .application_name(APP_NAME)
            .ssl_mode(SslMode::Disable)
            .connect_timeout(timeout)
            .connect(NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let connection = tokio::spawn(connection);
        let row = client
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| format!("query: {e}"));
        let writable = match row.and_then(|r| r.try_get::<_, bool>(0).map_err(|e| e.to_string())) {
            Ok(true) => match insert {
                Some(sql) => Ok(client.batch_execute(sql).await.is_ok()),
                None => Ok(true),
            },
            other => other,
        };
        drop(client);
        let _ = connection.await;
        writable
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// A round in which two or more sites were writable.
#[derive(Clone, Debug)]
pub struct Moment {
    /// Since the sampler started.
    pub at: Duration,
    pub took: Duration,
    /// The writable sites, and each writable endpoint.
    pub sites: Vec<String>,
    pub endpoints: Vec<String>,
}

/// What a [`WriteSampler`] recorded.
#[derive(Clone, Debug)]
pub struct SamplerReport {
    pub endpoints: Vec<Endpoint>,
    /// Finished rounds, by start time.
    pub rounds: Vec<Round>,
    pub started: Instant,
    /// From start to stop.
    pub lifetime: Duration,
}

impl SamplerReport {
    pub fn round_count(&self) -> usize {
        self.rounds.len()
    }

    /// Rounds per second over the sampler's life.
    pub fn rate(&self) -> f64 {
        self.rounds.len() as f64 / self.lifetime.as_secs_f64().max(0.001)
    }

    /// The sites (in first-seen order).
    pub fn sites(&self) -> Vec<String> {
        let mut sites: Vec<String> = Vec::new();
        for e in &self.endpoints {
            if !sites.contains(&e.site) {
                sites.push(e.site.clone());
            }
        }
        sites
    }

    /// Whether some PostgreSQL endpoint of `site` was writable in `round`.
    pub fn site_writable(&self, round: &Round, site: &str) -> bool {
        self.outcomes_of(round, site)
            .any(|(_, o)| *o == Outcome::Writable)
    }

    /// Whether some heartbeat URL of `site` answered (any status) in `round`.
    pub fn heartbeat_answered(&self, round: &Round, site: &str) -> bool {
        self.outcomes_of(round, site)
            .any(|(_, o)| matches!(o, Outcome::Answered(_)))
    }

    /// Rounds in which some heartbeat of `site` answered while none of its
    /// PostgreSQL endpoints was writable (e.g. Patroni up, PostgreSQL not yet
    /// a primary), as offsets from the sampler's start.
    pub fn heartbeat_without_writable(&self, site: &str) -> Vec<Duration> {
        self.rounds
            .iter()
            .filter(|r| self.heartbeat_answered(r, site) && !self.site_writable(r, site))
            .map(|r| r.at - self.started)
            .collect()
    }

    /// Rounds in which two or more sites were writable.
    pub fn two_writable_moments(&self) -> Vec<Moment> {
        let sites = self.sites();
        self.rounds
            .iter()
            .filter_map(|r| {
                let writable: Vec<String> = sites
                    .iter()
                    .filter(|s| self.site_writable(r, s))
                    .cloned()
                    .collect();
                (writable.len() >= 2).then(|| Moment {
                    at: r.at - self.started,
                    took: r.took,
                    sites: writable,
                    endpoints: self
                        .endpoints
                        .iter()
                        .zip(&r.outcomes)
                        .filter(|(_, o)| **o == Outcome::Writable)
                        .map(|(e, _)| e.to_string())
                        .collect(),
                })
            })
            .collect()
    }

    /// Per endpoint: how often writable, read-only, answered, no answer.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} rounds in {:.1?} ({:.1}/s)\n",
            self.rounds.len(),
            self.lifetime,
            self.rate()
        );
        for (i, e) in self.endpoints.iter().enumerate() {
            let count =
                |f: &dyn Fn(&Outcome) -> bool| self.rounds.iter().filter(|r| f(&r.outcomes[i])).count();
            out.push_str(&format!(
                "  {e}: writable {}, read-only {}, answered {}, no answer {}\n",
                count(&|o| *o == Outcome::Writable),
                count(&|o| *o == Outcome::ReadOnly),
                count(&|o| matches!(o, Outcome::Answered(_))),
                count(&|o| matches!(o, Outcome::NoAnswer(_))),
            ));
        }
        out
    }

    /// Panics unless the sampler ran at [`MIN_RATE`] rounds per second or
    /// more and every endpoint answered at least once.
    /// Whether every endpoint has answered at least once.
    pub fn every_endpoint_answered(&self) -> bool {
        (0..self.endpoints.len()).all(|i| {
            self.rounds
                .iter()
                .any(|r| !matches!(r.outcomes[i], Outcome::NoAnswer(_)))
        })
    }

    pub fn assert_sampled(&self) {
        assert!(
            self.rate() >= MIN_RATE,
            "the sampler ran only {:.1} rounds/s (< {MIN_RATE}): it proves nothing\n{}",
            self.rate(),
            self.summary()
        );
        for (i, e) in self.endpoints.iter().enumerate() {
            assert!(
                self.rounds
                    .iter()
                    .any(|r| !matches!(r.outcomes[i], Outcome::NoAnswer(_))),
                "{e} never answered the sampler (wrong address or user?)\n{}",
                self.summary()
            );
        }
    }

    /// Panics, listing every such moment, if two or more sites were writable
    /// in the same round; or if the sampling does not
    /// [vouch for it](Self::assert_sampled).
    pub fn assert_never_two_writable(&self) {
        self.assert_sampled();
        let moments = self.two_writable_moments();
        if moments.is_empty() {
            return;
        }
        let listed: Vec<String> = moments
            .iter()
            .map(|m| {
                format!(
                    "  at {:.2?} (round took {:.0?}): sites {:?} via {:?}",
                    m.at, m.took, m.sites, m.endpoints
                )
            })
            .collect();
        panic!(
            "two sites writable at the same time in {} round(s):\n{}\n{}",
            moments.len(),
            listed.join("\n"),
            self.summary()
        );
    }

    fn outcomes_of<'a>(
        &'a self,
        round: &'a Round,
        site: &'a str,
    ) -> impl Iterator<Item = (&'a Endpoint, &'a Outcome)> {
        self.endpoints
            .iter()
            .zip(&round.outcomes)
            .filter(move |(e, _)| e.site == site)
    }
}
