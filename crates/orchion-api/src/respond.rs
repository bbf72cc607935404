//! The shapes answers share: `201 Created` with its `Location` (and `Idempotent-Replayed` when
//! an idempotency key returned an earlier resource), and a page of a listing.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use orchion_domain::Page;
use serde::Serialize;

/// A resource a request created, or that an idempotency key returned (`replayed`): answered
/// `201` with the resource's `Location`.
#[derive(Debug)]
pub struct Created<T> {
    pub body: T,
    pub location: String,
    pub replayed: bool,
}

impl<T> Created<T> {
    /// `body`, created now at `location`.
    pub fn new(body: T, location: String) -> Self {
        Created {
            body,
            location,
            replayed: false,
        }
    }

    /// `body` at `location`, created now unless `created` is false (an idempotent replay).
    pub fn or_replayed(body: T, location: String, created: bool) -> Self {
        Created {
            body,
            location,
            replayed: !created,
        }
    }
}

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::CREATED, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Ok(location) = HeaderValue::from_str(&self.location) {
            headers.insert(header::LOCATION, location);
        }
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// A page's items as `body` renders them, and the cursor of the next page (its `next_cursor`).
pub fn paged<T, B>(page: Page<T>, body: impl FnMut(T) -> B) -> (Vec<B>, Option<String>) {
    (
        page.items.into_iter().map(body).collect(),
        page.next.map(|c| c.to_string()),
    )
}
