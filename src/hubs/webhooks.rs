//! WebhookDeliveryHub (`/hubs/webhooks`): follow deliveries to webhook URLs of the caller's own key, and
//! ask for their statistics.

use std::time::SystemTime;

use futures_util::future::BoxFuture;

use super::{Arguments, Audience, Caller, Hub, HubError, HubResult};
use crate::events::webhooks::{group, validate_url};

/// Most URLs one call may name.
const MAX_URLS: usize = 50;

pub struct WebhooksHub;

impl Hub for WebhooksHub {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        &["SubscribeToWebhooks", "UnsubscribeFromWebhooks", "RequestStatistics"]
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            match method {
                "SubscribeToWebhooks" | "UnsubscribeFromWebhooks" => {
                    let (urls,): (Vec<String>,) = args.bind()?;
                    if urls.len() > MAX_URLS {
                        return Err(HubError::refused(format!("Too many webhook URLs (at most {MAX_URLS})")));
                    }
                    // All or nothing: one bad URL refuses the call before any group changes.
                    let groups = urls
                        .iter()
                        .map(|url| validate_url(url).map(group))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| HubError::refused("Invalid webhook URL"))?;
                    if method == "SubscribeToWebhooks" {
                        caller.join_all(&groups)?;
                    } else {
                        groups.iter().for_each(|name| caller.leave(name));
                    }
                    Ok(None)
                }
                "RequestStatistics" => {
                    let (url,): (String,) = args.bind()?;
                    let url = validate_url(&url).ok_or_else(|| HubError::refused("Invalid webhook URL"))?;
                    let key =
                        caller.key_id().ok_or_else(|| HubError::refused("Statistics are per virtual key"))?;
                    Ok(Some(caller.edge().webhook_stats.statistics(key, url, SystemTime::now())))
                }
                _ => Err(HubError::MethodNotFound),
            }
        })
    }
}
