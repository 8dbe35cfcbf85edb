//! The one list of settings. Each becomes a field of [`Raw`] (what the
//! concerns read) and an entry of [`VARIABLES`] (what `--help` lists and an
//! unknown variable is held against), so the two cannot drift apart.

use std::collections::HashMap;

use super::parse::var;

macro_rules! variables {
    ($($concern:literal: [$($field:ident),* $(,)?]),* $(,)?) => {
        /// The raw environment, every value a string so that each parse
        /// error can name its variable. A concern `take()`s what it reads.
        #[derive(Debug, Default)]
        pub struct Raw {
            $($(pub(super) $field: Option<String>,)*)*
        }

        impl Raw {
            /// Moves every known setting out of `vars`: what is left is
            /// unknown.
            pub(super) fn take_from(vars: &mut HashMap<String, String>) -> Raw {
                Raw {
                    $($($field: vars.remove(&var(&stringify!($field).to_ascii_uppercase())),)*)*
                }
            }
        }

        impl Raw {
            /// The settings still here after a command took what it reads.
            pub(super) fn left(&self) -> Vec<String> {
                let mut left = Vec::new();
                $($(if self.$field.is_some() {
                    left.push(var(&stringify!($field).to_ascii_uppercase()));
                })*)*
                left
            }
        }

        /// Every setting's name without `WATCHDOG_`, lower-case, by concern.
        const VARIABLES: &[(&str, &[&str])] = &[$(($concern, &[$(stringify!($field)),*])),*];
    };
}

variables! {
    "Gold": [
        gold_host, gold_port, ts_service, ts_port_name, gold_user, gold_password,
        gold_password_file, gold_database, gold_sslmode, gold_sslrootcert,
    ],
    "Probe": [probe_interval, probe_timeout, fall, rise, promote_after],
    "Kubernetes": [namespace],
    "Promoter": [
        promoter, patroni_configmap, patroni_url, patroni_username, patroni_password,
        patroni_password_file, patroni_cafile, follow_ts,
    ],
    "Guards": [mode, wal_receiver_fresh, max_data_age, allow_stale_promotion],
    "Quorum": [witnesses, quorum, witness_max_age, gold_signals],
    "Witness": [gold_heartbeat],
    "Guard at Gold": [
        golddr_host, golddr_port, golddr_ts_service, golddr_ts_port_name, golddr_user, golddr_password,
        golddr_password_file, golddr_database, golddr_sslmode, golddr_sslrootcert, fence_after,
        fence_standby_cluster,
    ],
    "Pairing": [guard_fence_after],
    "Local PostgreSQL": [
        local_pg_host, local_pg_port, local_pg_user, local_pg_password, local_pg_password_file,
        local_pg_database,
    ],
    "Reporting": [listen_addr, log_format, webhook_url],
}

/// Every setting as its environment variable, by concern.
pub fn by_concern() -> impl Iterator<Item = (&'static str, Vec<String>)> {
    VARIABLES.iter().map(|(concern, fields)| {
        (
            *concern,
            fields.iter().map(|f| var(&f.to_ascii_uppercase())).collect(),
        )
    })
}

/// Every setting as its environment variable.
pub fn all() -> impl Iterator<Item = String> {
    by_concern().flat_map(|(_, vars)| vars)
}

/// Settings that existed once, with what replaced them: refused by name so
/// an old manifest stops with directions rather than "unknown setting".
pub(super) const REMOVED: &[(&str, &str)] = &[(
    "WITNESS_UNREACHABLE",
    "witnesses are processes now (`patroni-dr-watchdog witness`, listed in WATCHDOG_WITNESSES) and \
     one that cannot be reached gives no vote: it neither blocks nor agrees, and WATCHDOG_QUORUM says \
     how many must agree; direct checks of Gold moved to WATCHDOG_GOLD_SIGNALS, which never block",
)];
