//! The `Date` header's value, formatted once a second per worker as actix-http does, not once
//! per response.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    /// The value and the second it names.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Calls `f` with the `Date` header's value for now.
pub fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    DATE.with_borrow_mut(|(second, date)| {
        let now = SystemTime::now();
        let now_second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if *second != now_second {
            *second = now_second;
            *date = httpdate::fmt_http_date(now);
        }
        f(date)
    })
}
