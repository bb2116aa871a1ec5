//! Query parameters of the instance face, validated the way FastAPI does: every bad
//! parameter is reported at once as a 422 `detail` entry with pydantic 2's type and message.
//!
//! The structs double as the OpenAPI description of the parameters (`IntoParams`); a test
//! checks that the bounds written in their attributes are the ones enforced here.

use std::time::Duration;

use actix_web::web;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{InstanceError, LocItem, ValidationDetail};
use crate::broker::messages::Fallback;

/// Smallest page, for long-poll and paging.
pub const PAGE_SIZE_MIN: i64 = 1;
/// Largest page: bounds the work one request can ask for.
pub const PAGE_SIZE_MAX: i64 = 100;
/// Page size when none is given.
pub const PAGE_SIZE_DEFAULT: i64 = 10;
/// Longest long-poll wait, in seconds.
pub const DEADLINE_MAX: i64 = 900;
/// Long-poll wait when none is given, in seconds.
pub const DEADLINE_DEFAULT: i64 = 30;

/// Where a long-poll starts when `exclude_before` is absent or not in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OffsetResetStrategy {
    /// Only notifications created from now on.
    Latest,
    /// Every retained notification.
    Earliest,
}

impl From<OffsetResetStrategy> for Fallback {
    fn from(s: OffsetResetStrategy) -> Self {
        match s {
            OffsetResetStrategy::Latest => Fallback::Latest,
            OffsetResetStrategy::Earliest => Fallback::Earliest,
        }
    }
}

/// Query of `GET .../stream/notification/lp`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LongPollQuery {
    /// Max number of entries to return at one time
    #[param(minimum = 1, maximum = 100, default = 10, required = false, value_type = i64)]
    pub max_page_size: usize,
    /// All notifications including and before this (chronologically) provided id will be
    /// ignored when returning results. Opaque.
    pub exclude_before: Option<String>,
    /// When `exclude_before` is not found in the stream or not given, begin streaming
    /// messages from the earliest/latest message
    #[param(inline, default = "latest", required = false)]
    pub offset_reset_strategy: OffsetResetStrategy,
    /// We will try to the best of our ability to return by this deadline, even when we have no
    /// notifications. Value should be in seconds
    #[param(minimum = 0, maximum = 900, default = 30, required = false, value_type = i64)]
    pub deadline: Duration,
}

/// Query of `GET .../notification` (paging, newer to older).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Max number of entries to return at one time
    #[param(minimum = 1, maximum = 100, default = 10, required = false, value_type = i64)]
    pub page_size: usize,
    /// The id of the newest notification to return (inclusive); the `cursor` of the previous
    /// page. Absent: start at the newest notification. Opaque.
    pub start_at: Option<String>,
    /// All notifications including and before this (chronologically) provided id will be
    /// ignored when returning results. Opaque.
    pub exclude_before: Option<String>,
}

impl LongPollQuery {
    pub fn parse(query: &str) -> Result<Self, InstanceError> {
        let mut q = Checker::new(query);
        let parsed = Self {
            max_page_size: q.int(
                "max_page_size",
                PAGE_SIZE_DEFAULT,
                PAGE_SIZE_MIN,
                PAGE_SIZE_MAX,
            ) as usize,
            exclude_before: q.string("exclude_before"),
            offset_reset_strategy: q.strategy("offset_reset_strategy"),
            deadline: Duration::from_secs(
                q.int("deadline", DEADLINE_DEFAULT, 0, DEADLINE_MAX) as u64
            ),
        };
        q.finish().map(|()| parsed)
    }
}

impl PageQuery {
    pub fn parse(query: &str) -> Result<Self, InstanceError> {
        let mut q = Checker::new(query);
        let parsed = Self {
            page_size: q.int("page_size", PAGE_SIZE_DEFAULT, PAGE_SIZE_MIN, PAGE_SIZE_MAX) as usize,
            start_at: q.string("start_at"),
            exclude_before: q.string("exclude_before"),
        };
        q.finish().map(|()| parsed)
    }
}

/// Reads parameters out of a query string, collecting what is wrong with them.
struct Checker {
    /// Decoded `name=value` pairs, in order.
    pairs: Vec<(String, String)>,
    /// Failures found so far.
    errors: Vec<ValidationDetail>,
}

impl Checker {
    fn new(query: &str) -> Self {
        let mut errors = Vec::new();
        let pairs = match web::Query::<Vec<(String, String)>>::from_query(query) {
            Ok(pairs) => pairs.into_inner(),
            Err(e) => {
                errors.push(ValidationDetail::new(
                    vec![LocItem::from("query")],
                    "value_error",
                    e.to_string(),
                ));
                Vec::new()
            }
        };
        Self { pairs, errors }
    }

    /// The value of a parameter; as in FastAPI, the last one wins when it repeats.
    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn fail(&mut self, name: &str, kind: &str, msg: String) {
        self.errors.push(ValidationDetail::new(
            vec![LocItem::from("query"), LocItem::from(name)],
            kind,
            msg,
        ));
    }

    fn string(&mut self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    /// An integer in `min..=max`; the default when absent. On failure the default is
    /// returned and the failure recorded.
    fn int(&mut self, name: &str, default: i64, min: i64, max: i64) -> i64 {
        let Some(raw) = self.get(name) else {
            return default;
        };
        match check_int(raw, min, max) {
            Ok(value) => value,
            Err((kind, msg)) => {
                self.fail(name, kind, msg);
                default
            }
        }
    }

    fn strategy(&mut self, name: &str) -> OffsetResetStrategy {
        match self.get(name) {
            None | Some("latest") => OffsetResetStrategy::Latest,
            Some("earliest") => OffsetResetStrategy::Earliest,
            Some(_) => {
                self.fail(
                    name,
                    "enum",
                    "Input should be 'latest' or 'earliest'".into(),
                );
                OffsetResetStrategy::Latest
            }
        }
    }

    fn finish(self) -> Result<(), InstanceError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(InstanceError::Invalid(self.errors))
        }
    }
}

/// Parses an integer as pydantic does (surrounding whitespace allowed, a sign allowed) and
/// checks its bounds. Integers too large for `i64` are still integers: out of bounds.
fn check_int(raw: &str, min: i64, max: i64) -> Result<i64, (&'static str, String)> {
    let text = raw.trim();
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err((
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer".into(),
        ));
    }
    let value = text.parse::<i64>().unwrap_or(if text.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    });
    if value < min {
        Err((
            "greater_than_equal",
            format!("Input should be greater than or equal to {min}"),
        ))
    } else if value > max {
        Err((
            "less_than_equal",
            format!("Input should be less than or equal to {max}"),
        ))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(query: &str) -> Vec<(String, String)> {
        match LongPollQuery::parse(query) {
            Ok(_) => Vec::new(),
            Err(InstanceError::Invalid(d)) => d
                .into_iter()
                .map(|d| (format!("{:?}", d.loc.last().unwrap()), d.kind))
                .collect(),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let q = LongPollQuery::parse("").unwrap();
        assert_eq!(q.max_page_size, 10);
        assert_eq!(q.deadline, Duration::from_secs(30));
        assert_eq!(q.offset_reset_strategy, OffsetResetStrategy::Latest);
        assert_eq!(q.exclude_before, None);
    }

    #[test]
    fn integers_are_bounded_and_parsed_like_pydantic() {
        assert_eq!(check_int(" 7 ", 1, 100), Ok(7));
        assert_eq!(check_int("+7", 1, 100), Ok(7));
        assert_eq!(check_int("0", 1, 100).unwrap_err().0, "greater_than_equal");
        assert_eq!(check_int("101", 1, 100).unwrap_err().0, "less_than_equal");
        assert_eq!(check_int("-1", 0, 900).unwrap_err().0, "greater_than_equal");
        for junk in ["", "abc", "1.5", "1e3", "--1", "+"] {
            assert_eq!(
                check_int(junk, 0, 900).unwrap_err().0,
                "int_parsing",
                "{junk}"
            );
        }
        let huge = "99999999999999999999999";
        assert_eq!(check_int(huge, 0, 900).unwrap_err().0, "less_than_equal");
        let tiny = "-99999999999999999999999";
        assert_eq!(check_int(tiny, 0, 900).unwrap_err().0, "greater_than_equal");
    }

    #[test]
    fn every_bad_parameter_is_reported() {
        let found = details("max_page_size=0&deadline=x&offset_reset_strategy=oldest");
        let kinds: Vec<&str> = found.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(kinds, vec!["greater_than_equal", "enum", "int_parsing"]);
        assert!(details("max_page_size=1&deadline=0&offset_reset_strategy=earliest").is_empty());
        assert!(
            details("max_page_size=0&max_page_size=5").is_empty(),
            "last one wins"
        );
    }
}
