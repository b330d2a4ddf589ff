//! Images attached to a message: read, checked and described before
//! anything is stored, with a thumbnail for the history.

use std::io::Cursor;
use std::path::PathBuf;

use lumen_store::attachments::{IMAGE_TYPES, MAX_ATTACHMENT_BYTES};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// An image as the UI hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageInput {
    /// A file the user dropped or picked.
    Path {
        /// Where it is.
        path: PathBuf,
    },
    /// Bytes from the clipboard.
    Bytes {
        /// The encoded image (PNG, JPEG, WebP, GIF, BMP).
        data: Vec<u8>,
    },
}

/// A checked image, ready to store and encode.
#[derive(Debug, Clone)]
pub(crate) struct CheckedImage {
    pub data: Vec<u8>,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    pub thumbnail: Vec<u8>,
}

/// Longest side of a thumbnail, in pixels.
const THUMBNAIL: u32 = 256;

impl ImageInput {
    /// Reads and checks the image: size, format, that it decodes.
    pub(crate) fn check(&self) -> Result<CheckedImage> {
        let (data, name) = match self {
            Self::Path { path } => {
                let name = path.display().to_string();
                let meta = std::fs::metadata(path)
                    .map_err(|e| CoreError::new("bad_image", format!("cannot open {name}: {e}")))?;
                if meta.len() > MAX_ATTACHMENT_BYTES as u64 {
                    return Err(too_large(&name, meta.len()));
                }
                let data = std::fs::read(path)
                    .map_err(|e| CoreError::new("bad_image", format!("cannot read {name}: {e}")))?;
                (data, name)
            }
            Self::Bytes { data } => (data.clone(), "the pasted image".to_string()),
        };
        if data.len() > MAX_ATTACHMENT_BYTES {
            return Err(too_large(&name, data.len() as u64));
        }
        let mime = image::guess_format(&data)
            .ok()
            .map(|f| f.to_mime_type())
            .and_then(|m| IMAGE_TYPES.iter().find(|t| **t == m).copied())
            .ok_or_else(|| {
                CoreError::new(
                    "bad_image",
                    format!("{name} is not a PNG, JPEG, WebP, GIF or BMP image"),
                )
            })?;
        // The engine's decoder: the same checks (size limits, orientation)
        // as when the model reads it.
        let rgb = lumen_engine::mllama::image_processor::decode_image(&data)
            .map_err(|e| CoreError::new("bad_image", format!("{name}: {e}")))?;
        let (width, height) = rgb.dimensions();
        let thumb = image::DynamicImage::ImageRgb8(rgb).thumbnail(THUMBNAIL, THUMBNAIL);
        let mut thumbnail = Vec::new();
        thumb
            .to_rgb8()
            .write_to(&mut Cursor::new(&mut thumbnail), image::ImageFormat::Jpeg)
            .map_err(|e| CoreError::new("bad_image", format!("{name}: thumbnail: {e}")))?;
        Ok(CheckedImage {
            data,
            mime,
            width,
            height,
            thumbnail,
        })
    }
}

fn too_large(name: &str, bytes: u64) -> CoreError {
    CoreError::new(
        "bad_image",
        format!(
            "{name} is {} MB; images up to {} MB can be attached",
            bytes / 1_000_000,
            MAX_ATTACHMENT_BYTES / 1_000_000
        ),
    )
}
