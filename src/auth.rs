//! Who is connecting: virtual-key JWTs, the master key, and admin JWTs (contract section 5).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// What a credential grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A tenant: every group it joins lives inside this key.
    VirtualKey(VirtualKey),
    /// The master key or an admin JWT.
    Admin { expires_at: Option<u64> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualKey {
    pub id: KeyId,
    /// Unix seconds; the connection is closed then.
    pub expires_at: u64,
    /// The token's own cap on concurrent connections, below the configured one.
    pub max_connections: Option<u32>,
}

impl Principal {
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::VirtualKey(key) => Some(key.expires_at),
            Principal::Admin { expires_at } => *expires_at,
        }
    }

    /// The same party: a transport request must come from whoever negotiated the connection.
    pub fn same_party(&self, other: &Principal) -> bool {
        match (self, other) {
            (Principal::VirtualKey(a), Principal::VirtualKey(b)) => a.id == b.id,
            (Principal::Admin { .. }, Principal::Admin { .. }) => true,
            _ => false,
        }
    }
}

/// A validated virtual key id: 1 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Box<str>);

impl KeyId {
    pub fn parse(id: &str) -> Option<Self> {
        let valid = (1..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| KeyId(id.into()))
    }

    /// A key id as JSON carries it, in a token's `sub` or an event body: a string, or a non-negative
    /// integer meaning the same id as its decimal string (`42` is `"42"`).
    pub fn from_json(value: &serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::String(id) => Self::parse(id),
            serde_json::Value::Number(n) => Self::parse(&n.as_u64()?.to_string()),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("no credentials: send access_token, an Authorization bearer token, X-API-Key or api_key")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

/// The claims a token is read with. `aud` and `iss` are checked by jsonwebtoken (either may be a string or,
/// as RFC 7519 allows for `aud`, an array), so they are not read here.
#[derive(Debug, Deserialize)]
struct Claims {
    /// The virtual key id: a string or a non-negative integer ([`KeyId::from_json`]).
    sub: serde_json::Value,
    kind: String,
    exp: NumericDate,
    /// `nbf` is checked against the clock by jsonwebtoken; both are read here only so that a malformed
    /// one is refused.
    #[serde(default, rename = "nbf")]
    _nbf: Option<NumericDate>,
    #[serde(default, rename = "iat")]
    _iat: Option<NumericDate>,
    #[serde(default)]
    max_connections: Option<u32>,
}

/// The claims `mint_token` writes.
#[derive(Debug, Serialize)]
struct MintedClaims {
    sub: String,
    kind: &'static str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// A NumericDate of RFC 7519: seconds since the epoch, as a non-negative JSON number. Integers up to
/// 2^64 - 1 are taken as they are (`exp` = 2^64 - 1 is "never"); a fraction is rounded down. Negative
/// numbers, numbers beyond 2^64 and anything that is not a number are refused, as jsonwebtoken refuses
/// them in `exp` and `nbf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let refused = |value: &dyn std::fmt::Display| {
            serde::de::Error::custom(format!("{value} is not a NumericDate (non-negative seconds)"))
        };
        let number = serde_json::Number::deserialize(deserializer)?;
        if let Some(seconds) = number.as_u64() {
            return Ok(NumericDate(seconds));
        }
        match number.as_f64() {
            // `u64::MAX as f64` is 2^64 itself: anything from there on does not fit.
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 && seconds < u64::MAX as f64 => {
                Ok(NumericDate(seconds.floor() as u64))
            }
            _ => Err(refused(&number)),
        }
    }
}

/// Tolerated clock skew between the token's issuer and this server, for `exp` and `nbf` alike: none, so a
/// credential whose `exp` has passed is refused, never accepted and closed in the same second (contract 9).
pub const CLOCK_SKEW_SECS: u64 = 0;

/// Checks credentials. Built once from configuration; cheap to share.
pub struct Authenticator {
    decoding_key: DecodingKey,
    validation: Validation,
    /// SHA-256 of the master key: comparing digests in constant time leaks neither the key nor its length.
    master_key_digest: Option<[u8; 32]>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let (decoding_key, algorithms) = match (&config.jwt_public_key_file, &config.jwt_secret) {
            (Some(path), _) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading auth.jwt_public_key_file {}", path.display()))?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, vec![Algorithm::RS256])
                } else {
                    let key = DecodingKey::from_ec_pem(&pem).with_context(|| {
                        format!("{} holds neither an RSA nor an EC public key in PEM", path.display())
                    })?;
                    (key, vec![Algorithm::ES256])
                }
            }
            (None, Some(secret)) => (DecodingKey::from_secret(secret.as_bytes()), vec![Algorithm::HS256]),
            (None, None) => anyhow::bail!("set auth.jwt_secret or auth.jwt_public_key_file"),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = CLOCK_SKEW_SECS;
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present: jsonwebtoken only checks claims a token has.
        // `sub` is required by `Claims` instead: jsonwebtoken would count a numeric `sub` as absent.
        let mut required = vec!["exp"];
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let master_key_digest = config.master_key.as_deref().map(master_key_digest).transpose()?;
        Ok(Self { decoding_key, validation, master_key_digest })
    }

    /// Validates one credential: the master key, or a JWT.
    pub fn authenticate(&self, credential: &str) -> Result<Principal, AuthError> {
        if let Some(expected) = &self.master_key_digest {
            let digest: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
            if bool::from(digest.ct_eq(expected)) {
                return Ok(Principal::Admin { expires_at: None });
            }
        }
        let claims = jsonwebtoken::decode::<Claims>(credential, &self.decoding_key, &self.validation)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::Invalid("token not valid yet (nbf)".into()),
                    ErrorKind::InvalidClaimFormat(claim) => {
                        AuthError::Invalid(format!("{claim} is not a NumericDate (non-negative seconds)"))
                    }
                    _ => AuthError::Invalid(error.to_string()),
                }
            })?
            .claims;
        match claims.kind.as_str() {
            "vkey" => {
                let id = KeyId::from_json(&claims.sub).ok_or_else(|| {
                    AuthError::Invalid(
                        "sub is not a virtual key id (1 to 64 characters of [A-Za-z0-9_-], or a non-negative \
                         integer)"
                            .into(),
                    )
                })?;
                Ok(Principal::VirtualKey(VirtualKey {
                    id,
                    expires_at: claims.exp.0,
                    max_connections: claims.max_connections,
                }))
            }
            "admin" => Ok(Principal::Admin { expires_at: Some(claims.exp.0) }),
            other => Err(AuthError::Invalid(format!("unknown kind {other:?}"))),
        }
    }

    /// Finds and validates the credential of an HTTP request, looking where the contract says, in order.
    pub fn authenticate_request(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Result<Principal, AuthError> {
        self.authenticate(request_credential(query, headers).ok_or(AuthError::Missing)?)
    }
}

/// The first credential present of: query `access_token`, `Authorization: Bearer`, `X-API-Key`, query
/// `api_key`.
pub fn request_credential<'a>(query: &'a HashMap<String, String>, headers: &'a HeaderMap) -> Option<&'a str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    query
        .get("access_token")
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .or_else(|| {
            header("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim))
        })
        .or_else(|| header("x-api-key"))
        .or_else(|| query.get("api_key").map(String::as_str).filter(|v| !v.is_empty()))
}

fn master_key_digest(configured: &str) -> anyhow::Result<[u8; 32]> {
    match configured.strip_prefix("sha256:") {
        Some(hex_digest) => {
            let bytes = hex::decode(hex_digest.trim())
                .map_err(|e| anyhow::anyhow!("auth.master_key sha256: is not hex: {e}"))?;
            bytes.try_into().map_err(|_| anyhow::anyhow!("auth.master_key sha256: must be 64 hex digits"))
        }
        None => Ok(Sha256::digest(configured.as_bytes()).into()),
    }
}

/// Mints an HS256 token, for `hubcast token` and tests. `None` as key id makes an admin token.
pub fn mint_token(
    config: &AuthConfig,
    key_id: Option<&KeyId>,
    ttl: Duration,
    max_connections: Option<u32>,
) -> anyhow::Result<String> {
    let secret = config
        .jwt_secret
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("minting tokens needs auth.jwt_secret (HUBCAST_AUTH__JWT_SECRET)"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = MintedClaims {
        sub: key_id.map_or("admin".to_owned(), |k| k.to_string()),
        kind: if key_id.is_some() { "vkey" } else { "admin" },
        // A lifetime past the end of the clock (`--ttl 1000000000y`) means "never".
        exp: now.saturating_add(ttl.as_secs().max(1)),
        max_connections,
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: Some("unit-test-secret".into()),
            master_key: Some("master".into()),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn virtual_key_tokens_round_trip() {
        let auth = Authenticator::new(&config()).unwrap();
        let key = KeyId::parse("42").unwrap();
        let token = mint_token(&config(), Some(&key), Duration::from_secs(60), Some(3)).unwrap();
        match auth.authenticate(&token).unwrap() {
            Principal::VirtualKey(vk) => {
                assert_eq!(vk.id, key);
                assert_eq!(vk.max_connections, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn master_key_plain_or_as_digest_and_admin_tokens() {
        let auth = Authenticator::new(&config()).unwrap();
        assert_eq!(auth.authenticate("master").unwrap(), Principal::Admin { expires_at: None });
        assert!(auth.authenticate("mastex").is_err());
        let digest = hex::encode(Sha256::digest(b"master"));
        let by_digest =
            Authenticator::new(&AuthConfig { master_key: Some(format!("sha256:{digest}")), ..config() })
                .unwrap();
        assert!(matches!(by_digest.authenticate("master"), Ok(Principal::Admin { .. })));
        let admin = mint_token(&config(), None, Duration::from_secs(60), None).unwrap();
        assert!(matches!(auth.authenticate(&admin), Ok(Principal::Admin { expires_at: Some(_) })));
    }

    #[test]
    fn rejects_bad_signature_expiry_wrong_issuer_and_bad_key_ids() {
        let auth = Authenticator::new(&config()).unwrap();
        let other = AuthConfig { jwt_secret: Some("other".into()), ..config() };
        let key = KeyId::parse("7").unwrap();
        let forged = mint_token(&other, Some(&key), Duration::from_secs(60), None).unwrap();
        assert!(matches!(auth.authenticate(&forged), Err(AuthError::Invalid(_))));

        let expired = jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"sub": "7", "kind": "vkey", "exp": 1_000_000}),
            &EncodingKey::from_secret(b"unit-test-secret"),
        )
        .unwrap();
        assert_eq!(auth.authenticate(&expired), Err(AuthError::Expired));

        let with_issuer =
            Authenticator::new(&AuthConfig { issuer: Some("conduit".into()), ..config() }).unwrap();
        let token = mint_token(&config(), Some(&key), Duration::from_secs(60), None).unwrap();
        assert!(with_issuer.authenticate(&token).is_err(), "issuer is required once configured");

        let bad_sub = jsonwebtoken::encode(
            &Header::default(),
            &serde_json::json!({"sub": "a/b", "kind": "vkey", "exp": u64::MAX / 2}),
            &EncodingKey::from_secret(b"unit-test-secret"),
        )
        .unwrap();
        assert!(auth.authenticate(&bad_sub).is_err());
        assert!(auth.authenticate("not a token").is_err());
    }

    #[test]
    fn credential_sources_in_contract_order() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer from-header".parse().unwrap());
        headers.insert("x-api-key", "from-api-key".parse().unwrap());
        let mut query = HashMap::new();
        query.insert("api_key".to_owned(), "from-api-key-query".to_owned());
        assert_eq!(request_credential(&query, &headers), Some("from-header"));
        query.insert("access_token".to_owned(), "from-query".to_owned());
        assert_eq!(request_credential(&query, &headers), Some("from-query"));
        headers.remove("authorization");
        query.remove("access_token");
        assert_eq!(request_credential(&query, &headers), Some("from-api-key"));
        headers.remove("x-api-key");
        assert_eq!(request_credential(&query, &headers), Some("from-api-key-query"));
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    /// A token with exactly these claims, signed with the test secret (HS256).
    fn signed(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"unit-test-secret"))
            .unwrap()
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let auth = Authenticator::new(&config()).unwrap();
        let exp = now() + 600;
        let future = signed(serde_json::json!({"sub": "7", "kind": "vkey", "exp": exp, "nbf": now() + 3600}));
        assert_eq!(auth.authenticate(&future), Err(AuthError::Invalid("token not valid yet (nbf)".into())));
        let far_future = signed(serde_json::json!({"sub": "7", "kind": "vkey", "exp": exp, "nbf": u64::MAX}));
        assert!(matches!(auth.authenticate(&far_future), Err(AuthError::Invalid(_))));
        // Now, or before, is valid.
        for nbf in [now() - 60, now()] {
            let token = signed(serde_json::json!({"sub": "7", "kind": "vkey", "exp": exp, "nbf": nbf}));
            assert!(auth.authenticate(&token).is_ok(), "nbf {nbf}");
        }
    }

    #[test]
    fn a_numeric_sub_is_the_same_key_as_its_string() {
        let auth = Authenticator::new(&config()).unwrap();
        let exp = now() + 600;
        for sub in [serde_json::json!(42), serde_json::json!("42")] {
            let token = signed(serde_json::json!({"sub": sub, "kind": "vkey", "exp": exp}));
            match auth.authenticate(&token) {
                Ok(Principal::VirtualKey(key)) => assert_eq!(key.id, KeyId::parse("42").unwrap()),
                other => panic!("sub {sub}: {other:?}"),
            }
        }
        let big = signed(serde_json::json!({"sub": u64::MAX, "kind": "vkey", "exp": exp}));
        assert!(
            matches!(auth.authenticate(&big), Ok(Principal::VirtualKey(key)) if key.id.as_str() == "18446744073709551615")
        );
        for sub in [
            serde_json::json!(-42),
            serde_json::json!(42.5),
            serde_json::json!(4.2e1),
            serde_json::json!(null),
            serde_json::json!([42]),
        ] {
            let token = signed(serde_json::json!({"sub": sub, "kind": "vkey", "exp": exp}));
            assert!(matches!(auth.authenticate(&token), Err(AuthError::Invalid(_))), "sub {sub}");
        }
        let no_sub = signed(serde_json::json!({"kind": "vkey", "exp": exp}));
        assert!(matches!(auth.authenticate(&no_sub), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn aud_may_be_a_string_or_an_array_holding_the_audience() {
        let with_audience = AuthConfig { audience: Some("conduit-realtime".into()), ..config() };
        let auth = Authenticator::new(&with_audience).unwrap();
        let exp = now() + 600;
        let token = |aud: serde_json::Value| {
            signed(serde_json::json!({"sub": "7", "kind": "vkey", "exp": exp, "aud": aud}))
        };
        assert!(auth.authenticate(&token(serde_json::json!("conduit-realtime"))).is_ok());
        assert!(auth.authenticate(&token(serde_json::json!(["other", "conduit-realtime"]))).is_ok());
        assert!(auth.authenticate(&token(serde_json::json!(["other"]))).is_err());
        assert!(auth.authenticate(&token(serde_json::json!([]))).is_err());
        assert!(auth.authenticate(&token(serde_json::json!("other"))).is_err());
        let without = signed(serde_json::json!({"sub": "7", "kind": "vkey", "exp": exp}));
        assert!(auth.authenticate(&without).is_err(), "a configured audience is required");
        // Minted tokens carry it.
        let minted =
            mint_token(&with_audience, Some(&KeyId::parse("7").unwrap()), Duration::from_secs(60), None);
        assert!(auth.authenticate(&minted.unwrap()).is_ok());
    }

    /// exp, nbf and iat are NumericDates: huge, negative, fractional or mistyped values never panic.
    /// `exp` = 2^64 - 1 is the far future; what is not a NumericDate is refused.
    #[test]
    fn extreme_numeric_dates_are_refused_or_accepted_without_panicking() {
        let auth = Authenticator::new(&config()).unwrap();
        let with = |claim: &str, value: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "7", "kind": "vkey", "exp": now() + 600});
            claims[claim] = value;
            auth.authenticate(&signed(claims))
        };
        match with("exp", serde_json::json!(u64::MAX)) {
            Ok(Principal::VirtualKey(key)) => assert_eq!(key.expires_at, u64::MAX),
            other => panic!("{other:?}"),
        }
        let admin = signed(serde_json::json!({"sub": "admin", "kind": "admin", "exp": u64::MAX}));
        assert_eq!(auth.authenticate(&admin), Ok(Principal::Admin { expires_at: Some(u64::MAX) }));
        let fractional = now() as f64 + 600.75;
        match with("exp", serde_json::json!(fractional)) {
            Ok(Principal::VirtualKey(key)) => assert_eq!(key.expires_at, fractional.floor() as u64),
            other => panic!("{other:?}"),
        }
        for exp in [
            serde_json::json!(-1),
            serde_json::json!(i64::MIN),
            serde_json::json!(1e20),
            serde_json::json!(f64::MAX),
            serde_json::json!(-0.5),
            serde_json::json!("4102444800"),
            serde_json::json!(null),
            serde_json::json!(true),
        ] {
            assert!(matches!(with("exp", exp.clone()), Err(AuthError::Invalid(_))), "exp {exp}");
        }
        for claim in ["nbf", "iat"] {
            for bad in [
                serde_json::json!(-1),
                serde_json::json!(1e20),
                serde_json::json!("yesterday"),
                serde_json::json!({}),
            ] {
                assert!(matches!(with(claim, bad.clone()), Err(AuthError::Invalid(_))), "{claim} {bad}");
            }
            assert!(with(claim, serde_json::json!(now() as f64 - 10.5)).is_ok(), "{claim} fractional");
            assert!(with(claim, serde_json::json!(0)).is_ok(), "{claim} 0");
        }
        assert!(with("iat", serde_json::json!(u64::MAX)).is_ok(), "iat is not checked against the clock");
        assert!(matches!(with("max_connections", serde_json::json!(u64::MAX)), Err(AuthError::Invalid(_))));
        assert!(matches!(with("max_connections", serde_json::json!(-1)), Err(AuthError::Invalid(_))));
    }

    /// `hubcast token --ttl` takes any duration: one past the end of the clock means "never", not a panic.
    #[test]
    fn minting_with_an_endless_ttl_saturates() {
        let auth = Authenticator::new(&config()).unwrap();
        let key = KeyId::parse("7").unwrap();
        let token = mint_token(&config(), Some(&key), Duration::MAX, None).unwrap();
        match auth.authenticate(&token) {
            Ok(Principal::VirtualKey(vk)) => assert_eq!(vk.expires_at, u64::MAX),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_ids_follow_the_contract_rule() {
        assert!(KeyId::parse("abc_DEF-123").is_some());
        assert!(KeyId::parse("").is_none());
        assert!(KeyId::parse(&"a".repeat(65)).is_none());
        assert!(KeyId::parse("a.b").is_none());
        assert_eq!(KeyId::from_json(&serde_json::json!(42)), KeyId::parse("42"));
        assert_eq!(KeyId::from_json(&serde_json::json!("abc")), KeyId::parse("abc"));
        assert_eq!(KeyId::from_json(&serde_json::json!(-42)), None);
        assert_eq!(KeyId::from_json(&serde_json::json!(42.0)), None);
    }
}
