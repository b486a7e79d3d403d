//! VideoGenerationHub and ImageGenerationHub events: the whole body is the one argument (Conduit's DTOs),
//! going to `video-{requestId}` or `image-{taskId}` of its virtual key.

use schemars::JsonSchema;
use serde::Deserialize;

use super::types::{Id, Percent, Timestamp};
use super::{Args, Event, EventKind};

/// A video generation request began.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoGenerationStarted {
    pub request_id: Id,
    pub status: Option<String>,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
}

/// Progress of a video generation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoGenerationProgress {
    pub request_id: Id,
    pub percent_complete: Percent,
    pub status: Option<String>,
    pub message: Option<String>,
    pub updated_at: Option<Timestamp>,
}

/// A video is ready.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoGenerationCompleted {
    pub request_id: Id,
    pub video_url: String,
    pub cost: Option<f64>,
    pub completed_at: Option<Timestamp>,
}

/// A video generation failed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoGenerationFailed {
    pub request_id: Id,
    pub error: String,
    pub is_retryable: bool,
    pub failed_at: Option<Timestamp>,
}

/// A video generation was cancelled.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoGenerationCancelled {
    pub request_id: Id,
    pub reason: Option<String>,
    pub cancelled_at: Option<Timestamp>,
}

/// An image generation task began.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageGenerationStarted {
    pub task_id: Id,
    pub status: Option<String>,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
}

/// Progress of an image generation.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageGenerationProgress {
    pub task_id: Id,
    pub percent_complete: Percent,
    pub status: Option<String>,
    pub message: Option<String>,
}

/// Images are ready.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageGenerationCompleted {
    pub task_id: Id,
    pub image_urls: Vec<String>,
    pub cost: Option<f64>,
    pub completed_at: Option<Timestamp>,
}

/// An image generation failed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageGenerationFailed {
    pub task_id: Id,
    pub error: String,
    pub is_retryable: bool,
    pub failed_at: Option<Timestamp>,
}

macro_rules! media_event {
    ($type:ty, $name:literal, $id:ident, $prefix:literal) => {
        impl Event for $type {
            const NAME: &'static str = $name;
            const ARGS: Args = Args::Body;
            fn groups(&self) -> Option<Vec<String>> {
                Some(vec![format!(concat!($prefix, "-{}"), self.$id)])
            }
        }
    };
}

media_event!(VideoGenerationStarted, "VideoGenerationStarted", request_id, "video");
media_event!(VideoGenerationProgress, "VideoGenerationProgress", request_id, "video");
media_event!(VideoGenerationCompleted, "VideoGenerationCompleted", request_id, "video");
media_event!(VideoGenerationFailed, "VideoGenerationFailed", request_id, "video");
media_event!(VideoGenerationCancelled, "VideoGenerationCancelled", request_id, "video");
media_event!(ImageGenerationStarted, "ImageGenerationStarted", task_id, "image");
media_event!(ImageGenerationProgress, "ImageGenerationProgress", task_id, "image");
media_event!(ImageGenerationCompleted, "ImageGenerationCompleted", task_id, "image");
media_event!(ImageGenerationFailed, "ImageGenerationFailed", task_id, "image");

pub fn kinds() -> Vec<EventKind> {
    const VIDEO: &str = "video-generation";
    const IMAGE: &str = "image-generation";
    vec![
        EventKind::of::<VideoGenerationStarted>(VIDEO),
        EventKind::of::<VideoGenerationProgress>(VIDEO),
        EventKind::of::<VideoGenerationCompleted>(VIDEO),
        EventKind::of::<VideoGenerationFailed>(VIDEO),
        EventKind::of::<VideoGenerationCancelled>(VIDEO),
        EventKind::of::<ImageGenerationStarted>(IMAGE),
        EventKind::of::<ImageGenerationProgress>(IMAGE),
        EventKind::of::<ImageGenerationCompleted>(IMAGE),
        EventKind::of::<ImageGenerationFailed>(IMAGE),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::find;
    use serde_json::json;

    #[test]
    fn the_whole_body_travels_including_unknown_fields() {
        let body = json!({"requestId": "r1", "videoUrl": "https://cdn/x.mp4", "future": {"a": 1}});
        let event = find("video-generation", "VideoGenerationCompleted").unwrap().parse(&body).unwrap();
        assert_eq!(event.arguments, vec![body]);
        assert_eq!(event.groups.unwrap(), vec!["video-r1"]);
        let failed = find("image-generation", "ImageGenerationFailed").unwrap();
        assert!(failed.parse(&json!({"taskId": "t", "error": "e"})).is_err(), "isRetryable is required");
    }
}
