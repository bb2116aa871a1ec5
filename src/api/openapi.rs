//! The `/openapi.json` document (OpenAPI 3.1): a base, with each face's part merged in, and
//! `Routes`, through which every face registers its handlers from their OpenAPI declarations,
//! so a face's document and its routes cannot drift apart.
//!
//! A face joins the document by deriving `utoipa::OpenApi` for its `ApiDoc` and adding one
//! `merge` line to `document`. A face's `configure` receives `Routes`, never the app's
//! `ServiceConfig`: the only way to serve a route is `Routes::add`, which takes the route's
//! `#[utoipa::path]` declaration. `api::routes` runs the same registrations into a list, which
//! the integration test compares with the document.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::SecurityScheme;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder};
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa::OpenApi as _;
use utoipa::Path as _;

use super::{access, documents, instances, ops};

/// The whole document, built on request (it is small and rarely asked for): what the faces
/// declare with utoipa, then what each face adds that utoipa's derives cannot say (`refine`).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(declared()).expect("an OpenAPI document serializes");
    documents::schema::refine(&mut doc);
    access::schema::refine(&mut doc);
    super::dashboard::schema::refine(&mut doc);
    ops::refine(&mut doc);
    super::revocations::refine(&mut doc);
    doc
}

/// The part of the document at `pointer` (RFC 6901) that a `refine` changes. The document's
/// shape comes from the code, not from a request: a missing part is a mistake that the
/// OpenAPI tests catch.
pub fn part<'a>(doc: &'a mut serde_json::Value, pointer: &str) -> &'a mut serde_json::Value {
    doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("the OpenAPI document has no {pointer}"))
}

/// The pointer of the operation `method` of `path` (`/events/client`, `get`).
pub fn operation(path: &str, method: &str) -> String {
    format!(
        "/paths/{}/{method}",
        path.replace('~', "~0").replace('/', "~1")
    )
}

/// The operation parameter `name` of the operation at `operation` (a pointer).
pub fn parameter<'a>(
    doc: &'a mut serde_json::Value,
    operation: &str,
    name: &str,
) -> &'a mut serde_json::Value {
    let parameters = part(doc, &format!("{operation}/parameters"));
    parameters
        .as_array_mut()
        .and_then(|all| all.iter_mut().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("{operation} has no parameter {name}"))
}

/// What utoipa's derives declare.
fn declared() -> OpenApi {
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Herald")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(env!("CARGO_PKG_DESCRIPTION")))
                .build(),
        )
        .build();
    doc.merge(instances::ApiDoc::openapi());
    doc.merge(super::dashboard::ApiDoc::openapi());
    doc.merge(documents::ApiDoc::openapi());
    doc.merge(access::ApiDoc::openapi());
    doc.merge(super::revocations::ApiDoc::openapi());
    doc.merge(ops::ApiDoc::openapi());
    add_security_schemes(&mut doc);
    doc
}

/// The credentials shared by several faces. `bearer` (a JWT in `Authorization: Bearer`) and
/// `cookie` come with the instance face.
fn add_security_schemes(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "publisher",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A `--publisher-key` value, or a JWT whose `permissions` include `publish`. \
                     Not needed with `--dev`.",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "access_token",
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "access_token",
            "The JWT as a query parameter, for EventSource, which cannot set headers",
        ))),
    );
}

/// Where the faces put their routes: into the app being built, or into the list that
/// `api::routes` returns. Both come from the same `add` calls.
pub struct Routes<'a> {
    /// The app's configuration when serving; `None` when only listing.
    cfg: Option<&'a mut web::ServiceConfig>,
    /// Every (method, path) added so far, in order.
    added: Vec<(Method, String)>,
    /// When serving, the routes to register by `serve`, grouped by their first path segment,
    /// then by the rest of their path, with their methods.
    served: BTreeMap<String, BTreeMap<String, Vec<(Method, actix_web::Route)>>>,
}

impl<'a> Routes<'a> {
    /// Routes that go into the app.
    pub(super) fn serving(cfg: &'a mut web::ServiceConfig) -> Self {
        Self {
            cfg: Some(cfg),
            added: Vec::new(),
            served: BTreeMap::new(),
        }
    }

    /// Routes that are only listed.
    pub(super) fn listing() -> Self {
        Self {
            cfg: None,
            added: Vec::new(),
            served: BTreeMap::new(),
        }
    }

    /// Every (method, path template) added, in order.
    pub(super) fn into_list(self) -> Vec<(Method, String)> {
        self.added
    }

    /// Puts the routes into the app, one `web::scope` per first path segment (`/events`,
    /// `/notification`, ...). The router tries resources one by one, matching each dynamic
    /// path with a regex; a scope's static prefix is a plain string comparison, so a request
    /// is matched against its own face's paths only. Flat routes cost ~12% of a long-poll's
    /// CPU in a profile.
    pub(super) fn serve(self) {
        let Some(cfg) = self.cfg else {
            return;
        };
        for (prefix, paths) in self.served {
            if prefix == "/" {
                // The demo page: the root gets no scope of its own.
                for (_, routes) in paths {
                    cfg.service(resource("/", "/", routes));
                }
                continue;
            }
            let scope = paths
                .into_iter()
                .fold(web::scope(&prefix), |scope, (rest, routes)| {
                    scope.service(resource(&format!("{prefix}{rest}"), &rest, routes))
                });
            cfg.service(scope);
        }
    }

    /// Registers `handler` at the path and methods that its `#[utoipa::path]` declares (`P` is
    /// the `__path_<handler>` type that the attribute generates, or `Slash<…>` of it).
    pub fn add<P, F, Args>(&mut self, handler: F) -> &mut Self
    where
        P: utoipa::Path,
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let path = P::path();
        for method in P::methods() {
            let method = match method {
                HttpMethod::Get => Method::GET,
                HttpMethod::Post => Method::POST,
                HttpMethod::Put => Method::PUT,
                HttpMethod::Delete => Method::DELETE,
                HttpMethod::Options => Method::OPTIONS,
                HttpMethod::Head => Method::HEAD,
                HttpMethod::Patch => Method::PATCH,
                HttpMethod::Trace => Method::TRACE,
            };
            if self.cfg.is_some() {
                // "/events/client/{clientId}" -> ("/events", "/client/{clientId}").
                let end = path[1..].find('/').map_or(path.len(), |i| i + 1);
                let (prefix, rest) = path.split_at(end);
                self.served
                    .entry(prefix.to_string())
                    .or_default()
                    .entry(rest.to_string())
                    .or_default()
                    .push((
                        method.clone(),
                        web::method(method.clone()).to(handler.clone()),
                    ));
            }
            self.added.push((method, path.clone()));
        }
        self
    }
}

/// One path's routes, and 405 with `Allow` for any other method (instead of the router's 404:
/// the path exists). `full` is the whole path template, for the face's error shape.
fn resource(
    full: &str,
    path: &str,
    routes: Vec<(Method, actix_web::Route)>,
) -> actix_web::Resource {
    let allow = routes
        .iter()
        .map(|(m, _)| m.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let face = full.to_string();
    let resource = routes
        .into_iter()
        .fold(web::resource(path), |resource, (_, route)| {
            resource.route(route)
        });
    resource.default_service(web::to(move || {
        let (allow, face) = (allow.clone(), face.clone());
        async move { super::method_not_allowed(&face, &allow) }
    }))
}

/// The operation `P` declares, served at its path with a trailing slash too. Its operation id
/// gets a `_slash` suffix, as ids are unique in a document.
pub struct Slash<P>(PhantomData<P>);

impl<P: utoipa::Path> utoipa::Path for Slash<P> {
    fn methods() -> Vec<HttpMethod> {
        P::methods()
    }

    fn path() -> String {
        format!("{}/", P::path())
    }

    fn operation() -> Operation {
        let mut operation = P::operation();
        operation.operation_id = operation.operation_id.map(|id| format!("{id}_slash"));
        operation.description = Some(format!(
            "The same as `{}` without the trailing slash.",
            P::path()
        ));
        operation
    }
}

/// Documents `Slash<P>`: copies the operations of `P` that `doc` has (with their tags and
/// security, which `#[openapi]` adds) to `P`'s path with a trailing slash.
pub fn add_slash<P: utoipa::Path>(doc: &mut OpenApi) {
    let template = Slash::<P>::operation();
    for method in P::methods() {
        let Some(operation) = doc.paths.get_path_operation(P::path(), method.clone()) else {
            continue;
        };
        let mut operation = operation.clone();
        operation.operation_id = template.operation_id.clone();
        operation.description = template.description.clone();
        doc.paths
            .add_path_operation(Slash::<P>::path(), vec![method], operation);
    }
}
