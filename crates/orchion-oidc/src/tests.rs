#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::fake::{FakeSettings, router};

/// The fake provider on a loopback port, and a provider for it.
async fn provider(fake: FakeSettings) -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, router(issuer.clone(), fake)).into_future());
    Provider::new(Settings {
        issuer,
        client_id: "orchion".into(),
        client_secret: None,
        redirect_url: "http://127.0.0.1:1/auth/oidc/callback".into(),
        scopes: vec!["openid".into(), "email".into()],
        role_claim: "groups".into(),
        roles: [
            ("orchion-admins".to_owned(), Role::Admin),
            ("developers".to_owned(), Role::Operator),
        ]
        .into(),
    })
    .unwrap()
}

/// Follows the login to the fake's redirect back: the code and state it carries.
async fn authorize(login: &Login) -> (String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = client.get(&login.redirect).send().await.unwrap();
    assert_eq!(answer.status(), 302, "{:?}", answer.text().await);
    let back = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
    let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    (query["code"].clone(), query["state"].clone())
}

async fn sign_in(fake: FakeSettings) -> Result<Identity, OidcError> {
    let provider = provider(fake).await;
    let login = provider.begin().await.unwrap();
    let (code, state) = authorize(&login).await;
    provider.finish(&code, &state, &login.pending).await
}

#[tokio::test]
async fn a_user_signs_in_with_the_strongest_role_a_claim_maps_to() {
    let identity = sign_in(FakeSettings {
        groups: vec!["developers".into(), "orchion-admins".into(), "other".into()],
        ..FakeSettings::default()
    })
    .await
    .unwrap();
    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.role, Role::Admin);
    assert_eq!(identity.display.as_deref(), Some("alice@example.com"));
}

#[tokio::test]
async fn a_token_for_another_audience_or_issuer_or_key_is_refused() {
    for (fake, expected) in [
        (
            FakeSettings {
                audience: Some("someone-else".into()),
                ..FakeSettings::default()
            },
            "Audience",
        ),
        (
            FakeSettings {
                token_issuer: Some("https://evil.example.com".into()),
                ..FakeSettings::default()
            },
            "Issuer",
        ),
        (
            FakeSettings {
                unpublished_key: true,
                ..FakeSettings::default()
            },
            "does not verify",
        ),
    ] {
        let err = sign_in(fake).await.unwrap_err();
        assert!(
            matches!(&err, OidcError::Refused(m) if m.contains(expected)),
            "{expected}: {err}"
        );
    }
}

#[tokio::test]
async fn an_identity_without_a_role_is_refused_naming_the_claim() {
    let err = sign_in(FakeSettings {
        groups: vec!["visitors".into()],
        ..FakeSettings::default()
    })
    .await
    .unwrap_err();
    let OidcError::NoRole(message) = err else {
        panic!("{err}");
    };
    assert!(
        message.contains("alice@example.com") && message.contains("`groups`"),
        "{message}"
    );
}

#[tokio::test]
async fn the_callback_must_carry_this_logins_state_and_a_code_works_once() {
    let provider = provider(FakeSettings::default()).await;
    let login = provider.begin().await.unwrap();
    let (code, state) = authorize(&login).await;
    let forged = provider
        .finish(&code, "another-state", &login.pending)
        .await;
    assert!(matches!(forged, Err(OidcError::Refused(m)) if m.contains("state")));
    // A verifier other than the login's: the provider refuses the code (PKCE).
    let mut stolen = login.pending.clone();
    stolen.verifier = "not-the-verifier".into();
    let err = provider.finish(&code, &state, &stolen).await.unwrap_err();
    assert!(
        matches!(&err, OidcError::Refused(m) if m.contains("invalid_grant")),
        "{err}"
    );
    // The code was spent by that attempt.
    let again = provider.finish(&code, &state, &login.pending).await;
    assert!(matches!(again, Err(OidcError::Refused(_))));
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable_not_refused() {
    let provider = Provider::new(Settings {
        issuer: "http://127.0.0.1:1".into(),
        client_id: "orchion".into(),
        client_secret: None,
        redirect_url: "http://127.0.0.1:2/cb".into(),
        scopes: vec!["openid".into()],
        role_claim: "groups".into(),
        roles: BTreeMap::new(),
    })
    .unwrap();
    assert!(matches!(
        provider.begin().await,
        Err(OidcError::Unavailable(_))
    ));
}
