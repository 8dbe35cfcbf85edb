//! The one edit the watchdog makes to Patroni's dynamic configuration:
//! remove `standby_cluster` (promote), or add it back (failback), done on the
//! text so that every other byte stays exactly as Patroni wrote it.

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
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
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
    }
}
