//! The dashboard face's documents as OpenAPI schemas, for `/openapi.json`. They describe the
//! wire forms that `Registration::to_json`, the webhook handlers and `DashboardError` write;
//! the face's own validation lives in `dashboard::registration` and `webhooks::parse`.

#![allow(dead_code)] // Read by utoipa's derive only.

use utoipa::ToSchema;

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
