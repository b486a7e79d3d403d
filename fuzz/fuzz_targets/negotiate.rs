//! What negotiate and every transport request read from the request before anything else: the query string
//! (`transport::parse_query`) and the credential (`auth::request_credential`, then
//! `Authenticator::authenticate_request` with a fixed JWT secret and master key).
//!
//! Input: up to three lines: the query string, the `Authorization` header and the `X-API-Key` header. A
//! header is sent only when its line is there and is a valid header value; like the HTTP parser, leading
//! and trailing spaces and tabs are trimmed from it. Seeds carry tokens signed with [`SECRET`].
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue};
use hubcast::auth::{request_credential, AuthError, Authenticator, KeyId, Principal};
use hubcast::config::AuthConfig;
use hubcast::transport::parse_query;
use libfuzzer_sys::fuzz_target;

/// The JWT secret of the fuzzed authenticator; the seed tokens are signed with it.
const SECRET: &str = "hubcast-fuzz-secret";
const MASTER_KEY: &str = "hubcast-fuzz-master-key";

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    let config = AuthConfig {
        jwt_secret: Some(SECRET.into()),
        master_key: Some(MASTER_KEY.into()),
        ..AuthConfig::default()
    };
    Authenticator::new(&config).expect("the fuzz auth config is valid")
});

/// A header value as the server would receive it: trimmed of surrounding whitespace, if it is valid.
fn header(line: Option<&[u8]>) -> Option<HeaderValue> {
    let line = line?;
    let start = line.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(line.len());
    let end = line.iter().rposition(|b| !matches!(b, b' ' | b'\t')).map_or(start, |i| i + 1);
    HeaderValue::from_bytes(&line[start..end]).ok()
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let raw_query = String::from_utf8_lossy(lines.next().unwrap_or_default());
    let mut headers = HeaderMap::new();
    if let Some(value) = header(lines.next()) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if let Some(value) = header(lines.next()) {
        headers.insert("x-api-key", value);
    }

    let query: HashMap<String, String> = parse_query(Some(&raw_query));
    for key in query.keys() {
        assert!(!key.bytes().any(|b| b.is_ascii_uppercase()), "query key {key:?} is not lower-cased");
    }

    let credential = request_credential(&query, &headers);
    if let Some(credential) = credential {
        assert!(!credential.is_empty(), "an empty credential shadows the sources after it");
    }
    // The query's access_token comes first, whatever the headers say.
    if let Some(token) = query.get("access_token").filter(|t| !t.is_empty()) {
        assert_eq!(credential, Some(token.as_str()));
    }

    let authenticated = AUTH.authenticate_request(&query, &headers);
    match (credential, &authenticated) {
        (None, result) => assert_eq!(result, &Err(AuthError::Missing)),
        (Some(_), Err(AuthError::Missing)) => panic!("a credential was found, then reported missing"),
        (Some(credential), Ok(Principal::Admin { expires_at: None })) => {
            assert_eq!(credential, MASTER_KEY, "something other than the master key passed as it")
        }
        (Some(_), Ok(Principal::VirtualKey(key))) => {
            assert!(KeyId::parse(key.id.as_str()).is_some(), "invalid key id {key:?}")
        }
        _ => {}
    }
});
