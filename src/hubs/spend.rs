//! SpendNotificationHub (`/hubs/spend`): nothing to call; every connection gets its own key's spend
//! events through `vkey-{id}`, joined on connect. The seed's `SendSpendUpdate` and friends are backend
//! operations, which here are events on the `conduit.spend` exchange, never client-callable.

use futures_util::future::BoxFuture;

use super::{Arguments, Audience, Caller, Hub, HubError, HubResult};

pub struct SpendHub;

impl Hub for SpendHub {
    fn name(&self) -> &'static str {
        "spend"
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        &[]
    }

    fn invoke<'a>(&'a self, _: &'a mut Caller, _: &'static str, _: Arguments) -> BoxFuture<'a, HubResult> {
        Box::pin(async { Err(HubError::MethodNotFound) })
    }
}
