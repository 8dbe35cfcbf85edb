//! Patroni's dynamic configuration as the watchdog reads it: is the cluster a
//! standby cluster (and where does it replicate from), is it paused, and has
//! an operator disarmed the watchdog with our own key in it. The edits we
//! make to it live in `act::dynamic_config`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DynamicConfigError {
    #[error("is not valid JSON ({0}); fix it with `patronictl edit-config`, nothing was written")]
    Json(String),
    #[error("is JSON but not an object; fix it with `patronictl edit-config`, nothing was written")]
    NotAnObject,
    #[error("already has a standby_cluster section: this cluster is already a standby")]
    AlreadyStandby,
    #[error(
        "has no standby_cluster section (or it is not an object): not a standby cluster, nothing was written"
    )]
    NotStandby,
    #[error(
        "has more than one `{0}` member, so which one Patroni uses is unclear; fix it with `patronictl edit-config`, nothing was written"
    )]
    Duplicate(&'static str),
}

/// What the watchdog needs to know of the dynamic config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Patroni treats the cluster as a standby cluster.
    pub standby: bool,
    /// Where the standby leader replicates from; empty unless `standby`.
    pub standby_address: StandbyAddress,
    /// Maintenance mode (`pause: true`).
    pub paused: bool,
    /// The operator's disarm switch: `{"patroni_dr_watchdog": {"disarmed": true}}`.
    pub disarmed: bool,
}

/// Our own key in Patroni's dynamic config. Patroni keeps keys it does not
/// know (`PATCH /config` merges into the stored document, `patronictl
/// edit-config` writes what it is given), so an operator can disarm every
/// sidecar of the cluster on any DCS without a restart:
/// `patronictl edit-config --set patroni_dr_watchdog.disarmed=true`.
pub const OWN_KEY: &str = "patroni_dr_watchdog";

pub(crate) fn parse(text: &str) -> Result<serde_json::Map<String, Value>, DynamicConfigError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DynamicConfigError::NotAnObject),
        Err(e) => Err(DynamicConfigError::Json(e.to_string())),
    }
}

/// Patroni only runs a standby cluster while `standby_cluster` is an object
/// with `host`, `port` or `restore_command`; anything else (null, `{}`) is a
/// promoted cluster.
fn is_standby_section(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        ["host", "port", "restore_command"]
            .iter()
            .any(|k| o.contains_key(*k))
    })
}

/// Patroni parses `pause` leniently; whatever it could read as true, we must
/// treat as paused, or we would act during maintenance.
fn is_true(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "true" | "on" | "yes" | "1"
        ),
        _ => false,
    }
}

/// The guard's own record of a fence it wrote: `{"patroni_dr_watchdog":
/// {"fence": {"reason": …, "by": …, "at": …}}}` beside the `standby_cluster`
/// it added. Only a `standby_cluster` with this record is the guard's to
/// remove.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceMark {
    pub reason: String,
    pub by: String,
    pub at: String,
}

/// Whether this cluster is fenced, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "fenced", rename_all = "snake_case")]
pub enum Fence {
    /// No `standby_cluster`: the cluster may have a primary.
    No,
    /// A `standby_cluster` the guard wrote, with its record.
    Ours(FenceMark),
    /// A `standby_cluster` someone else wrote: never ours to remove.
    Foreign,
}

pub fn fence(text: &str) -> Result<Fence, DynamicConfigError> {
    let map = parse(text)?;
    if !map.get("standby_cluster").is_some_and(is_standby_section) {
        return Ok(Fence::No);
    }
    let mark = map
        .get(OWN_KEY)
        .and_then(|v| v.get("fence"))
        .and_then(|v| serde_json::from_value::<FenceMark>(v.clone()).ok());
    Ok(mark.map_or(Fence::Foreign, Fence::Ours))
}

/// `standby_cluster.host` and `.port` as the dynamic config has them: the
/// address GoldDR's standby leader dials. Kept as written, since Patroni
/// passes a number or a string alike into `primary_conninfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StandbyAddress {
    /// `None`: no `host` (or `null`).
    pub host: Option<String>,
    /// `None`: no `port` (or `null`).
    pub port: Option<Value>,
}

impl StandbyAddress {
    /// The port a standby would dial, when it is one: a JSON number or a
    /// string of digits, 1-65535.
    pub fn port_number(&self) -> Option<u16> {
        let n = match self.port.as_ref()? {
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::String(s) => s.trim().parse::<u16>().ok(),
            _ => None,
        };
        n.filter(|p| *p != 0)
    }

    /// `host:port` as written, `?` for a missing part, for messages.
    pub fn describe(&self) -> String {
        let port = match &self.port {
            None => "?".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        };
        format!("{}:{port}", self.host.as_deref().unwrap_or("?"))
    }
}

fn standby_address(section: &Value) -> StandbyAddress {
    let member = |key: &str| section.get(key).filter(|v| !v.is_null());
    StandbyAddress {
        host: member("host").map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        port: member("port").cloned(),
    }
}

pub fn facts(text: &str) -> Result<Facts, DynamicConfigError> {
    let map = parse(text)?;
    let section = map.get("standby_cluster").filter(|v| is_standby_section(v));
    Ok(Facts {
        standby: section.is_some(),
        standby_address: section.map(standby_address).unwrap_or_default(),
        paused: map.get("pause").is_some_and(is_true),
        disarmed: map
            .get(OWN_KEY)
            .and_then(|v| v.get("disarmed"))
            .is_some_and(is_true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATRONI: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100}},"standby_cluster":{"host":"patroni-master-gold","port":31234,"create_replica_methods":["basebackup_fast_xlog"]}}"#;

    #[test]
    fn facts_of_a_standby_cluster() {
        assert_eq!(
            facts(PATRONI).unwrap(),
            Facts {
                standby: true,
                standby_address: StandbyAddress {
                    host: Some("patroni-master-gold".into()),
                    port: Some(Value::from(31234)),
                },
                paused: false,
                disarmed: false
            }
        );
    }

    #[test]
    fn the_standby_address_is_read_as_written() {
        for (text, host, port) in [
            (
                r#"{"standby_cluster":{"host":"h","port":5433}}"#,
                Some("h"),
                Some(5433),
            ),
            (
                r#"{"standby_cluster":{"host":"h","port":"5433"}}"#,
                Some("h"),
                Some(5433),
            ),
            (r#"{"standby_cluster":{"host":"h"}}"#, Some("h"), None),
            (r#"{"standby_cluster":{"host":"h","port":null}}"#, Some("h"), None),
            (r#"{"standby_cluster":{"port":5433}}"#, None, Some(5433)),
            (r#"{"standby_cluster":{"host":"h","port":0}}"#, Some("h"), None),
            (
                r#"{"standby_cluster":{"host":"h","port":70000}}"#,
                Some("h"),
                None,
            ),
            (r#"{"standby_cluster":{"host":"h","port":"x"}}"#, Some("h"), None),
            (
                r#"{"standby_cluster":{"host":"h","port":5433.5}}"#,
                Some("h"),
                None,
            ),
            (r#"{"standby_cluster":{"restore_command":"cp"}}"#, None, None),
            // Not a standby: nothing to dial.
            (r#"{"standby_cluster":{"primary_slot_name":"x"}}"#, None, None),
            (r#"{"ttl":30}"#, None, None),
        ] {
            let a = facts(text).unwrap().standby_address;
            assert_eq!(a.host.as_deref(), host, "{text}");
            assert_eq!(a.port_number(), port, "{text}");
        }
        let a = facts(r#"{"standby_cluster":{"host":"h","port":"x"}}"#)
            .unwrap()
            .standby_address;
        assert_eq!(a.port, Some(Value::from("x")), "kept as written");
        assert_eq!(a.describe(), "h:x");
    }

    #[test]
    fn only_a_section_with_host_port_or_restore_command_is_standby() {
        for (text, standby) in [
            (r#"{"standby_cluster":{"host":"h"}}"#, true),
            (r#"{"standby_cluster":{"port":5432}}"#, true),
            (r#"{"standby_cluster":{"restore_command":"cp"}}"#, true),
            (r#"{"standby_cluster":null}"#, false),
            (r#"{"standby_cluster":{}}"#, false),
            (r#"{"standby_cluster":{"primary_slot_name":"x"}}"#, false),
            (r#"{"ttl":30}"#, false),
            // what the old CronJob's sed left behind
            (r#"{"null":{"host":"h","port":1}}"#, false),
        ] {
            assert_eq!(facts(text).unwrap().standby, standby, "{text}");
        }
    }

    #[test]
    fn pause_is_read_as_leniently_as_patroni_might() {
        for (v, paused) in [
            ("true", true),
            ("\"true\"", true),
            ("\"on\"", true),
            ("1", true),
            ("false", false),
            ("null", false),
            ("\"off\"", false),
        ] {
            let text = format!(r#"{{"pause":{v}}}"#);
            assert_eq!(facts(&text).unwrap().paused, paused, "{text}");
        }
    }

    #[test]
    fn malformed_config_is_an_error_not_a_guess() {
        assert!(matches!(facts("{\"ttl\":"), Err(DynamicConfigError::Json(_))));
        assert_eq!(facts("[1,2]"), Err(DynamicConfigError::NotAnObject));
    }

    #[test]
    fn our_own_key_disarms_and_anything_else_does_not() {
        for (text, disarmed) in [
            (r#"{"patroni_dr_watchdog":{"disarmed":true}}"#, true),
            (r#"{"patroni_dr_watchdog":{"disarmed":"on"}}"#, true),
            (r#"{"patroni_dr_watchdog":{"disarmed":false}}"#, false),
            (r#"{"patroni_dr_watchdog":{"disarmed":null}}"#, false),
            (r#"{"patroni_dr_watchdog":null}"#, false),
            (r#"{"patroni_dr_watchdog":true}"#, false),
            (r#"{"disarmed":true}"#, false),
            (PATRONI, false),
        ] {
            assert_eq!(facts(text).unwrap().disarmed, disarmed, "{text}");
        }
    }
}
