//! Random ids: connection ids and tokens, message ids, node names.

use base64::Engine;

/// A 16-byte random id, base64url like ASP.NET Core's (22 characters).
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
