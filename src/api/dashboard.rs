//! `GET /`: the operator dashboard, one static page built into the binary (no build step, no
//! network): live figures from `/metrics/actors`, a chart, and the dead set with retry buttons
//! that call the admin endpoints with a token the operator types in.
//!
//! Its script and styles are files of their own (`/dashboard.js`, `/dashboard.css`), not inline:
//! the content security policy (`super::edge`) lets the page run only what this origin serves.

use actix_web::HttpResponse;

const DASHBOARD: &str = include_str!("dashboard.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLES: &str = include_str!("dashboard.css");

pub async fn show_dashboard() -> HttpResponse {
    dashboard_file(DASHBOARD, "text/html; charset=utf-8")
}

pub async fn dashboard_script() -> HttpResponse {
    dashboard_file(SCRIPT, "text/javascript; charset=utf-8")
}

pub async fn dashboard_styles() -> HttpResponse {
    dashboard_file(STYLES, "text/css; charset=utf-8")
}

/// `no-cache`: the browser checks again on each load, so a page and its script never come from
/// two different versions of the service.
fn dashboard_file(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}
