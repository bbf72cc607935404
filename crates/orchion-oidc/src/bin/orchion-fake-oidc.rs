//! A fake OpenID Connect provider for tests (see `orchion_oidc::fake`): listens on loopback,
//! prints `fake OIDC issuer listening on http://127.0.0.1:<port>` and serves until killed.
//!
//! Settings come from the environment: `FAKE_OIDC_PORT` (0), `FAKE_OIDC_CLIENT_ID`
//! (`orchion`), `FAKE_OIDC_SUBJECT` (`alice`), `FAKE_OIDC_EMAIL`, `FAKE_OIDC_GROUPS`
//! (comma-separated, `orchion-admins`), and the misbehaviours `FAKE_OIDC_AUDIENCE`,
//! `FAKE_OIDC_TOKEN_ISSUER` and `FAKE_OIDC_UNPUBLISHED_KEY=1`.

use orchion_oidc::fake::{FakeSettings, router};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let defaults = FakeSettings::default();
    let settings = FakeSettings {
        client_id: var("FAKE_OIDC_CLIENT_ID").unwrap_or(defaults.client_id),
        subject: var("FAKE_OIDC_SUBJECT").unwrap_or(defaults.subject),
        email: var("FAKE_OIDC_EMAIL").unwrap_or(defaults.email),
        groups: var("FAKE_OIDC_GROUPS")
            .map(|g| g.split(',').map(str::to_owned).collect())
            .unwrap_or(defaults.groups),
        audience: var("FAKE_OIDC_AUDIENCE"),
        token_issuer: var("FAKE_OIDC_TOKEN_ISSUER"),
        unpublished_key: var("FAKE_OIDC_UNPUBLISHED_KEY").is_some(),
    };
    let port: u16 = var("FAKE_OIDC_PORT")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let issuer = format!("http://{}", listener.local_addr()?);
    println!("fake OIDC issuer listening on {issuer}");
    axum::serve(listener, router(issuer, settings)).await
}
