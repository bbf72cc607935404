//! Orchion's control-plane services, free of any wire protocol: the gRPC and REST edges call
//! into them.
//!
//! - [`nodes::NodeRegistry`]: which nodes exist, whether each is alive, and their credentials.

pub mod nodes;

pub use nodes::{Heartbeat, NodeRegistry, Registered, RegistryError, RegistrySettings, TickReport};
