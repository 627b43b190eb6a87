//! `GET /`: the operator dashboard, one static page built into the binary (no build step, no
//! network): live figures from `/metrics/actors`, a chart, and the dead set with retry buttons
//! that call the admin endpoints with a token the operator types in.

use actix_web::HttpResponse;

const DASHBOARD: &str = include_str!("dashboard.html");

pub async fn show_dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DASHBOARD)
}
