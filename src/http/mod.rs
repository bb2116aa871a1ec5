//! The wire types below both the server and the faces: a request as the direct path parses it
//! (`request`), the answer both paths write from one description (`answer`), the `Date` header
//! (`date`), the rules every request head must pass (`guard`), the access log line
//! (`access_log`), the writer of a stream's frames (`stream`) and the connection they travel
//! on, plain or TLS (`conn`).
//! The server moves these bytes; the faces decide what they say.

pub mod access_log;
pub mod answer;
pub mod conn;
pub mod date;
pub mod guard;
pub mod request;
pub mod stream;

pub use answer::Answer;
pub use conn::Conn;
pub use date::with_date;
pub use request::Request;
