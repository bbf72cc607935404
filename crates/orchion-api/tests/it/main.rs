//! The HTTP edge's handler tests, in one test binary: the real router over a real SQLite
//! store (`common`), each module one part of the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod common;
mod deployments;
mod edge;
mod http;
mod jobs;
mod nodes;
mod retention;
mod runs;
mod secrets;
mod webhooks;
mod workflows;
