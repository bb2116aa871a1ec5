//! Session actors, one per connected subscriber; each registers with the Broker in `started`
//! and unregisters in `stopping`.

pub mod longpoll;
pub mod sse;
pub mod ws;
