//! One integration-test binary: a real server in-process, spoken to over TCP and TLS.

mod api;
mod binary;
mod bosh;
mod bots;
mod common;
mod component;
mod core;
mod fault;
mod hostile;
mod im;
mod muc;
mod pep;
mod s2s;
mod sm;
mod sync;
mod websocket;
