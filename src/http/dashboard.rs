//! `GET /`: a live dashboard page fed by `/api/events`.

use axum::response::Html;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
