//! The page's files, embedded at compile time and served with their content
//! type and a strong ETag (a hash of the bytes).
//!
//! Every answer says `Cache-Control: no-cache`: the browser keeps its copy
//! but asks each time, and a matching `If-None-Match` gets an empty 304, so
//! a new binary's page is picked up at the next load without stale modules.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::http::ApiError;

/// One embedded file under `/ui/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset { name: $name, content_type: $type, body: include_bytes!(concat!("ui/", $name)) }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("live.js", JS),
    asset!("store.js", JS),
    asset!("overview.js", JS),
    asset!("detail.js", JS),
    asset!("daemon.js", JS),
    asset!("format.js", JS),
    asset!("sparkline.js", JS),
    asset!("diff.js", JS),
];

/// `"<first 128 bits of the SHA-256 of the body, hex>"`, per asset.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body);
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
        .collect()
});

/// The page's scripts and styles come from this origin only, and no other
/// site may frame it (its buttons start and stop children).
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'none'";

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /ui/{file}`: one of the page's files, or 404.
pub async fn file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&file, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no dashboard file {name:?}"))
            .into_response();
    };
    let asset = &ASSETS[i];
    let etag = ETAGS[i].clone();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == "*" || tag.trim().as_bytes() == etag.as_bytes()));
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `GET path` answers, with an optional `If-None-Match`.
    fn get_with(path: &str, if_none_match: Option<&str>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(tag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        }
        serve(path.strip_prefix("/ui/").unwrap_or("index.html"), &headers)
    }

    #[test]
    fn serves_each_file_with_its_type_and_a_strong_etag() {
        for (path, content_type) in [
            ("/", HTML),
            ("/ui/app.js", JS),
            ("/ui/style.css", "text/css; charset=utf-8"),
            ("/ui/favicon.svg", "image/svg+xml"),
        ] {
            let response = get_with(path, None);
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], content_type, "{path}");
            let etag = response.headers()[header::ETAG].to_str().unwrap();
            assert!(etag.starts_with('"') && etag.len() == 34, "{path}: strong etag, got {etag}");
            assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        }
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_an_empty_304() {
        let etag = get_with("/ui/app.js", None).headers()[header::ETAG].to_str().unwrap().to_string();
        let response = get_with("/ui/app.js", Some(&format!("\"other\", {etag}")));
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], etag.as_str());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        assert!(body.is_empty());
        assert_eq!(get_with("/ui/app.js", Some("\"stale\"")).status(), StatusCode::OK);
    }

    #[test]
    fn an_unknown_file_is_a_json_404() {
        let response = get_with("/ui/nope.js", None);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(get_with("/ui/../Cargo.toml", None).status(), StatusCode::NOT_FOUND);
    }

    /// Every `/ui/x` the page links and every `./x.js` a module imports is
    /// embedded: a file added to `ui/` but not to [`ASSETS`] fails here, not
    /// in a browser.
    #[test]
    fn every_referenced_file_is_embedded() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            for prefix in ["\"./", "'./", "\"/ui/", "'/ui/"] {
                for (at, _) in text.match_indices(prefix) {
                    let rest = &text[at + prefix.len()..];
                    let name = &rest[..rest.find(['"', '\'']).unwrap_or(rest.len())];
                    assert!(names.contains(&name), "{} references {name:?}, which is not embedded", asset.name);
                }
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/dashboard/ui");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(names.contains(&name.as_str()), "ui/{name} is not embedded");
        }
    }
}
