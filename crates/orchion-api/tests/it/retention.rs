//! Retention at the edge: a stream resuming from before the event log's horizon is refused in
//! words (410), on both backends; one from the horizon on gets what is left.

use axum::http::StatusCode;

use crate::common::{App, app, postgres_app, problem};

async fn a_stream_resuming_from_before_the_horizon_is_told_so(app: App) {
    for i in 0..5 {
        app.create(&format!("p{i}")).await;
    }
    let store = app.state.store.clone();
    let last = store.last_event_seq().await.unwrap();
    // Everything so far expired.
    let later = orchion_store::now() + time::Duration::seconds(1);
    assert!(store.delete_events(later, 500).await.unwrap() >= 5);
    assert_eq!(store.events_horizon().await.unwrap(), last);
    assert!(store.events_after(0, 10).await.unwrap().is_empty());

    let reply = app.get("/api/v1/events?after=1").await;
    let detail = problem(&reply, StatusCode::GONE, "gone");
    assert!(
        detail.contains(&format!("events up to {last} were deleted")),
        "{detail}"
    );
    assert!(detail.contains("retention.events"), "{detail}");
    let mut request = axum::http::Request::get("/api/v1/events")
        .header("Last-Event-ID", "0")
        .body(axum::body::Body::empty())
        .unwrap();
    request.headers_mut().insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {}", crate::common::ADMIN_TOKEN)
            .parse()
            .unwrap(),
    );
    let reply = app.send(request).await;
    let detail = problem(&reply, StatusCode::GONE, "gone");
    assert!(detail.contains("Last-Event-ID 0"), "{detail}");
}

#[tokio::test]
async fn a_stream_from_the_horizon_on_is_served() {
    let app = app().await;
    app.create("p").await;
    let store = app.state.store.clone();
    let later = orchion_store::now() + time::Duration::seconds(1);
    store.delete_events(later, 500).await.unwrap();
    let horizon = store.events_horizon().await.unwrap();
    let response = tower::ServiceExt::oneshot(
        app.router.clone(),
        axum::http::Request::get(format!("/api/v1/events?after={horizon}"))
            .header(
                axum::http::header::AUTHORIZATION,
                format!("Bearer {}", crate::common::ADMIN_TOKEN),
            )
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

mod sqlite {
    #[tokio::test]
    async fn a_stream_resuming_from_before_the_horizon_is_told_so() {
        super::a_stream_resuming_from_before_the_horizon_is_told_so(super::app().await).await;
    }
}

mod postgres {
    #[tokio::test]
    async fn a_stream_resuming_from_before_the_horizon_is_told_so() {
        if let Some(app) = super::postgres_app().await {
            super::a_stream_resuming_from_before_the_horizon_is_told_so(app).await;
        }
    }
}
