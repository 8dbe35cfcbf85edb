//! The edits the watchdog makes to Patroni's dynamic configuration: remove
//! `standby_cluster` (promote), add it back (failback), or set its `host`
//! and `port` to the Transport Service's (follow the tunnel), each done on
//! the text so that every other byte stays exactly as Patroni wrote it.

use serde_json::Value;

use crate::observe::dynamic_config::{DynamicConfigError, parse};

/// The config without its `standby_cluster` member(s), or `None` when it has
/// none. Only that member and one adjacent comma are cut out of the text.
pub fn remove_standby_cluster(text: &str) -> Result<Option<String>, DynamicConfigError> {
    parse(text)?;
    let members = top_level_members(text).ok_or(DynamicConfigError::NotAnObject)?;
    let removed: Vec<bool> = members.iter().map(|m| m.key == "standby_cluster").collect();
    let kept_after = |i: usize| removed[i + 1..].iter().any(|r| !r);
    let kept_before = |i: usize| (0..i).rev().find(|&j| !removed[j]);
    let cuts: Vec<(usize, usize)> = if removed.iter().all(|r| *r) {
        members
            .first()
            .zip(members.last())
            .map(|(f, l)| (f.start, l.end))
            .into_iter()
            .collect()
    } else {
        (0..members.len())
            .filter(|&i| removed[i])
            .map(|i| match kept_before(i) {
                // Cut through to the next member: "a":1, |"b":2
                _ if kept_after(i) => (members[i].start, members[i + 1].start),
                // Nothing kept after it: cut from the end of the last kept value.
                Some(j) => (members[j].end, members[i].end),
                None => (members[i].start, members[i].end),
            })
            .collect()
    };
    if cuts.is_empty() {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end) in cuts {
        let start = start.max(pos);
        out.push_str(&text[pos..start]);
        pos = end.max(pos);
    }
    out.push_str(&text[pos..]);
    debug_assert!(parse(&out).is_ok());
    Ok(Some(out))
}

/// The config with a `standby_cluster` member appended (for failback), or an
/// error if it already has one. Every existing byte is kept.
pub fn add_standby_cluster(text: &str, section: &Value) -> Result<String, DynamicConfigError> {
    let map = parse(text)?;
    if map.contains_key("standby_cluster") {
        return Err(DynamicConfigError::AlreadyStandby);
    }
    let members = top_level_members(text).ok_or(DynamicConfigError::NotAnObject)?;
    let member = format!("\"standby_cluster\":{section}");
    let out = match members.last() {
        Some(last) => format!("{},{member}{}", &text[..last.end], &text[last.end..]),
        None => {
            let open = text.find('{').ok_or(DynamicConfigError::NotAnObject)?;
            format!("{}{member}{}", &text[..=open], &text[open + 1..])
        }
    };
    debug_assert!(parse(&out).is_ok());
    Ok(out)
}

/// The config with `standby_cluster.host` and/or `.port` set to these
/// values; `None` leaves that key alone. Only the bytes of the changed
/// values are replaced; a key that is missing is appended to the section.
/// `Ok(None)`: already so, nothing to write.
pub fn set_standby_address(
    text: &str,
    host: Option<&str>,
    port: Option<u16>,
) -> Result<Option<String>, DynamicConfigError> {
    parse(text)?;
    let members = top_level_members(text).ok_or(DynamicConfigError::NotAnObject)?;
    let mut sections = members.iter().filter(|m| m.key == "standby_cluster");
    let section = match (sections.next(), sections.next()) {
        (Some(section), None) => section,
        (None, _) => return Err(DynamicConfigError::NotStandby),
        (Some(_), Some(_)) => return Err(DynamicConfigError::Duplicate("standby_cluster")),
    };
    let value_start = value_offset(text, section);
    let inner = object_members(text, value_start).ok_or(DynamicConfigError::NotStandby)?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let wanted = [
        ("host", host.map(|h| Value::from(h).to_string())),
        ("port", port.map(|p| p.to_string())),
    ];
    let mut appended = String::new();
    for (key, value) in wanted {
        let Some(value) = value else { continue };
        let mut found = inner.iter().filter(|m| m.key == key);
        match (found.next(), found.next()) {
            (Some(m), None) => {
                let at = value_offset(text, m);
                if text[at..m.end] != value {
                    edits.push((at, m.end, value));
                }
            }
            (None, _) => appended.push_str(&format!(",\"{key}\":{value}")),
            (Some(_), Some(_)) => return Err(DynamicConfigError::Duplicate(key)),
        }
    }
    if !appended.is_empty() {
        // After the last member, before the closing brace and its spacing.
        let at = inner.last().map_or(value_start + 1, |m| m.end);
        if inner.is_empty() {
            appended.remove(0);
        }
        edits.push((at, at, appended));
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len() + 16);
    let mut pos = 0;
    for (start, end, value) in edits {
        out.push_str(&text[pos..start]);
        out.push_str(&value);
        pos = end;
    }
    out.push_str(&text[pos..]);
    debug_assert!(parse(&out).is_ok());
    Ok(Some(out))
}

/// Where a member's value starts: past its key, the colon and any spacing.
fn value_offset(text: &str, m: &Member) -> usize {
    let b = text.as_bytes();
    let after_key = skip_string(b, m.start).unwrap_or(m.start);
    skip_ws(b, skip_ws(b, after_key) + 1)
}

struct Member {
    key: String,
    /// Byte offset of the key's opening quote.
    start: usize,
    /// Byte offset just past the value.
    end: usize,
}

/// Spans of the top-level members of a JSON object already known to be
/// valid. Keys are decoded by serde_json so escapes compare correctly.
fn top_level_members(text: &str) -> Option<Vec<Member>> {
    object_members(text, skip_ws(text.as_bytes(), 0))
}

/// Spans of the members of the object that opens at byte `at`.
fn object_members(text: &str, at: usize) -> Option<Vec<Member>> {
    let b = text.as_bytes();
    let mut i = at;
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Some(members);
    }
    loop {
        let start = i;
        let key_end = skip_string(b, i)?;
        let key: String = serde_json::from_str(&text[start..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = skip_value(b, i)?;
        members.push(Member { key, start, end });
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some(members),
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i]` is an opening quote; returns the offset past the closing one.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    while let Some(&c) = b.get(j) {
        match c {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&c) = b.get(j) {
                match c {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while let Some(&c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PATRONI: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100}},"standby_cluster":{"host":"patroni-master-gold","port":31234,"create_replica_methods":["basebackup_fast_xlog"]}}"#;

    #[test]
    fn malformed_config_is_an_error_not_a_guess() {
        assert!(matches!(
            remove_standby_cluster("not json"),
            Err(DynamicConfigError::Json(_))
        ));
        assert_eq!(
            remove_standby_cluster("\"s\""),
            Err(DynamicConfigError::NotAnObject)
        );
    }

    #[test]
    fn removes_exactly_the_member_and_keeps_every_other_byte() {
        let out = remove_standby_cluster(PATRONI).unwrap().unwrap();
        assert_eq!(
            out,
            r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"parameters":{"max_connections":100}}}"#
        );
    }

    #[test]
    fn removal_in_every_position_and_format() {
        let cases = [
            (r#"{"standby_cluster":{"host":"h"},"ttl":30}"#, r#"{"ttl":30}"#),
            (
                r#"{"a":1,"standby_cluster":{"host":"h"},"b":2}"#,
                r#"{"a":1,"b":2}"#,
            ),
            (r#"{"standby_cluster":{"host":"h"}}"#, r#"{}"#),
            (
                "{\n  \"a\": 1.50,\n  \"standby_cluster\": {\"host\": \"h,}\\\"\"},\n  \"b\": \"\\u00e9\"\n}",
                "{\n  \"a\": 1.50,\n  \"b\": \"\\u00e9\"\n}",
            ),
            (
                r#"{"a":[1,{"standby_cluster":1}],"standby_cluster":{"host":"h"}}"#,
                r#"{"a":[1,{"standby_cluster":1}]}"#,
            ),
            (r#"{"standby_cluster":null,"x":1}"#, r#"{"x":1}"#),
        ];
        for (input, want) in cases {
            assert_eq!(
                remove_standby_cluster(input).unwrap().as_deref(),
                Some(want),
                "{input}"
            );
        }
    }

    #[test]
    fn duplicate_sections_are_all_removed() {
        for (input, want) in [
            (
                r#"{"x":1,"standby_cluster":{"host":"a"},"standby_cluster":{"host":"b"}}"#,
                r#"{"x":1}"#,
            ),
            (
                r#"{"standby_cluster":{"host":"a"},"x":1,"standby_cluster":{"host":"b"}}"#,
                r#"{"x":1}"#,
            ),
            (
                r#"{"standby_cluster":{"host":"a"},"standby_cluster":{"host":"b"},"x":1}"#,
                r#"{"x":1}"#,
            ),
            (
                r#"{ "standby_cluster":{"host":"a"}, "standby_cluster":null }"#,
                r#"{  }"#,
            ),
        ] {
            assert_eq!(
                remove_standby_cluster(input).unwrap().as_deref(),
                Some(want),
                "{input}"
            );
        }
    }

    #[test]
    fn failback_appends_the_section_and_keeps_every_byte() {
        let section = serde_json::json!({"host": "patroni-master-gold", "port": 31234});
        let out = add_standby_cluster(PROMOTED_LIKE, &section).unwrap();
        assert_eq!(
            out,
            r#"{"ttl":30,"loop_wait":10,"standby_cluster":{"host":"patroni-master-gold","port":31234}}"#
        );
        assert!(crate::observe::dynamic_config::facts(&out).unwrap().standby);
        assert_eq!(
            remove_standby_cluster(&out).unwrap().as_deref(),
            Some(PROMOTED_LIKE)
        );
        assert_eq!(
            add_standby_cluster("{ }", &section).unwrap(),
            r#"{"standby_cluster":{"host":"patroni-master-gold","port":31234} }"#
        );
        assert_eq!(
            add_standby_cluster(PATRONI, &section),
            Err(DynamicConfigError::AlreadyStandby)
        );
    }

    const PROMOTED_LIKE: &str = r#"{"ttl":30,"loop_wait":10}"#;

    #[test]
    fn an_escaped_key_is_still_found() {
        let input = r#"{"standby\u005fcluster":{"host":"h"},"ttl":1}"#;
        assert_eq!(
            remove_standby_cluster(input).unwrap().as_deref(),
            Some(r#"{"ttl":1}"#)
        );
    }

    #[test]
    fn nothing_to_remove_is_none() {
        assert_eq!(
            remove_standby_cluster(r#"{"ttl":30,"pause":false}"#).unwrap(),
            None
        );
        assert_eq!(remove_standby_cluster("{}").unwrap(), None);
        // nested members of that name are not the section
        assert_eq!(
            remove_standby_cluster(r#"{"x":{"standby_cluster":{"host":"h"}}}"#).unwrap(),
            None
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            "[a-z ,:{}\\[\\]\"\\\\é]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn removal_equals_deleting_the_key(
            mut members in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..6),
            section in json_value(),
            pretty in any::<bool>(),
        ) {
            members.insert("standby_cluster".to_string(), section);
            let original = Value::Object(members.clone().into_iter().collect());
            let text = if pretty { serde_json::to_string_pretty(&original) } else { serde_json::to_string(&original) }.unwrap();
            let out = remove_standby_cluster(&text).unwrap().expect("present");
            members.remove("standby_cluster");
            let parsed: Value = serde_json::from_str(&out).unwrap();
            let rest = Value::Object(members.clone().into_iter().collect());
            prop_assert_eq!(&parsed, &rest);
            // Byte for byte what the writer would have written without the
            // section (an emptied pretty object keeps its line break).
            if !members.is_empty() {
                let expected = if pretty { serde_json::to_string_pretty(&rest) } else { serde_json::to_string(&rest) }.unwrap();
                prop_assert_eq!(out, expected);
            }
        }

        #[test]
        fn setting_the_address_changes_exactly_those_values(
            members in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..5),
            mut section in prop::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
            old_host in "[a-z.\\-]{1,12}",
            old_port in any::<u16>(),
            new_host in prop::option::of("[a-z.\\-]{1,12}"),
            new_port in prop::option::of(1u16..),
            pretty in any::<bool>(),
        ) {
            section.insert("host".into(), Value::from(old_host));
            section.insert("port".into(), Value::from(old_port));
            let mut config: serde_json::Map<String, Value> = members.into_iter().collect();
            config.insert("standby_cluster".into(), Value::Object(section.into_iter().collect()));
            let original = Value::Object(config);
            let write = |v: &Value| if pretty { serde_json::to_string_pretty(v) } else { serde_json::to_string(v) }.unwrap();
            let text = write(&original);
            let out = set_standby_address(&text, new_host.as_deref(), new_port).unwrap();
            let mut expected = original.clone();
            if let Some(h) = &new_host {
                expected["standby_cluster"]["host"] = Value::from(h.as_str());
            }
            if let Some(p) = new_port {
                expected["standby_cluster"]["port"] = Value::from(p);
            }
            match out {
                None => prop_assert_eq!(&expected, &original, "nothing written only when already so"),
                Some(out) => {
                    prop_assert_ne!(&expected, &original);
                    // The same members in the same order, each value
                    // formatted as before: every other byte is kept.
                    prop_assert_eq!(out, write(&expected));
                }
            }
        }
    }

    const SECTION: &str = r#"{"ttl":30,"standby_cluster":{"host":"patroni-master-gold","port":31234,"create_replica_methods":["basebackup_fast_xlog"]},"slots":{}}"#;

    #[test]
    fn the_port_alone_is_replaced_in_place() {
        assert_eq!(
            set_standby_address(SECTION, None, Some(31999))
                .unwrap()
                .as_deref(),
            Some(SECTION.replace("31234", "31999").as_str())
        );
        assert_eq!(
            set_standby_address(SECTION, Some("gold.example"), Some(31999))
                .unwrap()
                .as_deref(),
            Some(
                SECTION
                    .replace("31234", "31999")
                    .replace("patroni-master-gold", "gold.example")
                    .as_str()
            )
        );
        assert_eq!(set_standby_address(SECTION, None, Some(31234)).unwrap(), None);
        assert_eq!(
            set_standby_address(SECTION, Some("patroni-master-gold"), None).unwrap(),
            None
        );
    }

    #[test]
    fn a_string_port_becomes_a_number_and_spacing_is_kept() {
        let text = "{\n  \"standby_cluster\": {\n    \"host\": \"h\",\n    \"port\": \"31234\"\n  }\n}";
        assert_eq!(
            set_standby_address(text, None, Some(31999)).unwrap().as_deref(),
            Some("{\n  \"standby_cluster\": {\n    \"host\": \"h\",\n    \"port\": 31999\n  }\n}")
        );
    }

    #[test]
    fn a_missing_key_is_appended_to_the_section() {
        assert_eq!(
            set_standby_address(r#"{"standby_cluster":{"host":"h"},"ttl":1}"#, None, Some(31999))
                .unwrap()
                .as_deref(),
            Some(r#"{"standby_cluster":{"host":"h","port":31999},"ttl":1}"#)
        );
        assert_eq!(
            set_standby_address(r#"{"standby_cluster":{"port":1 }}"#, Some("h"), Some(2))
                .unwrap()
                .as_deref(),
            Some(r#"{"standby_cluster":{"port":2,"host":"h" }}"#)
        );
        assert_eq!(
            set_standby_address(r#"{"standby_cluster":{ }}"#, Some("h"), Some(2))
                .unwrap()
                .as_deref(),
            Some(r#"{"standby_cluster":{"host":"h","port":2 }}"#)
        );
        // A host that needs escaping is written as JSON.
        assert_eq!(
            set_standby_address(r#"{"standby_cluster":{"port":1}}"#, Some("a\"b"), None)
                .unwrap()
                .as_deref(),
            Some(r#"{"standby_cluster":{"port":1,"host":"a\"b"}}"#)
        );
    }

    #[test]
    fn what_cannot_be_edited_safely_is_an_error() {
        assert!(matches!(
            set_standby_address("{\"ttl\":", None, Some(1)),
            Err(DynamicConfigError::Json(_))
        ));
        for (text, want) in [
            (r#"{"ttl":30}"#, DynamicConfigError::NotStandby),
            (r#"{"standby_cluster":null}"#, DynamicConfigError::NotStandby),
            (
                r#"{"standby_cluster":{"host":"a"},"standby_cluster":{"host":"b"}}"#,
                DynamicConfigError::Duplicate("standby_cluster"),
            ),
            (
                r#"{"standby_cluster":{"port":1,"port":2}}"#,
                DynamicConfigError::Duplicate("port"),
            ),
        ] {
            assert_eq!(set_standby_address(text, None, Some(3)), Err(want), "{text}");
        }
    }
}
