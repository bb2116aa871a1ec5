//! The `/openapi.json` document (OpenAPI 3.1): a base, with each face's part merged in, and
//! `route`, which registers a handler from its OpenAPI declaration so a face's document and
//! its routes cannot drift apart.
//!
//! A face joins the document by deriving `utoipa::OpenApi` for its `ApiDoc` and adding one
//! `merge` line to `document`.

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};
use utoipa::openapi::path::HttpMethod;
use utoipa::openapi::{InfoBuilder, OpenApi, OpenApiBuilder};
use utoipa::OpenApi as _;

use super::instances;

/// The whole document, built on request (it is small and rarely asked for).
pub fn document() -> OpenApi {
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
    doc.merge(super::ops::ApiDoc::openapi());
    doc.merge(super::documents::ApiDoc::openapi());
    doc.merge(super::access::ApiDoc::openapi());
    doc
}

/// Registers `handler` at the path and methods that its `#[utoipa::path]` declares (`P` is
/// the `__path_<handler>` type that the attribute generates).
pub fn route<P, F, Args>(cfg: &mut web::ServiceConfig, handler: F)
where
    P: utoipa::Path,
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
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
        cfg.route(&P::path(), web::method(method).to(handler.clone()));
    }
}
