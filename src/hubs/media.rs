//! VideoGenerationHub (`/hubs/video-generation`) and ImageGenerationHub (`/hubs/image-generation`): follow
//! one generation request of the caller's own key.

use futures_util::future::BoxFuture;

use super::{bind_id, Arguments, Audience, Caller, Hub, HubError, HubResult};

pub struct VideoGenerationHub;

impl Hub for VideoGenerationHub {
    fn name(&self) -> &'static str {
        "video-generation"
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        &["SubscribeToRequest", "UnsubscribeFromRequest"]
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            let group = format!("video-{}", bind_id(args, "Invalid request ID")?);
            match method {
                "SubscribeToRequest" => caller.join(&group),
                "UnsubscribeFromRequest" => caller.leave(&group),
                _ => return Err(HubError::MethodNotFound),
            }
            Ok(None)
        })
    }
}

pub struct ImageGenerationHub;

impl Hub for ImageGenerationHub {
    fn name(&self) -> &'static str {
        "image-generation"
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        &["SubscribeToTask", "UnsubscribeFromTask"]
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            let group = format!("image-{}", bind_id(args, "Invalid task ID")?);
            match method {
                "SubscribeToTask" => caller.join(&group),
                "UnsubscribeFromTask" => caller.leave(&group),
                _ => return Err(HubError::MethodNotFound),
            }
            Ok(None)
        })
    }
}
