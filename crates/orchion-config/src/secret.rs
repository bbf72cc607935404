//! Configuration values that hold secrets, and how they are kept out of output.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What stands in for a secret wherever configuration is shown.
const REDACTED: &str = "REDACTED";

/// A database URL, which may carry a password. `Debug` and `Serialize` redact the password;
/// only [`DatabaseUrl::expose`] gives the URL to connect with.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for connecting. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced, safe to show.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some(REDACTED));
                url.to_string()
            }
            Ok(_) => self.0.clone(),
            // Unparseable: show only the scheme, since a password could hide anywhere in it.
            Err(_) => format!(
                "{}:{REDACTED}",
                self.0.split(':').next().unwrap_or_default()
            ),
        }
    }

    /// Checks the scheme is one Orchion has a store for.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let url = &self.0;
        if url.starts_with("sqlite:") {
            return Ok(());
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return url::Url::parse(url)
                .map(|_| ())
                .map_err(|e| format!("is not a valid PostgreSQL URL: {e}"));
        }
        Err(format!(
            "`{}` must start with `sqlite:` or `postgres://`",
            self.redacted()
        ))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DatabaseUrl)
    }
}

/// A secret string, such as a join token. `Debug` and `Serialize` show `REDACTED`; only
/// [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Checks the secret is usable as a token: 16 to 256 visible ASCII characters.
    pub(crate) fn validate_token(&self) -> Result<(), String> {
        let ok = (16..=256).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(())
        } else {
            Err("must be 16 to 256 visible ASCII characters".into())
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(REDACTED)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}
