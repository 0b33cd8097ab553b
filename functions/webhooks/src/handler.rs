//! The webhooks handler: an HTTP API request in, the edge's answer out. No business rules here.

use gateway_core::webhooks::edge::{Answer, Edge};
use lambda_http::http::{Method, StatusCode, header};
use lambda_http::{Body, Error, Request, Response};

fn json(status: u16, body: &serde_json::Value) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(body.to_string()))?)
}

/// Serves one request: `POST /webhooks/{provider}`. The body is the raw bytes (lambda_http has
/// already decoded it when API Gateway sent it base64-encoded); nothing parses it before the
/// edge has checked its signature.
pub async fn handle(request: Request, edge: &Edge) -> Result<Response<Body>, Error> {
    let path = request.uri().path().trim_end_matches('/');
    let Some(provider) = path
        .rsplit_once("/webhooks/")
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && !p.contains('/'))
    else {
        return json(
            404,
            &serde_json::json!({"error": {"code": "not_found",
                "message": "served: POST /webhooks/mailgun, /webhooks/sendgrid, /webhooks/ses"}}),
        );
    };
    if request.method() != Method::POST {
        return json(
            405,
            &serde_json::json!({"error": {"code": "method_not_allowed", "message": "use POST"}}),
        );
    }
    let headers = request.headers().clone();
    let lookup = move |name: &str| -> Option<String> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body: &[u8] = request.body().as_ref();
    let Answer { status, body } = edge.handle(provider, &lookup, body).await;
    json(status, &body)
}
