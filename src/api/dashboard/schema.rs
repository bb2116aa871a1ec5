//! The dashboard face's documents as OpenAPI schemas, for `/openapi.json`. They describe the
//! wire forms that `Registration::to_json`, the webhook handlers and `FieldError` write;
//! the face's own validation lives in `dashboard::registration` and `webhooks::parse`.

#![allow(dead_code)] // Read by utoipa's derive only.

use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::api::openapi::{operation, part};
use crate::dashboard::registration;

/// What a dashboard shows. Unknown keys are refused.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Features {
    temperature: bool,
    precipitation: bool,
    capital: bool,
    coordinates: bool,
    population: bool,
    area: bool,
    /// ISO 4217 codes (any case in, upper case out, without duplicates).
    #[schema(example = json!(["EUR", "USD"]))]
    target_currencies: Vec<String>,
}

/// A registration as sent to POST and PUT. `country` or `isoCode` may be empty, not both;
/// the missing one is filled from the ISO 3166 table.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct RegistrationInput {
    /// English country name.
    #[schema(example = "Norway")]
    country: Option<String>,
    /// ISO 3166 alpha-2 code.
    #[schema(example = "NO")]
    iso_code: Option<String>,
    /// Optional; every feature off when absent.
    features: Option<Features>,
}

/// A stored registration.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Registration {
    id: String,
    country: String,
    #[schema(example = "NO")]
    iso_code: String,
    features: Features,
    /// RFC 3339, when it was created or last changed.
    #[schema(format = DateTime)]
    last_change: String,
}

/// A registration with the time its dashboard was retrieved.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Dashboard {
    id: String,
    country: String,
    iso_code: String,
    features: Features,
    #[schema(format = DateTime)]
    last_change: String,
    /// RFC 3339, now.
    #[schema(format = DateTime)]
    last_retrieval: String,
}

/// The answer to a created registration.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct RegistrationCreated {
    id: String,
    #[schema(format = DateTime)]
    last_change: String,
}

/// A dashboard event.
#[derive(ToSchema)]
pub enum DashboardEvent {
    #[schema(rename = "REGISTER")]
    Register,
    #[schema(rename = "CHANGE")]
    Change,
    #[schema(rename = "DELETE")]
    Delete,
    #[schema(rename = "INVOKE")]
    Invoke,
}

/// A webhook subscription as sent to POST. Keys match case-insensitively (`Url`, `Country`,
/// `Event`); all three are required.
#[derive(ToSchema)]
pub struct WebhookSubscriptionInput {
    /// Absolute http(s) URL; outside `--dev`/`--webhook-allow-private` it must resolve to
    /// public addresses only.
    #[schema(max_length = 2048, example = "https://hooks.example.com/herald")]
    url: String,
    /// Upper-case ISO 3166 alpha-2 code, or empty for every country.
    #[schema(pattern = "^([A-Z]{2})?$", example = "NO")]
    country: String,
    event: DashboardEvent,
}

/// The answer to a created subscription: the only time the secret is shown.
#[derive(ToSchema)]
pub struct WebhookSubscriptionCreated {
    id: String,
    /// Standard Webhooks signing secret: `whsec_` and base64.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    secret: String,
}

/// A webhook subscription.
#[derive(ToSchema)]
pub struct WebhookSubscription {
    id: String,
    url: String,
    country: String,
    event: DashboardEvent,
    /// True once the endpoint answered 410 Gone; it receives nothing more.
    disabled: bool,
}

/// What became of a delivery after an attempt.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Retrying,
    Failed,
    Disabled,
}

/// One delivery attempt.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct WebhookAttempt {
    /// The `webhook-id` header, the same on every attempt of a delivery.
    webhook_id: String,
    /// 1 for a delivery's first attempt.
    attempt: u32,
    event: DashboardEvent,
    country: String,
    #[schema(format = DateTime)]
    time: String,
    /// The endpoint's status, if it answered.
    status: Option<u16>,
    /// Why there was no usable answer.
    error: Option<String>,
    duration_ms: u64,
    outcome: AttemptOutcome,
}

/// `/dashboard/v1/status`.
#[derive(ToSchema)]
pub struct DashboardStatus {
    /// 200 while the webhook dispatcher answers, else 503.
    notification_db: u16,
    /// Webhook subscriptions.
    webhooks: u64,
    #[schema(example = "v1")]
    version: String,
    /// Seconds since start.
    uptime: u64,
}

/// Every error of the face; `field` names the culprit of a 422 when there is one.
#[derive(ToSchema)]
pub struct DashboardErrorBody {
    #[schema(example = "missing field(s): url, event")]
    error: String,
    field: Option<String>,
}

/// What the derives above cannot say: the names and codes accepted (from the same tables the
/// face checks against), that `country` or `isoCode` must be there, that every feature and a
/// PATCH's every field are optional, which keys are refused, and what a webhook URL looks like.
pub fn refine(doc: &mut Value) {
    let (names, codes, currencies) = registration::accepted();
    let schemas = part(doc, "/components/schemas");
    schemas["Features"]["required"] = json!([]);
    schemas["Features"]["additionalProperties"] = json!(false);
    schemas["Features"]["properties"]["targetCurrencies"]["items"] = json!({"enum": currencies});
    schemas["Features"]["description"] = json!(
        "What a dashboard shows: every feature is optional (off when absent), `targetCurrencies` \
         empty when absent. Unknown keys are refused."
    );
    let read_only =
        json!({"description": "Sent back from a GET: accepted and ignored.", "readOnly": true});
    let optional = |values: Vec<Value>| json!({"type": ["string", "null"], "enum": values.into_iter().chain([json!(""), Value::Null]).collect::<Vec<_>>()});
    let names: Vec<Value> = names.into_iter().map(Value::from).collect();
    let codes: Vec<Value> = codes.into_iter().map(Value::from).collect();
    let fields = json!({
        "country": {
            "description": "English ISO 3166 short name, any case; also without its parenthesized part when that is unambiguous (`Bolivia`). Empty, null or absent: filled from `isoCode`; any value when `isoCode` is given, which wins.",
            "type": ["string", "null"],
        },
        "isoCode": {
            "description": "ISO 3166 alpha-2 code, any case. Empty, null or absent: looked up from `country`.",
            "type": ["string", "null"],
        },
        "features": {"$ref": "#/components/schemas/Features"},
        "id": read_only,
        "lastChange": read_only,
        "lastRetrieval": read_only,
    });
    // A code, or a name and no code.
    let named = json!([
        {"required": ["isoCode"], "properties": {"isoCode": {"enum": codes}}},
        {"properties": {"country": {"enum": names}, "isoCode": optional(Vec::new())}, "required": ["country"]},
    ]);
    let cleared = json!({"enum": ["", Value::Null]});
    schemas["RegistrationPatch"] = json!({
        "type": "object",
        "description": "The fields of a registration to change (PATCH): each optional; `features` key by key. A new value for only `country` or only `isoCode` makes the other follow; clearing one keeps the other, clearing both is refused.",
        "additionalProperties": false,
        "properties": fields,
        "anyOf": [
            {"required": ["isoCode"], "properties": {"isoCode": {"enum": codes}}},
            {"properties": {"country": optional(names.clone()), "isoCode": cleared}},
        ],
        "not": {"required": ["country", "isoCode"], "properties": {"country": cleared, "isoCode": cleared}},
    });
    schemas["RegistrationInput"] = json!({
        "type": "object",
        "description": "A registration as sent to POST and PUT: an `isoCode`, or a `country` name without one (the code wins when both are given); the missing one is filled from the ISO 3166 table. Unknown keys are refused.",
        "additionalProperties": false,
        "properties": fields,
        "anyOf": named,
    });
    let patch = operation("/dashboard/v1/registrations/{id}", "patch");
    part(
        doc,
        &format!("{patch}/requestBody/content/application~1json/schema"),
    )["$ref"] = json!("#/components/schemas/RegistrationPatch");
    let webhook = part(doc, "/components/schemas/WebhookSubscriptionInput");
    webhook["additionalProperties"] = json!(false);
    webhook["properties"]["url"]["pattern"] = json!(crate::api::dashboard::webhooks::URL_PATTERN);
    webhook["properties"]["country"] = json!({
        "description": "Upper-case ISO 3166 alpha-2 code, or empty for every country.",
        "enum": codes.into_iter().chain([json!("")]).collect::<Vec<_>>(),
        "example": "NO",
    });
}
