//! What `/metrics` answers in: OpenMetrics for a scraper that asks for it
//! (Prometheus does, in its `Accept` header), the classic Prometheus text
//! format 0.0.4 for everything else (curl, `*/*`, older scrapers and
//! agents that only read the classic format).
//!
//! prometheus-client encodes OpenMetrics only, so [`to_classic`] rewrites
//! its output. The two formats differ in a few places, all handled here:
//!
//! | OpenMetrics                                     | classic text 0.0.4                      |
//! |-------------------------------------------------|-----------------------------------------|
//! | `# EOF`, `# UNIT x u`                           | dropped                                 |
//! | `# TYPE x counter`, samples `x_total`, `x_created` | `# TYPE x_total counter`, `x_created` dropped |
//! | `# TYPE x info`, sample `x_info{…} 1`           | `# TYPE x_info gauge`                   |
//! | `# TYPE x stateset`                             | `# TYPE x gauge`                        |
//! | `# TYPE x gaugehistogram` (`x_bucket`, `x_gcount`, `x_gsum`) | one gauge family per sample name |
//! | `# TYPE x unknown`                              | `# TYPE x untyped`                      |
//! | histogram, summary: `x_created`                 | dropped                                 |
//! | exemplars (`… # {…} v [t]`)                     | stripped                                |
//! | sample timestamps in seconds                    | in milliseconds                         |
//! | HELP escapes `\\`, `\n`, `\"`                   | HELP escapes `\\`, `\n` only            |

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    ClassicText,
}

impl Format {
    /// OpenMetrics only when the client prefers it to plain text; a tie, a
    /// bare `*/*`, no header or one that accepts neither gets the classic
    /// format every scraper can read.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::ClassicText;
        };
        let ranges: Vec<MediaRange<'_>> = accept.split(',').filter_map(MediaRange::parse).collect();
        let openmetrics = quality(&ranges, "application", "openmetrics-text");
        let text = quality(&ranges, "text", "plain");
        if openmetrics > 0.0 && openmetrics > text {
            Format::OpenMetrics
        } else {
            Format::ClassicText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::ClassicText => CLASSIC_TEXT,
        }
    }

    /// The body in this format, from prometheus-client's OpenMetrics text.
    pub fn render(self, openmetrics: String) -> String {
        match self {
            Format::OpenMetrics => openmetrics,
            Format::ClassicText => to_classic(&openmetrics),
        }
    }
}

struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: f32,
}

impl<'a> MediaRange<'a> {
    fn parse(text: &'a str) -> Option<MediaRange<'a>> {
        let mut parts = text.split(';');
        let (kind, subtype) = parts.next()?.trim().split_once('/')?;
        let mut q = 1.0;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                // An unreadable weight makes the range useless, not preferred.
                q = value.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0);
            }
        }
        Some(MediaRange {
            kind: kind.trim(),
            subtype: subtype.trim(),
            q,
        })
    }

    /// How specifically this range names `kind/subtype`: 2 exactly, 1 by
    /// `kind/*`, 0 by `*/*`; `None` if it does not match.
    fn specificity(&self, kind: &str, subtype: &str) -> Option<u8> {
        match (self.kind, self.subtype) {
            ("*", "*") => Some(0),
            (k, "*") if k.eq_ignore_ascii_case(kind) => Some(1),
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => Some(2),
            _ => None,
        }
    }
}

/// The weight of the most specific range that matches (RFC 9110 §12.5.1).
fn quality(ranges: &[MediaRange<'_>], kind: &str, subtype: &str) -> f32 {
    ranges
        .iter()
        .filter_map(|r| r.specificity(kind, subtype).map(|s| (s, r.q)))
        .fold(None::<(u8, f32)>, |best, (s, q)| match best {
            Some((bs, bq)) if bs > s || (bs == s && bq >= q) => Some((bs, bq)),
            _ => Some((s, q)),
        })
        .map_or(0.0, |(_, q)| q)
}

/// One metric family as OpenMetrics writes it.
#[derive(Default)]
struct Family<'a> {
    name: &'a str,
    help: Option<&'a str>,
    kind: Option<&'a str>,
    samples: Vec<Sample<'a>>,
}

struct Sample<'a> {
    name: &'a str,
    /// `{…}` with the braces, or empty.
    labels: &'a str,
    value: &'a str,
    timestamp: Option<&'a str>,
}

/// Rewrites OpenMetrics text into the classic Prometheus text format 0.0.4
/// (see the table at the top of this module). Pure, so that it can be
/// checked line by line.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for family in families(openmetrics) {
        write_classic(&mut out, &family);
    }
    out
}

fn families(text: &str) -> Vec<Family<'_>> {
    let mut families: Vec<Family<'_>> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            let arg = words.next().unwrap_or("");
            if !matches!(keyword, "HELP" | "TYPE") {
                // UNIT, EOF and comments have no classic counterpart.
                continue;
            }
            if families.last().is_none_or(|f| f.name != name) {
                families.push(Family {
                    name,
                    ..Family::default()
                });
            }
            if let Some(family) = families.last_mut() {
                match keyword {
                    "HELP" => family.help = Some(arg),
                    _ => family.kind = Some(arg.trim()),
                }
            }
        } else if let Some(sample) = parse_sample(line) {
            match families.last_mut() {
                Some(family) if belongs(family.name, sample.name) => family.samples.push(sample),
                _ => families.push(Family {
                    name: sample.name,
                    samples: vec![sample],
                    ..Family::default()
                }),
            }
        }
    }
    families
}

/// Whether a sample name is one of the family's (`x`, `x_total`, `x_info`,
/// `x_bucket`, …).
fn belongs(family: &str, sample: &str) -> bool {
    sample
        .strip_prefix(family)
        .is_some_and(|suffix| suffix.is_empty() || suffix.starts_with('_'))
}

fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_end();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = "";
    if rest.starts_with('{') {
        let end = labels_end(rest)?;
        labels = &rest[..end];
        rest = &rest[end..];
    }
    let mut words = rest.split_whitespace();
    let value = words.next()?;
    // What follows is a timestamp, then `# {…} v [t]` (an exemplar).
    let timestamp = words.next().filter(|w| *w != "#");
    Some(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// The byte index just past the `}` that closes the label set at the start
/// of `text`, skipping quoted values and their escapes.
fn labels_end(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i + 1),
            _ => {}
        }
    }
    None
}

fn write_classic(out: &mut String, family: &Family<'_>) {
    let name = family.name;
    let kept = |suffixes: &[&str]| -> Vec<&Sample<'_>> {
        family
            .samples
            .iter()
            .filter(|s| {
                !suffixes
                    .iter()
                    .any(|x| s.name.len() == name.len() + x.len() && s.name.ends_with(x))
            })
            .collect()
    };
    match family.kind.unwrap_or("unknown") {
        "counter" => {
            let samples = kept(&["_created"]);
            write_family(out, &format!("{name}_total"), family.help, "counter", &samples);
        }
        "info" => write_family(out, &format!("{name}_info"), family.help, "gauge", &kept(&[])),
        "stateset" | "gauge" => write_family(out, name, family.help, "gauge", &kept(&[])),
        kind @ ("histogram" | "summary") => write_family(out, name, family.help, kind, &kept(&["_created"])),
        "gaugehistogram" => {
            // Classic text has no gauge histogram; Prometheus itself stores
            // its series as gauges. Each family must be contiguous there.
            let mut names: Vec<&str> = Vec::new();
            for s in &family.samples {
                if !names.contains(&s.name) {
                    names.push(s.name);
                }
            }
            for sample_name in names {
                let samples: Vec<&Sample<'_>> =
                    family.samples.iter().filter(|s| s.name == sample_name).collect();
                write_family(out, sample_name, family.help, "gauge", &samples);
            }
        }
        _ => write_family(out, name, family.help, "untyped", &kept(&[])),
    }
}

fn write_family(out: &mut String, name: &str, help: Option<&str>, kind: &str, samples: &[&Sample<'_>]) {
    if let Some(help) = help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        out.push_str(&classic_help(help));
        out.push('\n');
    }
    out.push_str("# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
    for s in samples {
        out.push_str(s.name);
        out.push_str(s.labels);
        out.push(' ');
        out.push_str(s.value);
        if let Some(ms) = s.timestamp.and_then(millis) {
            out.push(' ');
            out.push_str(&ms.to_string());
        }
        out.push('\n');
    }
}

/// OpenMetrics escapes `"` in HELP; the classic parser rejects `\"` there.
fn classic_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('"')) => {
                out.push('"');
                chars.next();
            }
            ('\\', Some(next @ ('\\' | 'n'))) => {
                out.push('\\');
                out.push(next);
                chars.next();
            }
            // A lone backslash would start an invalid escape.
            ('\\', _) => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out
}

/// An OpenMetrics timestamp (seconds, maybe fractional) in milliseconds.
fn millis(seconds: &str) -> Option<i64> {
    let s: f64 = seconds.parse().ok()?;
    s.is_finite().then(|| (s * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_classic_text() {
        let cases = [
            (
                // Prometheus 3
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                     application/openmetrics-text;version=0.0.1;q=0.5,\
                     text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
                     text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            (
                // Prometheus 2
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                     text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("APPLICATION/OpenMetrics-Text; Version=1.0.0"),
                Format::OpenMetrics,
            ),
            (Some("application/*"), Format::OpenMetrics),
            // curl and friends
            (Some("*/*"), Format::ClassicText),
            (None, Format::ClassicText),
            (Some(""), Format::ClassicText),
            (Some("text/plain"), Format::ClassicText),
            (Some("text/plain;version=0.0.4"), Format::ClassicText),
            (Some("application/json"), Format::ClassicText),
            (Some("garbage;;,"), Format::ClassicText),
            // a tie goes to the format everyone reads
            (
                Some("application/openmetrics-text, text/plain"),
                Format::ClassicText,
            ),
            (
                Some("application/openmetrics-text;q=0.5, text/plain;q=0.9"),
                Format::ClassicText,
            ),
            (Some("application/openmetrics-text;q=0, */*"), Format::ClassicText),
            (
                Some("text/plain;q=0, application/openmetrics-text;q=0.1"),
                Format::OpenMetrics,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
        assert_eq!(Format::OpenMetrics.content_type(), OPENMETRICS);
        assert_eq!(Format::ClassicText.content_type(), CLASSIC_TEXT);
    }

    #[test]
    fn every_openmetrics_type_becomes_its_classic_counterpart() {
        let openmetrics = concat!(
            "# HELP app_probes Probes of Gold by outcome.\n",
            "# TYPE app_probes counter\n",
            "app_probes_total{outcome=\"up\",reason=\"writable\"} 3\n",
            "app_probes_created{outcome=\"up\",reason=\"writable\"} 1700000000.5\n",
            "app_probes_total{outcome=\"down\",reason=\"refused\"} 1 # {trace_id=\"a # b\"} 1.0 1700000001.0\n",
            "# HELP app_target_changes Times the target changed.\n",
            "# TYPE app_target_changes counter\n",
            "app_target_changes_total 0\n",
            "# HELP app_probe_success 1 if up.\n",
            "# TYPE app_probe_success gauge\n",
            "app_probe_success 1\n",
            "# HELP app_last_probe_timestamp_seconds Unix time.\n",
            "# TYPE app_last_probe_timestamp_seconds gauge\n",
            "# UNIT app_last_probe_timestamp_seconds seconds\n",
            "app_last_probe_timestamp_seconds 1700000000.25\n",
            "# HELP app_probe_duration_seconds Time one probe took.\n",
            "# TYPE app_probe_duration_seconds histogram\n",
            "app_probe_duration_seconds_sum{outcome=\"up\"} 0.5\n",
            "app_probe_duration_seconds_count{outcome=\"up\"} 2\n",
            "app_probe_duration_seconds_bucket{le=\"0.001\",outcome=\"up\"} 0\n",
            "app_probe_duration_seconds_bucket{le=\"+Inf\",outcome=\"up\"} 2 # {id=\"x\"} 0.3\n",
            "app_probe_duration_seconds_created{outcome=\"up\"} 1700000000.0\n",
            "# HELP app_build Build information.\n",
            "# TYPE app_build info\n",
            "app_build_info{version=\"0.1.0\"} 1\n",
            "# HELP app_target_info Where Gold is \\\"probed\\\" \\\\ now.\n",
            "# TYPE app_target_info gauge\n",
            "app_target_info{host=\"gold\\\"s \\\\ {host}\\n\",port=\"5432\"} 1\n",
            "# HELP app_mode A state set.\n",
            "# TYPE app_mode stateset\n",
            "app_mode{app_mode=\"a\"} 1\n",
            "app_mode{app_mode=\"b\"} 0\n",
            "# HELP app_queue A gauge histogram.\n",
            "# TYPE app_queue gaugehistogram\n",
            "app_queue_bucket{le=\"1.0\",q=\"x\"} 1\n",
            "app_queue_bucket{le=\"+Inf\",q=\"x\"} 2\n",
            "app_queue_gcount{q=\"x\"} 2\n",
            "app_queue_gsum{q=\"x\"} 3.0\n",
            "app_queue_bucket{le=\"1.0\",q=\"y\"} 0\n",
            "app_queue_bucket{le=\"+Inf\",q=\"y\"} 0\n",
            "app_queue_gcount{q=\"y\"} 0\n",
            "app_queue_gsum{q=\"y\"} 0.0\n",
            "# HELP app_latency A summary.\n",
            "# TYPE app_latency summary\n",
            "app_latency{quantile=\"0.5\"} 0.1\n",
            "app_latency_sum 1.0\n",
            "app_latency_count 10\n",
            "app_latency_created 1700000000.0\n",
            "# HELP app_mystery Something.\n",
            "# TYPE app_mystery unknown\n",
            "app_mystery 7 1700000000.123\n",
            "# EOF\n",
        );
        let want = concat!(
            "# HELP app_probes_total Probes of Gold by outcome.\n",
            "# TYPE app_probes_total counter\n",
            "app_probes_total{outcome=\"up\",reason=\"writable\"} 3\n",
            "app_probes_total{outcome=\"down\",reason=\"refused\"} 1\n",
            "# HELP app_target_changes_total Times the target changed.\n",
            "# TYPE app_target_changes_total counter\n",
            "app_target_changes_total 0\n",
            "# HELP app_probe_success 1 if up.\n",
            "# TYPE app_probe_success gauge\n",
            "app_probe_success 1\n",
            "# HELP app_last_probe_timestamp_seconds Unix time.\n",
            "# TYPE app_last_probe_timestamp_seconds gauge\n",
            "app_last_probe_timestamp_seconds 1700000000.25\n",
            "# HELP app_probe_duration_seconds Time one probe took.\n",
            "# TYPE app_probe_duration_seconds histogram\n",
            "app_probe_duration_seconds_sum{outcome=\"up\"} 0.5\n",
            "app_probe_duration_seconds_count{outcome=\"up\"} 2\n",
            "app_probe_duration_seconds_bucket{le=\"0.001\",outcome=\"up\"} 0\n",
            "app_probe_duration_seconds_bucket{le=\"+Inf\",outcome=\"up\"} 2\n",
            "# HELP app_build_info Build information.\n",
            "# TYPE app_build_info gauge\n",
            "app_build_info{version=\"0.1.0\"} 1\n",
            "# HELP app_target_info Where Gold is \"probed\" \\\\ now.\n",
            "# TYPE app_target_info gauge\n",
            "app_target_info{host=\"gold\\\"s \\\\ {host}\\n\",port=\"5432\"} 1\n",
            "# HELP app_mode A state set.\n",
            "# TYPE app_mode gauge\n",
            "app_mode{app_mode=\"a\"} 1\n",
            "app_mode{app_mode=\"b\"} 0\n",
            "# HELP app_queue_bucket A gauge histogram.\n",
            "# TYPE app_queue_bucket gauge\n",
            "app_queue_bucket{le=\"1.0\",q=\"x\"} 1\n",
            "app_queue_bucket{le=\"+Inf\",q=\"x\"} 2\n",
            "app_queue_bucket{le=\"1.0\",q=\"y\"} 0\n",
            "app_queue_bucket{le=\"+Inf\",q=\"y\"} 0\n",
            "# HELP app_queue_gcount A gauge histogram.\n",
            "# TYPE app_queue_gcount gauge\n",
            "app_queue_gcount{q=\"x\"} 2\n",
            "app_queue_gcount{q=\"y\"} 0\n",
            "# HELP app_queue_gsum A gauge histogram.\n",
            "# TYPE app_queue_gsum gauge\n",
            "app_queue_gsum{q=\"x\"} 3.0\n",
            "app_queue_gsum{q=\"y\"} 0.0\n",
            "# HELP app_latency A summary.\n",
            "# TYPE app_latency summary\n",
            "app_latency{quantile=\"0.5\"} 0.1\n",
            "app_latency_sum 1.0\n",
            "app_latency_count 10\n",
            "# HELP app_mystery Something.\n",
            "# TYPE app_mystery untyped\n",
            "app_mystery 7 1700000000123\n",
        );
        let got = to_classic(openmetrics);
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got, want);
    }

    /// The real registry, as the watchdog builds it: every type it
    /// uses (counter families, gauges, f64 gauges, histograms, info) comes
    /// out with classic TYPE lines, no `# EOF`, no `# UNIT`, no `_created`.
    #[test]
    fn our_registry_converts_completely() {
        let vars = [
            ("WATCHDOG_GOLD_HOST", "gold"),
            ("WATCHDOG_GOLD_SSLMODE", "disable"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config = std::sync::Arc::new(crate::Config::from_vars(vars).expect("config"));
        let probe =
            crate::observe::probe::PgProbe::new(config.gold.clone(), config.probe_timeout).expect("probe");
        let (_target, target) = crate::observe::target::fixed(crate::observe::target::Endpoint {
            host: "gold".into(),
            port: 5432,
        });
        let watchdog = crate::app::Watchdog::new(config, probe, target);
        let openmetrics = watchdog.metrics().encode().expect("encode");
        let classic = to_classic(&openmetrics);
        assert!(!classic.contains("# EOF"), "{classic}");
        assert!(!classic.contains("# UNIT"), "{classic}");
        assert!(!classic.contains("_created"), "{classic}");
        let mut typed: Vec<(&str, &str)> = Vec::new();
        for line in classic.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(!typed.iter().any(|(n, _)| *n == name), "{name} typed twice");
                typed.push((name, kind));
            } else if !line.starts_with("# HELP ") {
                // Every sample belongs to the family typed last.
                let (family, kind) = typed.last().copied().expect("a TYPE line first");
                let sample = line.split(['{', ' ']).next().unwrap_or_default();
                let ok = match kind {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.strip_prefix(family) == Some(s)),
                    _ => sample == family,
                };
                assert!(ok, "{sample} under {family} ({kind})");
            }
        }
        assert!(
            typed.contains(&("patroni_dr_watchdog_probes_total", "counter")),
            "{classic}"
        );
        assert!(
            typed.contains(&("patroni_dr_watchdog_build_info", "gauge")),
            "{classic}"
        );
        assert!(typed.iter().any(|(_, k)| *k == "histogram"), "{classic}");
    }

    #[test]
    fn odd_input_neither_panics_nor_invents_series() {
        assert_eq!(to_classic(""), "");
        assert_eq!(to_classic("# EOF\n"), "");
        // A sample without a TYPE line is untyped.
        assert_eq!(to_classic("lonely 1\n"), "# TYPE lonely untyped\nlonely 1\n");
        // An unterminated label set is dropped, not half-written.
        assert_eq!(to_classic("# TYPE x gauge\nx{a=\"} 1\n"), "# TYPE x gauge\n");
    }
}
