//! Sessions: the registry of bound resources, and the per-connection client task.

pub mod c2s;
pub mod component;
pub mod csi;
pub mod mailbox;
pub mod registry;
pub mod sm;

pub use registry::{Deliver, Outgoing, SessionEntry, SessionRegistry};
