//! Witnesses: processes of this same binary (`patroni-dr-watchdog witness`)
//! at a third place, each serving what it sees of Gold at
//! [`OBSERVATION_PATH`]. This module holds the wire format, which the
//! witness serves and the DR watchdog reads, and the client. What an answer
//! is worth as a vote is decided in `decide::quorum`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::observe::signal::Reading;

pub const OBSERVATION_PATH: &str = "/v1/observation";
/// The version of the observation document this binary serves and reads.
pub const VERSION: u32 = 1;
/// The key of Gold's site in [`ObservationDoc::sites`].
pub const GOLD: &str = "gold";

/// A witness's base URL, `http(s)://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Witness(String);

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Witness {
    fn observation_url(&self) -> String {
        format!("{}{OBSERVATION_PATH}", self.0.trim_end_matches('/'))
    }
}

/// What replaced the old kinds of witness, for the start-up error.
const MOVED: &str = "WATCHDOG_WITNESSES now lists witness processes (`patroni-dr-watchdog witness`), \
                     as base URLs such as http://witness.example:9808; a direct check of Gold \
                     (tcp://host:port, or a URL such as Gold's Patroni /primary) is a signal now: \
                     move it to WATCHDOG_GOLD_SIGNALS";

/// Parses `WATCHDOG_WITNESSES`: comma-separated base URLs without a path.
/// A `tcp://` address or a URL with a path is an old-style witness (a bare
/// check of Gold) and is refused with what replaced it.
pub fn parse_list(value: &str) -> Result<Vec<Witness>, String> {
    let mut list: Vec<Witness> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item.starts_with("tcp://") {
            return Err(format!("{item}: {MOVED}"));
        }
        let url = match reqwest::Url::parse(item) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
            _ => return Err(format!("{item}: use http(s)://host:port (a witness's base URL)")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{}: credentials in the URL are not allowed (they would be shown in /status and the metrics)",
                url.host_str().unwrap_or("URL")
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!("{item}: {MOVED}"));
        }
        let base = Witness(item.trim_end_matches('/').to_string());
        if list.contains(&base) {
            return Err(format!("{item}: listed twice; one process gives one vote"));
        }
        list.push(base);
    }
    Ok(list)
}

/// The document a witness serves. Verdicts and states travel as text: the
/// reader decides what it understands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationDoc {
    pub version: u32,
    /// The witness's identity (its pod or host name).
    pub witness: String,
    pub sites: BTreeMap<String, SiteDoc>,
}

/// What a witness sees of one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteDoc {
    /// The probe's hysteresis verdict: unknown, up, down, lost.
    pub verdict: String,
    /// RFC 3339, the witness's clock.
    pub verdict_since: Option<String>,
    /// Whether the site's heartbeat answers: unknown, alive, silent.
    pub site: String,
    pub site_since: Option<String>,
    /// The witness's own reading of the two: site_lost, primary_writable,
    /// site_alive, undecided.
    pub says: String,
    /// Age of the older of the last probe and the last heartbeat check, by
    /// the witness's clock; readers add their request's duration, so no two
    /// clocks are ever compared. `None` before the first round.
    pub observed_age_seconds: Option<f64>,
    pub last_probe: Option<ProbeDoc>,
    pub heartbeat: Vec<SignalDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeDoc {
    pub outcome: String,
    pub reason: String,
    pub error: Option<String>,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalDoc {
    pub signal: String,
    #[serde(flatten)]
    pub reading: Reading,
}

/// One witness's answer, as the DR watchdog received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Report(Report),
    /// No answer, or not a 200.
    Unreachable(String),
    /// An answer that is not an observation we understand.
    Invalid(String),
}

/// The part of a witness's observation of Gold that a vote rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub identity: String,
    pub verdict: String,
    pub site: String,
    /// The observation's age, the request's duration included; `None` when
    /// the witness has not observed yet.
    pub age: Option<Duration>,
}

/// Asks one witness for its observation, within `timeout`.
pub async fn ask(witness: &Witness, http: &reqwest::Client, timeout: Duration) -> Answer {
    let started = Instant::now();
    let response = match http.get(witness.observation_url()).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => return Answer::Unreachable(crate::error_chain(&e.without_url())),
    };
    if !response.status().is_success() {
        return Answer::Unreachable(format!(
            "GET {OBSERVATION_PATH}: HTTP {}",
            response.status().as_u16()
        ));
    }
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Answer::Unreachable(crate::error_chain(&e.without_url())),
    };
    let elapsed = started.elapsed();
    interpret(&body, elapsed)
}

/// Reads a served document; `elapsed` is how long the request took.
pub fn interpret(body: &[u8], elapsed: Duration) -> Answer {
    let doc: ObservationDoc = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => return Answer::Invalid(format!("not an observation document: {e}")),
    };
    if doc.version != VERSION {
        return Answer::Invalid(format!(
            "observation version {}, this watchdog reads version {VERSION}",
            doc.version
        ));
    }
    let Some(gold) = doc.sites.get(GOLD) else {
        return Answer::Invalid("the observation has no site \"gold\"".into());
    };
    let age = match gold.observed_age_seconds {
        None => None,
        Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s) + elapsed),
        Some(s) => return Answer::Invalid(format!("observed_age_seconds {s} is not an age")),
    };
    Answer::Report(Report {
        identity: doc.witness,
        verdict: gold.verdict.clone(),
        site: gold.site.clone(),
        age,
    })
}

/// The HTTP client witnesses are asked with: no proxy from the environment.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().no_proxy().timeout(timeout).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        assert_eq!(
            parse_list(" http://witness-a:9808 , https://witness-b.example/,").unwrap(),
            vec![
                Witness("http://witness-a:9808".into()),
                Witness("https://witness-b.example".into())
            ]
        );
        assert_eq!(
            Witness("http://w:9808".into()).observation_url(),
            "http://w:9808/v1/observation"
        );
        assert_eq!(parse_list("").unwrap(), vec![]);
    }

    #[test]
    fn old_style_witnesses_say_what_replaced_them() {
        for old in ["tcp://10.1.2.3:5432", "http://gold-patroni:8008/primary"] {
            let e = parse_list(old).unwrap_err();
            assert!(e.contains("WATCHDOG_GOLD_SIGNALS"), "{old}: {e}");
        }
        for bad in ["witness:9808", "ftp://w/", "http://"] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
        let e = parse_list("http://u:s3cret@w:9808").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(
            parse_list("http://w:1,http://w:1/")
                .unwrap_err()
                .contains("twice")
        );
    }

    fn doc(version: u32, age: Option<f64>) -> Vec<u8> {
        let site = SiteDoc {
            verdict: "lost".into(),
            verdict_since: None,
            site: "silent".into(),
            site_since: None,
            says: "site_lost".into(),
            observed_age_seconds: age,
            last_probe: None,
            heartbeat: vec![SignalDoc {
                signal: "http://gold:8008/".into(),
                reading: Reading::Silent("refused".into()),
            }],
        };
        serde_json::to_vec(&ObservationDoc {
            version,
            witness: "w-0".into(),
            sites: BTreeMap::from([(GOLD.to_string(), site)]),
        })
        .unwrap()
    }

    #[test]
    fn interprets_what_a_witness_serves() {
        let ms = Duration::from_millis(200);
        assert_eq!(
            interpret(&doc(1, Some(1.5)), ms),
            Answer::Report(Report {
                identity: "w-0".into(),
                verdict: "lost".into(),
                site: "silent".into(),
                age: Some(Duration::from_millis(1700)),
            })
        );
        assert!(matches!(interpret(&doc(2, Some(1.0)), ms), Answer::Invalid(e) if e.contains("version 2")));
        assert!(matches!(interpret(&doc(1, Some(-1.0)), ms), Answer::Invalid(_)));
        assert!(matches!(interpret(b"<html>ok</html>", ms), Answer::Invalid(_)));
        assert!(matches!(
            interpret(br#"{"version":1,"witness":"w","sites":{}}"#, ms),
            Answer::Invalid(e) if e.contains("gold")
        ));
    }
}
