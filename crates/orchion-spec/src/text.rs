//! Text the store can keep: PostgreSQL refuses the NUL character in `text` and `jsonb`, so a
//! NUL anywhere in what a client sends is refused at the edge, on both backends alike, naming
//! where it is.

use serde_json::Value;

/// The JSON pointer of the first string (or object key) in `value` holding a NUL character
/// (`\u0000`), if any: `""` for `value` itself.
pub fn find_nul(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(String::new),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_nul(item).map(|rest| format!("/{i}{rest}"))),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let here = || format!("/{}", orchion_domain::pointer_escape(key));
            if key.contains('\0') {
                return Some(here());
            }
            find_nul(item).map(|rest| format!("{}{rest}", here()))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Why a text holding NUL is refused, for the field that holds it.
pub const NUL_REFUSED: &str =
    "text may not contain the NUL character (\\u0000); remove it or encode the data (e.g. base64)";

/// `text` with every NUL character replaced by U+FFFD, for what Orchion keeps but does not
/// judge (a task's output and log lines).
pub fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// `value` with [`without_nul`] applied to every string and key in it.
pub fn json_without_nul(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(without_nul(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(json_without_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (without_nul(k), json_without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_first_nul_is_found_by_its_pointer() {
        assert_eq!(
            find_nul(&json!({"a": [1, "ok", {"b/c": "x\u{0}"}]})).as_deref(),
            Some("/a/2/b~1c")
        );
        assert_eq!(find_nul(&json!({"k\u{0}": 1})).as_deref(), Some("/k\u{0}"));
        assert_eq!(find_nul(&json!("\u{0}")).as_deref(), Some(""));
        assert_eq!(find_nul(&json!({"a": ["\\u0000 spelled out"]})), None);
    }

    #[test]
    fn output_keeps_everything_but_nul() {
        assert_eq!(without_nul("a\0b".into()), "a\u{FFFD}b");
        assert_eq!(without_nul("plain".into()), "plain");
        assert_eq!(
            json_without_nul(json!({"k\u{0}": ["v\u{0}", 1]})),
            json!({"k\u{FFFD}": ["v\u{FFFD}", 1]})
        );
    }
}
