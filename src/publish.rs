//! `hubcast publish`: validate one event locally, then hand it to a running `serve` over HTTP.
//!
//! Validating first gives the producer the reason at once, without a round trip; the server validates
//! again, so nothing invalid gets through when someone skips this command.

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;

/// Where a running `serve` listens, from `listen`: a wildcard address is reached over loopback.
pub fn local_address(config: &Config) -> String {
    let listen = &config.listen;
    match listen.rsplit_once(':') {
        Some(("0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        Some(("[::]", port)) => format!("[::1]:{port}"),
        _ => listen.clone(),
    }
}

/// Validates and publishes; returns the server's JSON answer.
pub async fn publish(
    config: &Config,
    hub: &str,
    routing_key: &str,
    message_id: Option<&str>,
    payload: &str,
) -> anyhow::Result<Value> {
    let payload: Value = serde_json::from_str(payload).context("the event body is not valid JSON")?;
    crate::events::validate(hub, routing_key, &payload)?;
    let master_key = config
        .auth
        .master_key
        .as_deref()
        .filter(|key| !key.starts_with("sha256:"))
        .ok_or_else(|| anyhow!("publishing to serve needs the plain master key in auth.master_key (HUBCAST_AUTH__MASTER_KEY)"))?;
    let body = json!({ "hub": hub, "routingKey": routing_key, "messageId": message_id, "payload": payload })
        .to_string();
    let address = local_address(config);
    let (status, answer) = post(&address, "/api/v1/publish", master_key, &body).await?;
    let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::String(answer));
    if status != 202 {
        let reason = answer
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| answer.to_string());
        bail!("{address} refused the event ({status}): {reason}");
    }
    Ok(answer)
}

/// A minimal HTTP/1.1 POST: one request per connection, so the response ends when the server closes.
async fn post(address: &str, path: &str, api_key: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream =
        TcpStream::connect(address).await.with_context(|| format!("connecting to hubcast at {address}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {api_key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow!("malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_reached_over_loopback() {
        let mut config = Config::default();
        assert_eq!(local_address(&config), "127.0.0.1:8080");
        config.listen = "10.0.0.5:9000".into();
        assert_eq!(local_address(&config), "10.0.0.5:9000");
    }
}
