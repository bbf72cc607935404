//! Orchion's gRPC protocol, package `orchion.v1`, generated from `proto/` at build time.
//!
//! Boundary: these are wire types. They are converted to and from domain types by hand at the
//! gRPC edge (`orchion-grpc`) and in the agent; nothing else uses them.

#![allow(missing_docs, clippy::all, clippy::pedantic)] // generated code

/// Package `orchion.v1`.
pub mod v1 {
    tonic::include_proto!("orchion.v1");
}
