//! Dashboard registrations: the model (plain serde, as a store keeps it), its wire form, and
//! the validation of POST, PUT and PATCH bodies as pure functions.
//!
//! A registration names its country by name, by ISO 3166 alpha-2 code, or both; the missing
//! one is filled from the ISO table so that every registration has the code its events are
//! published under (`country:<ISO>`).

use std::time::SystemTime;

use isocountry::CountryCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Longest accepted country name.
const MAX_COUNTRY_NAME: usize = 200;

/// Keys a client may send back from a GET; they are not its to change, so they are ignored.
const READ_ONLY_KEYS: [&str; 3] = ["id", "lastChange", "lastRetrieval"];

/// The boolean features of a dashboard, by wire name.
const BOOLEAN_FEATURES: [&str; 6] = [
    "temperature",
    "precipitation",
    "capital",
    "coordinates",
    "population",
    "area",
];

/// What a dashboard shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub temperature: bool,
    pub precipitation: bool,
    pub capital: bool,
    pub coordinates: bool,
    pub population: bool,
    pub area: bool,
    /// ISO 4217 codes, upper case, without duplicates.
    pub target_currencies: Vec<String>,
}

impl Features {
    fn flag_mut(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "temperature" => &mut self.temperature,
            "precipitation" => &mut self.precipitation,
            "capital" => &mut self.capital,
            "coordinates" => &mut self.coordinates,
            "population" => &mut self.population,
            "area" => &mut self.area,
            _ => return None,
        })
    }
}

/// The client-controlled part of a registration, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationInput {
    /// Country name, as given or from the ISO table.
    pub country: String,
    /// Upper-case ISO 3166 alpha-2 code.
    pub iso_code: String,
    pub features: Features,
}

/// A stored registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    pub id: String,
    #[serde(flatten)]
    pub input: RegistrationInput,
    /// When it was created or last changed.
    pub last_change: SystemTime,
    /// When its dashboard was last retrieved.
    pub last_retrieval: Option<SystemTime>,
    /// When it was created; registrations are listed in this order, also after a restart.
    pub created: SystemTime,
}

impl Registration {
    /// The wire form: `{"id","country","isoCode","features","lastChange"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "country": self.input.country,
            "isoCode": self.input.iso_code,
            "features": self.input.features,
            "lastChange": rfc3339(self.last_change),
        })
    }
}

/// RFC 3339 in UTC with milliseconds, the form of every time in the dashboard face.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A body field that is not acceptable, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field's path, e.g. `features.targetCurrencies[1]`.
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Validates a POST or PUT body.
pub fn parse(body: &Value) -> Result<RegistrationInput, Invalid> {
    let Value::Object(obj) = body else {
        return Err(invalid("body", "expected a JSON object"));
    };
    let mut country = String::new();
    let mut iso_code = String::new();
    let mut features = Features::default();
    for (key, value) in obj {
        match key.as_str() {
            "country" => country = string(value, "country")?,
            "isoCode" => iso_code = string(value, "isoCode")?,
            "features" => features = parse_features(value)?,
            k if READ_ONLY_KEYS.contains(&k) => {}
            other => return Err(invalid(other, "unknown field")),
        }
    }
    if country.chars().count() > MAX_COUNTRY_NAME {
        return Err(invalid(
            "country",
            format!("must be at most {MAX_COUNTRY_NAME} characters"),
        ));
    }
    let code = match (country.is_empty(), iso_code.is_empty()) {
        (true, true) => return Err(invalid("country", "country or isoCode is required")),
        (_, false) => CountryCode::for_alpha2_caseless(&iso_code)
            .map_err(|_| invalid("isoCode", "must be an ISO 3166 alpha-2 code"))?,
        (false, true) => country_by_name(&country)
            .ok_or_else(|| invalid("country", "unknown country name; give isoCode"))?,
    };
    if country.is_empty() {
        country = code.name().to_string();
    }
    Ok(RegistrationInput {
        country,
        iso_code: code.alpha2().to_string(),
        features,
    })
}

/// Applies a PATCH body to `current` and validates the result. Keys present replace the
/// current ones (`features` key by key); a new value for only one of `country` and `isoCode`
/// makes the other follow it.
pub fn patch(current: &RegistrationInput, body: &Value) -> Result<RegistrationInput, Invalid> {
    let Value::Object(changes) = body else {
        return Err(invalid("body", "expected a JSON object"));
    };
    let mut merged: Map<String, Value> = match serde_json::to_value(current) {
        Ok(Value::Object(obj)) => obj,
        _ => Map::new(),
    };
    // A new non-empty name or code replaces the whole country; clearing one keeps the other.
    let given = |key: &str| {
        changes
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty())
    };
    match (given("country"), given("isoCode")) {
        (true, false) => merged.insert("isoCode".into(), Value::from("")),
        (false, true) => merged.insert("country".into(), Value::from("")),
        _ => None,
    };
    for (key, value) in changes {
        match (key.as_str(), value, merged.get_mut("features")) {
            ("features", Value::Object(fields), Some(Value::Object(existing))) => {
                for (k, v) in fields {
                    existing.insert(k.clone(), v.clone());
                }
            }
            _ => {
                merged.insert(key.clone(), value.clone());
            }
        }
    }
    parse(&Value::Object(merged))
}

fn string(value: &Value, field: &str) -> Result<String, Invalid> {
    match value {
        Value::String(s) => Ok(s.trim().to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(invalid(field, "must be a string")),
    }
}

fn parse_features(value: &Value) -> Result<Features, Invalid> {
    let Value::Object(obj) = value else {
        return Err(invalid("features", "must be an object"));
    };
    let mut features = Features::default();
    for (key, value) in obj {
        let field = format!("features.{key}");
        if key == "targetCurrencies" {
            features.target_currencies = parse_currencies(value, &field)?;
            continue;
        }
        let Some(flag) = features.flag_mut(key) else {
            return Err(invalid(
                field,
                format!(
                    "unknown feature; known: {}, targetCurrencies",
                    BOOLEAN_FEATURES.join(", ")
                ),
            ));
        };
        *flag = value
            .as_bool()
            .ok_or_else(|| invalid(&field, "must be a boolean"))?;
    }
    Ok(features)
}

fn parse_currencies(value: &Value, field: &str) -> Result<Vec<String>, Invalid> {
    let Value::Array(items) = value else {
        return Err(invalid(field, "must be an array of ISO 4217 codes"));
    };
    let mut codes: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let code = item
            .as_str()
            .map(|s| s.trim().to_ascii_uppercase())
            .filter(|s| iso_currency::Currency::from_code(s).is_some())
            .ok_or_else(|| invalid(format!("{field}[{i}]"), "must be an ISO 4217 code"))?;
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    Ok(codes)
}

/// The names and codes this module accepts, for the OpenAPI document: every English ISO 3166
/// short name, every alpha-2 code, every ISO 4217 currency code.
pub fn accepted() -> (Vec<&'static str>, Vec<&'static str>, Vec<String>) {
    let names = CountryCode::iter().map(|c| c.name()).collect();
    let codes = CountryCode::iter().map(|c| c.alpha2()).collect();
    use iso_currency::IntoEnumIterator;
    let currencies = iso_currency::Currency::iter()
        .map(|c| c.code().to_string())
        .collect();
    (names, codes, currencies)
}

/// The country of an English ISO short name, ignoring case; also without a parenthesized
/// qualifier ("Bolivia" for "Bolivia (Plurinational State of)") when that is unambiguous.
fn country_by_name(name: &str) -> Option<CountryCode> {
    let name = name.trim();
    if let Some(code) = CountryCode::iter().find(|c| c.name().eq_ignore_ascii_case(name)) {
        return Some(*code);
    }
    let mut short = CountryCode::iter().filter(|c| {
        c.name()
            .split_once(" (")
            .is_some_and(|(head, _)| head.eq_ignore_ascii_case(name))
    });
    match (short.next(), short.next()) {
        (Some(code), None) => Some(*code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: Value) -> String {
        parse(&body).unwrap_err().field
    }

    #[test]
    fn fills_the_missing_half_of_the_country() {
        let by_code = parse(&json!({"isoCode": "no"})).unwrap();
        assert_eq!(
            (by_code.country.as_str(), by_code.iso_code.as_str()),
            ("Norway", "NO")
        );
        let by_name = parse(&json!({"country": "norway", "isoCode": ""})).unwrap();
        assert_eq!(by_name.iso_code, "NO");
        assert_eq!(by_name.country, "norway", "a given name is kept");
        assert_eq!(
            parse(&json!({"country": "Bolivia"})).unwrap().iso_code,
            "BO"
        );
        assert_eq!(field(json!({"country": "Korea"})), "country", "ambiguous");
        assert_eq!(field(json!({"country": "", "isoCode": ""})), "country");
        assert_eq!(field(json!({"isoCode": "XX"})), "isoCode");
        assert_eq!(field(json!({"country": "Atlantis"})), "country");
        assert_eq!(field(json!({"isoCode": 47})), "isoCode");
    }

    #[test]
    fn validates_features() {
        let body = json!({"isoCode": "NO", "features": {
            "temperature": true, "area": false, "targetCurrencies": ["eur", "USD", "EUR"]}});
        let input = parse(&body).unwrap();
        assert!(input.features.temperature);
        assert_eq!(input.features.target_currencies, ["EUR", "USD"]);
        let f = |features: Value| field(json!({"isoCode": "NO", "features": features}));
        assert_eq!(f(json!({"temperature": "yes"})), "features.temperature");
        assert_eq!(f(json!({"weather": true})), "features.weather");
        assert_eq!(
            f(json!({"targetCurrencies": ["NOK", "XYZ"]})),
            "features.targetCurrencies[1]"
        );
        assert_eq!(
            f(json!({"targetCurrencies": "NOK"})),
            "features.targetCurrencies"
        );
        assert_eq!(f(json!([])), "features");
        assert_eq!(field(json!({"isoCode": "NO", "colour": 1})), "colour");
        assert_eq!(field(json!([1])), "body");
    }

    #[test]
    fn ignores_read_only_keys_sent_back() {
        let body = json!({"id": "x", "isoCode": "SE", "lastChange": "then"});
        assert_eq!(parse(&body).unwrap().iso_code, "SE");
    }

    #[test]
    fn patches_merge_and_keep_the_country_consistent() {
        let current = parse(&json!({"country": "Norway", "isoCode": "NO",
            "features": {"temperature": true, "targetCurrencies": ["EUR"]}}))
        .unwrap();
        let moved = patch(&current, &json!({"isoCode": "SE"})).unwrap();
        assert_eq!(
            (moved.country.as_str(), moved.iso_code.as_str()),
            ("Sweden", "SE")
        );
        let renamed = patch(&current, &json!({"country": "Denmark"})).unwrap();
        assert_eq!(renamed.iso_code, "DK");
        let by_name = patch(&current, &json!({"isoCode": ""})).unwrap();
        assert_eq!(
            (by_name.country.as_str(), by_name.iso_code.as_str()),
            ("Norway", "NO")
        );
        let both = patch(&current, &json!({"country": "", "isoCode": null}));
        assert_eq!(both.unwrap_err().field, "country");
        let flags = patch(&current, &json!({"features": {"area": true}})).unwrap();
        assert!(flags.features.area && flags.features.temperature);
        assert_eq!(flags.features.target_currencies, ["EUR"]);
        assert_eq!(
            patch(&current, &json!({"features": {"area": 1}}))
                .unwrap_err()
                .field,
            "features.area"
        );
        assert_eq!(patch(&current, &json!("x")).unwrap_err().field, "body");
    }
}
