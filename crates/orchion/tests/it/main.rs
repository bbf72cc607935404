//! The `orchion` binary's integration tests, in one test binary (linking it is what the
//! edit–test loop waits on): each module starts real processes over real sockets through
//! `common`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod dashboard;
mod deploy_manifests;
mod deployments;
mod events;
mod examples;
mod faults;
mod jobs;
mod kubernetes;
mod metrics;
mod nodes;
mod oidc;
mod replicas;
mod safety;
mod server;
mod tls;
mod tracing;
mod workflows;
