//! Log set-up: `RUST_LOG` decides the levels (default: this crate at info,
//! the chatty client libraries silenced), the format is text or JSON. Logs go
//! to stderr.
//!
//! JSON lines are written by [`JsonLines`] rather than tracing-subscriber's
//! formatter: flattened, the latter repeats a key when an event has a field
//! named like one of its own (`target`, `level`, `timestamp`), and `jq` then
//! silently keeps only one of them. Here every key is unique by construction.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Levels when `RUST_LOG` is unset: our own lines at info. The Kubernetes,
/// HTTP and TLS clients log their own line for every failed call, which this
/// crate already reports once per change, with its decision.
pub const DEFAULT_FILTER: &str = "warn,patroni_dr_watchdog=info,\
    kube=off,kube_client=off,kube_runtime=off,\
    hyper=off,hyper_util=off,reqwest=off,h2=off,tower=off,rustls=off";

pub fn init(format: LogFormat) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, rejected) = filter(rust_log.as_deref());
    let ansi = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
    if let Some(error) = rejected {
        tracing::warn!(
            error,
            default = DEFAULT_FILTER,
            "RUST_LOG is invalid: using the default levels"
        );
    }
}

/// The filter from `RUST_LOG` (unset or blank: [`DEFAULT_FILTER`]); an
/// invalid one falls back to the default, with the parse error to report.
pub fn filter(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let default = || EnvFilter::new(DEFAULT_FILTER);
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => (default(), None),
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(filter) => (filter, None),
            Err(e) => (default(), Some(e.to_string())),
        },
    }
}

/// Colour only for a person at a terminal, and never when `NO_COLOR` is set
/// to anything non-empty (<https://no-color.org>).
pub fn use_colour(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// One JSON object per line: `timestamp`, `level`, `message`, the event's
/// fields in order, then `module` (where the line comes from). A field whose
/// name is already taken is written as `field.<name>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = FieldVisitor::default();
        event.record(&mut fields);

        let mut line = JsonObject::default();
        line.push("timestamp", serde_json::Value::String(timestamp));
        line.push("level", event.metadata().level().as_str().into());
        if let Some(message) = fields.message.take() {
            line.push("message", message);
        }
        for (name, value) in fields.fields {
            line.push(&name, value);
        }
        line.push("module", event.metadata().target().into());
        writeln!(writer, "{}", line.finish())
    }
}

/// A JSON object written in insertion order whose keys never repeat.
#[derive(Default)]
struct JsonObject {
    text: String,
    keys: HashSet<String>,
}

impl JsonObject {
    fn push(&mut self, name: &str, value: serde_json::Value) {
        let mut key = name.to_string();
        while !self.keys.insert(key.clone()) {
            key = format!("field.{key}");
        }
        self.text.push(if self.text.is_empty() { '{' } else { ',' });
        // Serialising a string or a Value cannot fail.
        let _ = write!(self.text, "{}:{}", serde_json::Value::String(key), value);
    }

    fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('{');
        }
        self.text.push('}');
        self.text
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: Option<serde_json::Value>,
    fields: Vec<(String, serde_json::Value)>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        match field.name() {
            "message" if self.message.is_none() => self.message = Some(value),
            // A `log` crate record's metadata, already in the event's own
            // metadata (its target becomes `module`).
            name if name.starts_with("log.") => {}
            name => self.fields.push((name.to_string(), value)),
        }
    }
}

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities have no JSON number.
        let value = serde_json::Number::from_f64(value)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| value.to_string().into());
        self.put(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, crate::error_chain(value).into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{error, info, warn};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn json_lines_of(log: impl FnOnce()) -> Vec<String> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The keys of a JSON object line in order, as written (a parser into a
    /// map would hide a repeated key).
    fn keys(line: &str) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        let object = value.as_object().expect("an object");
        let mut keys = Vec::new();
        let mut de = serde_json::Deserializer::from_str(line);
        struct Keys<'a>(&'a mut Vec<String>);
        impl<'de> serde::de::Visitor<'de> for Keys<'_> {
            type Value = ();
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    self.0.push(k);
                }
                Ok(())
            }
        }
        serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).expect("an object");
        assert_eq!(keys.len(), object.len(), "a key repeats in {line}");
        keys
    }

    #[test]
    fn a_field_named_like_a_built_in_key_keeps_both_values() {
        let lines = json_lines_of(|| {
            info!(
                target = "127.0.0.1:5432",
                level = 3,
                module = "ours",
                "watchdog started"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let keys = keys(&lines[0]);
        assert_eq!(
            keys,
            [
                "timestamp",
                "level",
                "message",
                "target",
                "field.level",
                "module",
                "field.module"
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(v["target"], "127.0.0.1:5432");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["field.level"], 3);
        assert_eq!(v["message"], "watchdog started");
        assert_eq!(v["module"], "ours");
        assert_eq!(v["field.module"], "patroni_dr_watchdog::logging::tests");
    }

    #[test]
    fn field_values_keep_their_json_types_and_display_text() {
        let err = io::Error::other("boom");
        let lines = json_lines_of(|| {
            warn!(
                count = 3u64,
                delta = -2i64,
                ratio = 0.5,
                ok = true,
                name = "gold",
                addr = %"10.0.0.1:5432",
                error = &err as &(dyn std::error::Error + 'static),
                "probe"
            );
            error!("no fields");
        });
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(v["count"], 3);
        assert_eq!(v["delta"], -2);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["name"], "gold");
        assert_eq!(v["addr"], "10.0.0.1:5432");
        assert_eq!(v["error"], "boom");
        assert_eq!(v["level"], "WARN");
        let v: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON");
        assert_eq!(keys(&lines[1]), ["timestamp", "level", "message", "module"]);
        assert_eq!(v["message"], "no fields");
    }

    #[test]
    fn json_text_is_escaped() {
        let lines = json_lines_of(|| info!(detail = "a \"quoted\"\nline\u{1b}[31m", "x"));
        assert_eq!(lines.len(), 1, "one line despite the newline: {lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(v["detail"], "a \"quoted\"\nline\u{1b}[31m");
    }

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn the_default_filter_keeps_our_info_and_silences_the_client_libraries() {
        let (filter, rejected) = filter(None);
        assert_eq!(rejected, None);
        let text = filter.to_string();
        for directive in [
            "patroni_dr_watchdog=info",
            "kube_client=off",
            "kube_runtime=off",
            "hyper=off",
            "reqwest=off",
        ] {
            assert!(text.contains(directive), "{directive} missing from {text}");
        }
        assert_eq!(super::filter(Some("  ")).0.to_string(), text);
        let (own, rejected) = super::filter(Some("debug"));
        assert_eq!((own.to_string(), rejected), ("debug".to_string(), None));
        let (fallback, rejected) = super::filter(Some("kube_client=loud"));
        assert_eq!(fallback.to_string(), text);
        assert!(rejected.is_some());
    }
}
