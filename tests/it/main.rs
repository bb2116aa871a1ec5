//! Herald's integration tests: one binary, a module per face, each test against a real server
//! on a random port with real clients.

mod access;
mod browser;
mod cluster;
mod common;
mod config_file;
mod contract;
mod dashboard;
mod direct_path;
mod docs;
mod documents;
mod drain;
mod durability;
mod hostile;
mod idempotency;
mod instances;
mod layers;
mod openapi;
mod ops;
mod process;
mod raw;
mod tls;
mod tokens;
