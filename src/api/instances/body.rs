//! The instance face's JSON documents: `NotificationCreate` (validated field by field into
//! FastAPI-shaped 422 details, then stored as the event's data), `Notification` and the page
//! as they go out. Notifications are rendered once per event (`notification`, kept by the
//! event); a page splices those rendered bytes together.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

use super::error::{InstanceError, LocItem, ValidationDetail};
use crate::event::{Event, Form};

/// Longest `message`, in characters.
pub const MESSAGE_MAX: usize = 4096;
/// Longest `rh_url` and `custom_data` value, in characters.
pub const TEXT_MAX: usize = 4096;
/// Notifications accepted in one create call: bounds one publish batch.
pub const CREATE_MAX: usize = 100;

/// A notification to create; stored as given (unknown fields dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotificationCreate {
    /// Base Message for the notification
    #[schema(max_length = 4096)]
    pub message: String,
    /// Path to get additional data about this notification
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 4096)]
    pub rh_url: Option<String>,
    /// Custom values for the notification
    #[serde(default)]
    #[schema(schema_with = custom_data_schema)]
    pub custom_data: BTreeMap<String, String>,
    /// ETag for the resource at rh_url at the time of this notification
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1)]
    pub etag: Option<String>,
}

/// A stored notification, as every read returns it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Base Message for the notification
    #[schema(max_length = 4096)]
    pub message: String,
    /// Path to get additional data about this notification
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096, nullable = false)]
    pub rh_url: Option<String>,
    /// Custom values for the notification
    #[schema(schema_with = custom_data_schema)]
    pub custom_data: BTreeMap<String, String>,
    /// ETag for the resource at rh_url at the time of this notification
    #[serde(default)]
    #[schema(min_length = 1, nullable = false)]
    pub etag: Option<String>,
    /// Unique Identifier for the notification. You cannot depend on the format of this
    /// string, and it must be considered opaque
    pub notification_id: String,
    /// When this notification was added (RFC 3339, UTC)
    #[schema(format = DateTime)]
    pub created: String,
}

/// Body of `POST .../notification`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct NotificationsCreate {
    /// The notifications to create, in order.
    #[schema(min_items = 1, max_items = 100)]
    pub notifications: Vec<NotificationCreate>,
}

/// Answer of `POST .../notification`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NotificationCreated {
    /// The id of the last notification created.
    pub notification_id: String,
}

/// A page of notifications: long-poll (older to newer) and paging (newer to older).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationsPage {
    /// List of notifications
    pub notifications: Vec<Notification>,
    /// Cursor to use for the next request
    pub cursor: String,
}

/// `custom_data`: string keys, string values of 1..4096 characters.
fn custom_data_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(TEXT_MAX)),
        ))
        .description(Some("Custom values for the notification"))
}

/// The event as a `Notification`: its data's fields plus `notification_id` and `created`
/// (RFC 3339, microseconds), rendered the first time any client asks and kept by the event.
pub fn notification(event: &Event) -> Bytes {
    event.rendered(Form::Notification, |event| {
        let mut fields: Map<String, Value> =
            serde_json::from_str(event.data.get()).unwrap_or_default();
        fields.insert("notification_id".into(), event.cursor.clone().into());
        let created = humantime::format_rfc3339_micros(event.created).to_string();
        fields.insert("created".into(), created.into());
        Bytes::from(serde_json::to_vec(&fields).expect("a JSON map serializes"))
    })
}

/// `{"notifications": [...], "cursor": "..."}` from notifications rendered once each.
pub fn page_body<'a>(events: impl IntoIterator<Item = &'a Arc<Event>>, cursor: &str) -> Bytes {
    let mut body = BytesMut::from(&b"{\"notifications\":["[..]);
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b",");
        }
        body.extend_from_slice(&notification(event));
    }
    body.extend_from_slice(b"],\"cursor\":");
    let cursor = serde_json::to_vec(cursor).expect("a string serializes");
    body.extend_from_slice(&cursor);
    body.extend_from_slice(b"}");
    body.freeze()
}

/// Validates a create body into one stored JSON document per notification, reporting every
/// failure the way FastAPI would.
pub fn parse_create(body: &[u8]) -> Result<Vec<Box<RawValue>>, InstanceError> {
    let root = || LocItem::from("body");
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(InstanceError::invalid(
            vec![root()],
            "missing",
            "Field required",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        InstanceError::invalid(
            vec![root(), LocItem::from(byte_offset(body, &e))],
            "json_invalid",
            format!("JSON decode error: {e}"),
        )
    })?;
    let Value::Object(mut fields) = value else {
        return Err(not_an_object(vec![root()]));
    };
    let at = vec![root(), LocItem::from("notifications")];
    let items = match fields.remove("notifications") {
        None => return Err(InstanceError::invalid(at, "missing", "Field required")),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(InstanceError::invalid(
                at,
                "list_type",
                "Input should be a valid list",
            ))
        }
    };
    if items.is_empty() {
        return Err(InstanceError::invalid(
            at,
            "too_short",
            "List should have at least 1 item after validation, not 0",
        ));
    }
    if items.len() > CREATE_MAX {
        return Err(InstanceError::invalid(
            at,
            "too_long",
            format!(
                "List should have at most {CREATE_MAX} items after validation, not {}",
                items.len()
            ),
        ));
    }
    let mut errors = Vec::new();
    let mut created = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let mut loc = at.clone();
        loc.push(LocItem::from(i));
        if let Some(notification) = parse_one(item, &loc, &mut errors) {
            created.push(notification);
        }
    }
    if !errors.is_empty() {
        return Err(InstanceError::Invalid(errors));
    }
    Ok(created
        .iter()
        .map(|n| serde_json::value::to_raw_value(n).expect("a notification serializes"))
        .collect())
}

fn not_an_object(loc: Vec<LocItem>) -> InstanceError {
    InstanceError::invalid(
        loc,
        "model_attributes_type",
        "Input should be a valid dictionary or object to extract fields from",
    )
}

/// One `NotificationCreate`, or `None` with its failures added to `errors`.
fn parse_one(
    item: Value,
    loc: &[LocItem],
    errors: &mut Vec<ValidationDetail>,
) -> Option<NotificationCreate> {
    let Value::Object(mut fields) = item else {
        if let InstanceError::Invalid(mut e) = not_an_object(loc.to_vec()) {
            errors.append(&mut e);
        }
        return None;
    };
    let before = errors.len();
    let mut field = |name: &str| (fields.remove(name), with(loc, name));
    let message = match field("message") {
        (None, at) => {
            errors.push(ValidationDetail::new(at, "missing", "Field required"));
            None
        }
        (Some(v), at) => text(v, at, 0, MESSAGE_MAX, errors),
    };
    let rh_url = match field("rh_url") {
        (None | Some(Value::Null), _) => None,
        (Some(v), at) => text(v, at, 1, TEXT_MAX, errors),
    };
    let custom_data = match field("custom_data") {
        (None, _) => Some(BTreeMap::new()),
        (Some(Value::Object(map)), at) => custom_data(map, &at, errors),
        (Some(_), at) => {
            errors.push(ValidationDetail::new(
                at,
                "dict_type",
                "Input should be a valid dictionary",
            ));
            None
        }
    };
    let etag = match field("etag") {
        (None | Some(Value::Null), _) => None,
        (Some(v), at) => text(v, at, 1, usize::MAX, errors),
    };
    if errors.len() > before {
        return None;
    }
    Some(NotificationCreate {
        message: message?,
        rh_url,
        custom_data: custom_data?,
        etag,
    })
}

fn custom_data(
    map: Map<String, Value>,
    loc: &[LocItem],
    errors: &mut Vec<ValidationDetail>,
) -> Option<BTreeMap<String, String>> {
    let before = errors.len();
    let mut data = BTreeMap::new();
    for (key, value) in map {
        let at = with(loc, &key);
        if let Some(value) = text(value, at, 1, TEXT_MAX, errors) {
            data.insert(key, value);
        }
    }
    (errors.len() == before).then_some(data)
}

/// A string of `min..=max` characters (Unicode scalar values, as Python counts them).
fn text(
    value: Value,
    at: Vec<LocItem>,
    min: usize,
    max: usize,
    errors: &mut Vec<ValidationDetail>,
) -> Option<String> {
    let Value::String(s) = value else {
        errors.push(ValidationDetail::new(
            at,
            "string_type",
            "Input should be a valid string",
        ));
        return None;
    };
    let len = s.chars().count();
    if len < min {
        let unit = if min == 1 { "character" } else { "characters" };
        errors.push(ValidationDetail::new(
            at,
            "string_too_short",
            format!("String should have at least {min} {unit}"),
        ));
        None
    } else if len > max {
        errors.push(ValidationDetail::new(
            at,
            "string_too_long",
            format!("String should have at most {max} characters"),
        ));
        None
    } else {
        Some(s)
    }
}

fn with(loc: &[LocItem], name: &str) -> Vec<LocItem> {
    let mut loc = loc.to_vec();
    loc.push(LocItem::from(name));
    loc
}

/// The byte offset of a JSON syntax error, which is what FastAPI puts in the `loc`.
fn byte_offset(body: &[u8], e: &serde_json::Error) -> usize {
    let line_start: usize = body
        .split(|b| *b == b'\n')
        .take(e.line().saturating_sub(1))
        .map(|line| line.len() + 1)
        .sum();
    (line_start + e.column().saturating_sub(1)).min(body.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Position, StreamKey, StreamKind};
    use std::time::{Duration, SystemTime};

    #[test]
    fn notification_adds_id_and_creation_time() {
        let data = RawValue::from_string(r#"{"message":"hi"}"#.into()).unwrap();
        let position = Position { epoch: 1, seq: 2 };
        let created = SystemTime::UNIX_EPOCH + Duration::from_micros(1_500_000);
        let stream = StreamKey::new(StreamKind::Instance, "i");
        let event = Event::new(stream, position, created, data);
        let json: Value = serde_json::from_slice(&notification(&event)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "message": "hi",
                "notification_id": event.cursor,
                "created": "1970-01-01T00:00:01.500000Z",
            })
        );
    }

    fn kinds(body: &str) -> Vec<(Vec<LocItem>, String)> {
        match parse_create(body.as_bytes()) {
            Ok(_) => Vec::new(),
            Err(InstanceError::Invalid(d)) => d.into_iter().map(|d| (d.loc, d.kind)).collect(),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn loc(items: &[&str]) -> Vec<LocItem> {
        items
            .iter()
            .map(|s| match s.parse::<usize>() {
                Ok(i) => LocItem::Index(i),
                Err(_) => LocItem::from(*s),
            })
            .collect()
    }

    #[test]
    fn accepts_and_normalizes() {
        let docs = parse_create(
            br#"{"notifications":[{"message":"","extra":1},{"message":"m","rh_url":"/x","custom_data":{"k":"v"},"etag":"e"}]}"#,
        )
        .unwrap();
        assert_eq!(docs[0].get(), r#"{"message":"","custom_data":{}}"#);
        assert_eq!(
            docs[1].get(),
            r#"{"message":"m","rh_url":"/x","custom_data":{"k":"v"},"etag":"e"}"#
        );
    }

    #[test]
    fn reports_every_field_with_its_location() {
        let long = "x".repeat(4097);
        let body = format!(
            r#"{{"notifications":[{{"message":"{long}","rh_url":"","custom_data":{{"a":""}},"etag":""}},{{}},3]}}"#
        );
        let n = |i: &str, f: &str| loc(&["body", "notifications", i, f]);
        assert_eq!(
            kinds(&body),
            vec![
                (n("0", "message"), "string_too_long".into()),
                (n("0", "rh_url"), "string_too_short".into()),
                (
                    loc(&["body", "notifications", "0", "custom_data", "a"]),
                    "string_too_short".into()
                ),
                (n("0", "etag"), "string_too_short".into()),
                (n("1", "message"), "missing".into()),
                (
                    loc(&["body", "notifications", "2"]),
                    "model_attributes_type".into()
                ),
            ]
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        let at_max = "é".repeat(4096);
        let body = format!(
            r#"{{"notifications":[{{"message":"{at_max}","rh_url":"{at_max}","custom_data":{{"k":"{at_max}"}},"etag":"e"}}]}}"#
        );
        assert!(kinds(&body).is_empty());
    }

    #[test]
    fn list_and_body_shape() {
        let list = |n: usize| {
            let items = vec![r#"{"message":"m"}"#; n].join(",");
            format!(r#"{{"notifications":[{items}]}}"#)
        };
        assert!(kinds(&list(1)).is_empty());
        assert!(kinds(&list(100)).is_empty());
        assert_eq!(kinds(&list(0))[0].1, "too_short");
        assert_eq!(kinds(&list(101))[0].1, "too_long");
        assert_eq!(
            kinds("{}")[0],
            (loc(&["body", "notifications"]), "missing".into())
        );
        assert_eq!(kinds("")[0], (loc(&["body"]), "missing".into()));
        assert_eq!(kinds("[]")[0].1, "model_attributes_type");
        assert_eq!(kinds(r#"{"notifications":{}}"#)[0].1, "list_type");
        assert_eq!(
            kinds("{\n\"a\" 1}")[0],
            (loc(&["body", "6"]), "json_invalid".into())
        );
        let typed = kinds(r#"{"notifications":[{"message":1,"custom_data":[]}]}"#);
        let typed: Vec<&str> = typed.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(typed, vec!["string_type", "dict_type"]);
    }

    #[test]
    fn rendered_notifications_have_the_documented_shape() {
        let data = parse_create(br#"{"notifications":[{"message":"m","rh_url":"/u"}]}"#)
            .unwrap()
            .remove(0);
        let event = Arc::new(Event::new(
            StreamKey::new(StreamKind::Instance, "i"),
            Position { epoch: 3, seq: 4 },
            SystemTime::now(),
            data,
        ));
        let page: NotificationsPage =
            serde_json::from_slice(&page_body([&event, &event], "c")).unwrap();
        assert_eq!(page.cursor, "c");
        assert_eq!(page.notifications.len(), 2);
        let n = &page.notifications[0];
        assert_eq!(n.notification_id, event.cursor);
        assert_eq!(n.rh_url.as_deref(), Some("/u"));
        assert!(humantime::parse_rfc3339(&n.created).is_ok());
    }
}
