//! The status handler: an HTTP API request in, the status API's answer out. No business rules
//! here; API Gateway has already authorized the caller (IAM).

use gateway_core::status::{Caller, HttpRequest, Reply, StatusApi};
use lambda_http::RequestExt;
use lambda_http::http::{StatusCode, header};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Error, Request, Response};

/// Serves one request. The path is the request's raw path (the HTTP API's `$default` stage
/// adds no prefix); the raw query string goes with it, still percent-encoded, for
/// `GET /api/messages?…` (the status API decodes it). The caller of a lever action is the IAM
/// principal API Gateway authenticated (`requestContext.authorizer.iam.userArn`).
pub async fn handle(request: Request, api: &StatusApi) -> Result<Response<Body>, Error> {
    let caller = caller(&request);
    let Reply {
        status,
        content_type,
        body,
    } = api
        .serve(HttpRequest {
            method: request.method().as_str(),
            path: request.uri().path(),
            query: request.uri().query(),
            body: request.body().as_ref(),
            caller: &caller,
        })
        .await;
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        // Live figures: never cached by a browser or a proxy.
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::Text(body))?)
}

/// The IAM principal of a request signed for the HTTP API's IAM authorizer; anonymous without
/// one (a route without IAM authorization cannot change a lever).
pub fn caller(request: &Request) -> Caller {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.iam.as_ref())
            .and_then(|iam| iam.user_arn.clone())
            .filter(|arn| !arn.is_empty())
            .map_or(Caller::Anonymous, Caller::Iam),
        _ => Caller::Anonymous,
    }
}
