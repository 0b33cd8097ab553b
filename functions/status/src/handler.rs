//! The status handler: an HTTP API request in, the status API's answer out. No business rules
//! here; API Gateway has already authorized the caller (IAM).

use gateway_core::status::{Reply, StatusApi};
use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Error, Request, Response};

/// Serves one request. The path is the request's raw path (the HTTP API's `$default` stage
/// adds no prefix); the raw query string goes with it, still percent-encoded, for
/// `GET /api/messages?…` (the status API decodes it).
pub async fn handle(request: Request, api: &StatusApi) -> Result<Response<Body>, Error> {
    let Reply {
        status,
        content_type,
        body,
    } = api
        .handle_request(
            request.method().as_str(),
            request.uri().path(),
            request.uri().query(),
        )
        .await;
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        // Live figures: never cached by a browser or a proxy.
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Text(body))?)
}
