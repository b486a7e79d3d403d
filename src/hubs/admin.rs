//! AdminNotificationHub (`/hubs/admin-notifications`): master key only. Every admin hears `admin`; an
//! admin may also follow one virtual key's activity or one provider's health.

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{Arguments, Audience, Caller, Hub, HubError, HubResult};
use crate::events::types::valid_id;
use crate::events::types::KeyRef;

pub struct AdminHub;

impl Hub for AdminHub {
    fn name(&self) -> &'static str {
        "admin-notifications"
    }

    fn audience(&self) -> Audience {
        Audience::Admin
    }

    fn methods(&self) -> &'static [&'static str] {
        &[
            "SubscribeToVirtualKey",
            "UnsubscribeFromVirtualKey",
            "SubscribeToProvider",
            "UnsubscribeFromProvider",
            "RefreshProviderHealth",
        ]
    }

    fn on_connected(&self, caller: &mut Caller) -> Result<(), HubError> {
        caller.join("admin")?;
        let health = caller.edge().provider_health.list();
        caller.send("InitialProviderHealth", vec![health]);
        Ok(())
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            let result = match method {
                "SubscribeToVirtualKey" | "UnsubscribeFromVirtualKey" => {
                    let (id,): (Value,) = args.bind()?;
                    KeyRef::from_value(&id)
                        .map(|KeyRef(key)| format!("admin-vkey-{key}"))
                        .ok_or("Invalid virtual key ID")
                }
                "SubscribeToProvider" | "UnsubscribeFromProvider" => {
                    let (name,): (Value,) = args.bind()?;
                    name.as_str()
                        .filter(|name| valid_id(name))
                        .map(|name| format!("admin-provider-{name}"))
                        .ok_or("Invalid provider name")
                }
                "RefreshProviderHealth" => {
                    args.none()?;
                    tracing::info!(target: "audit", connection = caller.connection_id(), "provider health refresh requested");
                    return Ok(Some(caller.edge().provider_health.list()));
                }
                _ => return Err(HubError::MethodNotFound),
            };
            match result {
                Ok(group) if method.starts_with("Subscribe") => caller.join(&group)?,
                Ok(group) => caller.leave(&group),
                // Admin clients listen for `Error` as well as the failed completion.
                Err(refusal) => {
                    caller.send("Error", vec![Value::from(refusal)]);
                    return Err(HubError::refused(refusal));
                }
            }
            Ok(None)
        })
    }
}
