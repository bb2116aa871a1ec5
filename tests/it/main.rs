//! Herald's integration tests: one binary, a module per face, each test against a real server
//! on a random port with real clients.

mod common;
mod documents;
mod instances;
mod process;
