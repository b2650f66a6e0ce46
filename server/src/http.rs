//! The HTTP routes served beside WebSocket on the same port: the operational
//! endpoints `/healthz` (alive), `/readyz` (store healthy, accepting work) and
//! `/metrics`, and the inspector page at `/` with the JavaScript client it runs on.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use statecast_core::Engine;

/// The inspector and the JavaScript client, built into the binary (no build step).
mod assets {
    pub const INDEX_HTML: &str = include_str!("../../clients/js/inspector/index.html");
    pub const INSPECTOR_JS: &str = include_str!("../../clients/js/inspector/inspector.js");
    pub const INSPECTOR_CSS: &str = include_str!("../../clients/js/inspector/inspector.css");
    pub const STATECAST_JS: &str = include_str!("../../clients/js/packages/client/src/statecast.js");
    pub const REPLICA_JS: &str = include_str!("../../clients/js/packages/client/src/replica.js");
    pub const STATECAST_D_TS: &str = include_str!("../../clients/js/packages/client/src/statecast.d.ts");
    pub const TABS_JS: &str = include_str!("../../clients/js/packages/client/src/tabs.js");
    pub const IDB_JS: &str = include_str!("../../clients/js/packages/client/src/idb.js");
    pub const STORE_JS: &str = include_str!("../../clients/js/packages/client/src/store.js");
}

/// The placeholder in `index.html` that becomes the WebSocket path.
const WS_PATH_PLACEHOLDER: &str = "{{WS_PATH}}";

/// Which of the optional HTTP endpoints a server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpEndpoints {
    /// The inspector page at `/` (and the client modules it loads).
    pub inspector: bool,
    /// `/metrics` (Prometheus text).
    pub metrics: bool,
}

impl Default for HttpEndpoints {
    fn default() -> Self {
        Self { inspector: true, metrics: true }
    }
}

pub fn routes(engine: Engine, ws_path: &str, endpoints: HttpEndpoints) -> Router {
    let ready = engine.clone();
    let router = Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let why = ready.not_ready_reason();
            async move {
                match why {
                    None => (StatusCode::OK, "ready\n".to_owned()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
                }
            }
        }),
    );
    let router = match endpoints.metrics {
        true => router.route(
            "/metrics",
            get(move || {
                let body = engine.render_metrics();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response() }
            }),
        ),
        false => router,
    };
    match endpoints.inspector {
        true => router.merge(inspector_routes(ws_path)),
        false => router,
    }
}

/// The inspector page (`/`) and its assets, with the client modules it imports.
pub fn inspector_routes(ws_path: &str) -> Router {
    let index = index_html(ws_path);
    Router::new()
        .route("/", get(move || std::future::ready(no_cache(Html(index.clone()).into_response()))))
        .route("/inspector.js", get(|| asset("text/javascript; charset=utf-8", assets::INSPECTOR_JS)))
        .route("/inspector.css", get(|| asset("text/css; charset=utf-8", assets::INSPECTOR_CSS)))
        .route("/statecast.js", get(|| module("text/javascript; charset=utf-8", assets::STATECAST_JS)))
        .route("/replica.js", get(|| module("text/javascript; charset=utf-8", assets::REPLICA_JS)))
        .route("/tabs.js", get(|| module("text/javascript; charset=utf-8", assets::TABS_JS)))
        .route("/idb.js", get(|| module("text/javascript; charset=utf-8", assets::IDB_JS)))
        .route("/store.js", get(|| module("text/javascript; charset=utf-8", assets::STORE_JS)))
        .route("/statecast.d.ts", get(|| module("application/typescript; charset=utf-8", assets::STATECAST_D_TS)))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

/// The page, told where the WebSocket listens (escaped for an HTML attribute).
fn index_html(ws_path: &str) -> String {
    let escaped = ws_path.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
    assets::INDEX_HTML.replace(WS_PATH_PLACEHOLDER, &escaped)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    no_cache(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The client modules may be imported by pages of any origin (module scripts need CORS).
async fn module(content_type: &'static str, body: &'static str) -> Response {
    let mut response = asset(content_type, body).await;
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// The assets change with the binary; browsers revalidate instead of keeping an old client.
fn no_cache(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_knows_the_websocket_path() {
        let html = index_html("/sync");
        assert!(html.contains(r#"content="/sync""#), "{html}");
        assert!(!html.contains(WS_PATH_PLACEHOLDER));
        assert!(index_html(r#"/a"b"#).contains(r#"content="/a&quot;b""#));
    }

    #[test]
    fn the_page_loads_the_client_it_is_served_with() {
        assert!(assets::INDEX_HTML.contains("/inspector.js"));
        assert!(assets::INSPECTOR_JS.contains("./statecast.js"));
        assert!(assets::STATECAST_JS.contains("./replica.js"));
    }
}
