//! Images attached to a message: read, checked and described before
//! anything is stored, with a thumbnail for the history.

use std::io::Cursor;
use std::path::PathBuf;

use lumen_store::attachments::{IMAGE_TYPES, MAX_ATTACHMENT_BYTES};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// An image as the UI hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageInput {
    /// A file the user dropped or picked.
    Path {
        /// Where it is.
        path: PathBuf,
    },
    /// Bytes from the clipboard or a file input.
    Bytes {
        /// The encoded image (PNG, JPEG, WebP, GIF, BMP), base64 in JSON
        /// (a third larger, where an array of numbers would be four times).
        #[serde(rename = "base64", with = "base64_bytes")]
        #[cfg_attr(feature = "ts", ts(type = "string"))]
        data: Vec<u8>,
    },
}

/// A checked image, for the composer: attached images are checked at
/// once, so a broken file is reported before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct ImagePreview {
    /// Its type (`image/png`, …).
    pub mime: String,
    /// Pixel width.
    pub width: u32,
    /// Pixel height.
    pub height: u32,
    /// Its size, bytes.
    pub bytes: u64,
    /// A small JPEG, as a `data:` URL.
    pub thumbnail: String,
}

/// `data:` URL of a JPEG thumbnail.
pub(crate) fn jpeg_data_url(jpeg: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    )
}

/// Bytes as base64 text in JSON; malformed base64 is a clear error.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("the image is not valid base64: {e}")))
    }
}

impl ImageInput {
    /// Checks the image and makes its thumbnail, for the composer.
    pub fn preview(&self) -> Result<ImagePreview> {
        let checked = self.check()?;
        Ok(ImagePreview {
            mime: checked.mime.to_string(),
            width: checked.width,
            height: checked.height,
            bytes: checked.data.len() as u64,
            thumbnail: jpeg_data_url(&checked.thumbnail),
        })
    }
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
