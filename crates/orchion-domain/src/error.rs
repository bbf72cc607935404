//! Validation errors that name the offending field, so every edge can report them precisely.

use std::fmt;

/// One segment of a JSON pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
pub fn pointer_escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// One problem with one field of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the input, as a JSON pointer (`/name`, `/steps/2/needs`).
    pub pointer: String,
    /// What is wrong, in a sentence that names the field.
    pub message: String,
}

impl FieldError {
    /// A problem with the top-level field `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            pointer: format!("/{field}"),
            message: message.into(),
        }
    }
}

/// Every problem found in one input: validation reports them all at once, never only the first.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Adds a problem.
    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// `Ok(value)` when no problem was recorded, otherwise the problems.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// The most problems an answer lists; the others are counted.
pub const MAX_PROBLEMS_LISTED: usize = 50;

impl ValidationErrors {
    /// The problems an answer lists (the first [`MAX_PROBLEMS_LISTED`]), and how many more
    /// there are.
    pub fn listed(&self) -> (&[FieldError], usize) {
        let shown = self.0.len().min(MAX_PROBLEMS_LISTED);
        (&self.0[..shown], self.0.len() - shown)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (listed, more) = self.listed();
        let messages: Vec<&str> = listed.iter().map(|e| e.message.as_str()).collect();
        f.write_str(&messages.join("; "))?;
        if more > 0 {
            write!(f, "; and {more} more problems")?;
        }
        Ok(())
    }
}
