//! VideoGenerationHub (`/hubs/video-generation`) and ImageGenerationHub (`/hubs/image-generation`): follow
//! one generation request of the caller's own key. The two differ only in names, so one type serves both.

use futures_util::future::BoxFuture;

use super::{bind_id, Arguments, Audience, Caller, Hub, HubError, HubResult};

/// A hub whose clients subscribe to and unsubscribe from one id at a time.
pub struct SingleIdHub {
    name: &'static str,
    /// The subscribe and unsubscribe methods, in that order.
    methods: &'static [&'static str],
    group_prefix: &'static str,
    refusal: &'static str,
}

pub const VIDEO_GENERATION: SingleIdHub = SingleIdHub {
    name: "video-generation",
    methods: &["SubscribeToRequest", "UnsubscribeFromRequest"],
    group_prefix: "video",
    refusal: "Invalid request ID",
};

pub const IMAGE_GENERATION: SingleIdHub = SingleIdHub {
    name: "image-generation",
    methods: &["SubscribeToTask", "UnsubscribeFromTask"],
    group_prefix: "image",
    refusal: "Invalid task ID",
};

impl Hub for SingleIdHub {
    fn name(&self) -> &'static str {
        self.name
    }

    fn audience(&self) -> Audience {
        Audience::VirtualKey
    }

    fn methods(&self) -> &'static [&'static str] {
        self.methods
    }

    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult> {
        Box::pin(async move {
            let group = format!("{}-{}", self.group_prefix, bind_id(args, self.refusal)?);
            match method {
                m if m == self.methods[0] => caller.join(&group)?,
                m if m == self.methods[1] => caller.leave(&group),
                _ => return Err(HubError::MethodNotFound),
            }
            Ok(None)
        })
    }
}
