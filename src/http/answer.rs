//! What a route answers, in one description both paths write: the direct path as bytes on its
//! connection (`write`), actix-web as an `HttpResponse` (`From<Answer>`).

use std::io::Write;

use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::Bytes;

use super::date::with_date;

/// A route's answer.
pub enum Answer {
    /// `application/json` with these other headers: the routes' usual answers, written out
    /// without building an `HttpResponse` (which cost ~10% of a publish).
    Json {
        status: StatusCode,
        headers: &'static [(&'static str, &'static str)],
        body: Bytes,
    },
    /// Any other answer, as the handler gives it.
    Response(HttpResponse),
}

impl From<Answer> for HttpResponse {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Json {
                status,
                headers,
                body,
            } => {
                let mut response = HttpResponse::build(status);
                response.content_type("application/json");
                for header in headers {
                    response.insert_header(*header);
                }
                response.body(body)
            }
            Answer::Response(response) => response,
        }
    }
}

/// Appends `answer`, as actix-http writes a response with a sized body, to `out`; its status
/// and body size.
pub fn write(out: &mut Vec<u8>, answer: Answer) -> (StatusCode, usize) {
    match answer {
        Answer::Json {
            status,
            headers,
            body,
        } => {
            let content_type = ("content-type", "application/json");
            let headers = std::iter::once(&content_type).chain(headers);
            write_parts(out, status, headers.map(|(n, v)| (*n, v.as_bytes())), &body);
            (status, body.len())
        }
        Answer::Response(response) => {
            let (response, body) = response.into_parts();
            let body = body.try_into_bytes().unwrap_or_else(|_| {
                // Every answer of the direct routes is built from bytes.
                log::error!("a direct answer had a streaming body; sent empty");
                Bytes::new()
            });
            let headers = response.headers().iter();
            let headers = headers.map(|(n, v)| (n.as_str(), v.as_bytes()));
            write_parts(out, response.status(), headers, &body);
            (response.status(), body.len())
        }
    }
}

fn write_parts<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    );
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    with_date(|date| out.extend_from_slice(date.as_bytes()));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}
