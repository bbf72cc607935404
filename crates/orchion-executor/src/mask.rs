//! Masking a task's secret values out of what it reports: each occurrence in a log line, its
//! output, error or outputs becomes [`MASK`], as CI systems do. A value of several lines is
//! also masked line by line (a log line never holds two), for its lines of
//! [`MIN_MASKED_LINE`] characters or more.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// What a secret's value is replaced with.
pub const MASK: &str = "***";

/// The shortest line of a multi-line value masked on its own; shorter ones (`}`, blank lines)
/// would mask ordinary text.
pub const MIN_MASKED_LINE: usize = 4;

/// The values one task must not report, ready to find.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    finder: Option<AhoCorasick>,
}

impl Masker {
    /// A masker for `values` (none: masks nothing, at no cost).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut patterns: Vec<&str> = Vec::new();
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            patterns.push(value);
            if value.contains('\n') {
                patterns.extend(
                    value
                        .lines()
                        .map(|line| line.trim_end_matches('\r'))
                        .filter(|line| line.trim().len() >= MIN_MASKED_LINE),
                );
            }
        }
        patterns.sort_unstable();
        patterns.dedup();
        let finder = (!patterns.is_empty())
            .then(|| {
                // A contiguous NFA: built in a fraction of a DFA's time, for one task's
                // few values, and as fast on lines this short.
                AhoCorasick::builder()
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        Self { finder }
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.finder.is_none()
    }

    /// `text` with every value replaced by [`MASK`].
    pub fn text(&self, text: String) -> String {
        match &self.finder {
            Some(finder) if finder.is_match(&text) => {
                let mut masked = String::with_capacity(text.len());
                finder.replace_all_with(&text, &mut masked, |_, _, dst| {
                    dst.push_str(MASK);
                    true
                });
                masked
            }
            _ => text,
        }
    }

    /// Outputs (a JSON object's text) with every value masked in its keys and texts; text that
    /// is not JSON is masked as text.
    pub fn json(&self, text: String) -> String {
        // The text itself is not searched: a value with `"` or `\` in it is escaped there.
        if self.finder.is_none() {
            return text;
        }
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) => self.value(value).to_string(),
            Err(_) => self.text(text),
        }
    }

    fn value(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Value::Object(object) => Value::Object(
                object
                    .into_iter()
                    .map(|(k, v)| (self.text(k), self.value(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_masked_and_nothing_else() {
        let masker = Masker::new(["s3cr3t", "s3cr3t-longer", ""]);
        assert_eq!(
            masker.text("a s3cr3t b s3cr3t-longer c".into()),
            "a *** b *** c"
        );
        assert_eq!(masker.text("plain".into()), "plain");
        assert!(Masker::new([""]).is_empty());
        assert_eq!(Masker::default().text("s3cr3t".into()), "s3cr3t");
    }

    #[test]
    fn a_multi_line_value_is_masked_line_by_line() {
        let masker = Masker::new(["-----BEGIN KEY-----\nMIIBVwIBADANBg\n}\n-----END KEY-----"]);
        assert_eq!(masker.text("MIIBVwIBADANBg".into()), "***");
        assert_eq!(
            masker.text("{ }".into()),
            "{ }",
            "short lines are left alone"
        );
    }

    #[test]
    fn outputs_stay_json_with_values_masked_in_keys_and_texts() {
        let masker = Masker::new(["a\"quote"]);
        let outputs = serde_json::json!({"x": "got a\"quote", "a\"quote": [1, "a\"quote"]});
        let masked: serde_json::Value =
            serde_json::from_str(&masker.json(outputs.to_string())).unwrap_or_default();
        assert_eq!(
            masked,
            serde_json::json!({"x": "got ***", "***": [1, "***"]})
        );
        assert_eq!(masker.json("not json a\"quote".into()), "not json ***");
    }
}
