//! Cursor pagination: a page of items ordered by id, and the cursor that continues after it.

use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::FieldError;

/// Where a listing continues: after the item with this id. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub Uuid);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.simple().fmt(f)
    }
}

impl FromStr for Cursor {
    type Err = FieldError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(Cursor)
            .map_err(|_| FieldError::new("cursor", format!("cursor `{s}` is not one this server issued: pass the `next_cursor` of a previous page")))
    }
}

/// How much of a listing to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many items (1..=[`PageRequest::MAX_LIMIT`]).
    pub limit: u32,
    /// Items after this cursor; from the start when absent.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// The page size when a client does not choose one.
    pub const DEFAULT_LIMIT: u32 = 50;
    /// The largest page a client may ask for.
    pub const MAX_LIMIT: u32 = 500;

    /// A page request, validating the limit.
    pub fn new(limit: Option<u32>, after: Option<Cursor>) -> Result<Self, FieldError> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(FieldError::new(
                "limit",
                format!(
                    "limit must be between 1 and {}, got {limit}",
                    Self::MAX_LIMIT
                ),
            ));
        }
        Ok(Self { limit, after })
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: Self::DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items, in id order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_range_name_the_field() {
        for bad in [0, PageRequest::MAX_LIMIT + 1] {
            let err = PageRequest::new(Some(bad), None).unwrap_err();
            assert_eq!(err.pointer, "/limit");
        }
        assert_eq!(PageRequest::new(None, None).unwrap().limit, 50);
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let c = Cursor(Uuid::now_v7());
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        assert_eq!("zzz".parse::<Cursor>().unwrap_err().pointer, "/cursor");
    }
}
