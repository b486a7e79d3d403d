//! `hubcast publish`: validate one event locally, then hand it to RabbitMQ (with publisher confirms) or to a
//! running `serve` over HTTP.
//!
//! Validating first gives the producer the reason at once, without a round trip; the server (or the
//! router) validates again, so nothing invalid gets through when someone skips this command. The checks
//! are the same on every path: [`crate::events::validate_incoming`].

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

/// `hubcast publish`: validates the event, then publishes it to RabbitMQ with publisher confirms when
/// `bus.amqp_url` is set, else to a running `serve` over HTTP. Returns what to print.
pub async fn run(
    config: &Config,
    hub: &str,
    routing_key: &str,
    message_id: Option<&str>,
    payload: &str,
) -> anyhow::Result<Value> {
    // Checked here, once, before anything is sent either way.
    let payload: Value = serde_json::from_str(payload).context("the event body is not valid JSON")?;
    crate::events::validate_incoming(hub, routing_key, message_id, &payload, config.bus.max_event_bytes)?;
    if config.bus.amqp_url.is_some() {
        publish_to_rabbitmq(config, hub, routing_key, message_id, &payload).await
    } else {
        publish(config, hub, routing_key, message_id, &payload).await
    }
}

/// Publishes a validated event with publisher confirms; answers with the message id.
async fn publish_to_rabbitmq(
    config: &Config,
    hub: &str,
    routing_key: &str,
    message_id: Option<&str>,
    payload: &Value,
) -> anyhow::Result<Value> {
    let publisher = crate::bus::amqp::publisher::Publisher::connect(&config.bus).await?;
    let body = serde_json::to_vec(payload)?;
    let traceparent = std::env::var("TRACEPARENT").ok();
    let id = publisher.publish(hub, routing_key, message_id, &body, traceparent.as_deref()).await?;
    Ok(json!({ "messageId": id, "confirmed": true }))
}

/// Publishes a validated event to a running `serve` over HTTP; returns the server's JSON answer.
async fn publish(
    config: &Config,
    hub: &str,
    routing_key: &str,
    message_id: Option<&str>,
    payload: &Value,
) -> anyhow::Result<Value> {
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
        let reason = match &answer {
            // A plain-text answer, such as the 413 of an oversized request.
            Value::String(text) => text.clone(),
            answer => {
                answer.get("error").and_then(Value::as_str).map_or_else(|| answer.to_string(), str::to_owned)
            }
        };
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

    /// `hubcast publish` refuses an event over `bus.max_event_bytes` with the reason before it sends
    /// anything: nothing listens at the configured address or broker, so getting that far would fail
    /// otherwise.
    #[tokio::test]
    async fn the_cli_refuses_an_oversized_event_before_sending() {
        let mut config = Config { listen: "127.0.0.1:1".into(), ..Config::default() };
        config.auth.master_key = Some("master".into());
        let body = json!({"taskId": "t1", "taskType": "video", "percentComplete": 5, "message": "x".repeat(1_100_000)});
        let bytes = serde_json::to_vec(&body).unwrap().len();
        // Pretty-printed: what counts is the event as it goes on the bus, in compact JSON.
        let text = serde_json::to_string_pretty(&body).unwrap();
        let expected =
            format!("event body of {bytes} bytes is over the limit of bus.max_event_bytes (262144)");
        let error = run(&config, "tasks", "vkey.1.TaskProgress", None, &text).await.unwrap_err();
        assert_eq!(error.to_string(), expected, "over HTTP to serve");
        config.bus.amqp_url = Some("amqp://guest:guest@127.0.0.1:1/%2f".into());
        let error = run(&config, "tasks", "vkey.1.TaskProgress", None, &text).await.unwrap_err();
        assert_eq!(error.to_string(), expected, "to RabbitMQ");
        assert_eq!(
            error.downcast_ref::<crate::events::EventError>(),
            Some(&crate::events::EventError::TooLarge { bytes, limit: 262_144 })
        );
        let error =
            run(&config, "tasks", "vkey.1.TaskProgress", Some(&"m".repeat(256)), "{}").await.unwrap_err();
        assert_eq!(error.to_string(), "message id of 256 bytes is over the limit of 255");
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_over_loopback() {
        let mut config = Config::default();
        assert_eq!(local_address(&config), "127.0.0.1:8080");
        config.listen = "10.0.0.5:9000".into();
        assert_eq!(local_address(&config), "10.0.0.5:9000");
    }
}
