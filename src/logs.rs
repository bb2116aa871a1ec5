//! The process's logger: env_logger (`RUST_LOG`, default `DEFAULT`), except that what
//! actix-http logs as an error when a client sends a request it cannot parse (answered 400 or
//! 431) is logged at debug: a client's mistake is not the server's error.

use log::{Level, Log, Metadata, Record};

/// `info`, but for the Redis Cluster client's warnings: each of its connections (one per
/// thread) warns about a dead cluster node every time it tries it, while Herald says what it
/// means for the node itself (`/health`, refused publishes).
const DEFAULT: &str = "info,redis::cluster_handling=error";

/// Where actix-http reports requests it could not parse.
const DISPATCHER: &str = "actix_http::h1::dispatcher";

/// How those reports begin.
const CLIENT_ERROR: &str = "stream error: request parse error";

struct Logger(env_logger::Logger);

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.target() == DISPATCHER && record.level() == Level::Error {
            let text = record.args().to_string();
            if text.starts_with(CLIENT_ERROR) {
                let metadata = Metadata::builder()
                    .level(Level::Debug)
                    .target(DISPATCHER)
                    .build();
                if self.0.enabled(&metadata) {
                    self.0.log(
                        &Record::builder()
                            .metadata(metadata)
                            .args(format_args!("{text}"))
                            .build(),
                    );
                }
                return;
            }
        }
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the logger; call once, first thing.
pub fn init() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT))
            .build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Logger(logger))).is_ok() {
        log::set_max_level(max);
    }
}
