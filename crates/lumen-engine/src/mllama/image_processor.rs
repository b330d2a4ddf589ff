//! Llama 3.2 Vision image preprocessing, as transformers'
//! `MllamaImageProcessorPil` (`image_processing_pil_mllama.py`) does it, plus
//! the safety a desktop app needs for files users drop on it.
//!
//! Steps: decode (size limits, first frame of animations, EXIF orientation)
//! → RGB, compositing transparency onto white (Pillow's integer
//! `alpha_composite`) → choose a canvas of tiles → resize keeping the aspect
//! ratio with Pillow's bilinear filter (bit-exact fixed-point port of
//! `Resample.c`) → zero-pad bottom/right → rescale by 1/255 → normalize →
//! split into tiles.
//!
//! One deliberate difference from transformers: EXIF orientation is applied
//! (a phone photo is upright, as the user sees it); transformers ignores it.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::Deserialize;

use crate::error::{EngineError, Result};

/// Largest image accepted, in pixels (a 10000 × 10000 scan is fine; a
/// decompression bomb is not).
pub const MAX_PIXELS: u64 = 100_000_000;
/// Most memory the decoder may allocate.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// `preprocessor_config.json` of an mllama checkpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ImageProcessorConfig {
    /// Tile side; `size: {"height": 560, "width": 560}` in the file.
    #[serde(rename = "size", deserialize_with = "tile_side")]
    pub tile_size: usize,
    /// Most tiles per image (4 for Llama 3.2 Vision).
    pub max_image_tiles: usize,
    /// Per-channel mean after rescaling.
    pub image_mean: [f32; 3],
    /// Per-channel standard deviation after rescaling.
    pub image_std: [f32; 3],
    /// Pixel scale (1/255).
    pub rescale_factor: f32,
}

impl Default for ImageProcessorConfig {
    /// Llama 3.2 11B/90B Vision's settings.
    fn default() -> Self {
        Self {
            tile_size: 560,
            max_image_tiles: 4,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

fn tile_side<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    #[derive(Deserialize)]
    struct Size {
        height: usize,
        width: usize,
    }
    let s = Size::deserialize(d)?;
    if s.height != s.width || s.height == 0 {
        return Err(serde::de::Error::custom("size must be square and non-zero"));
    }
    Ok(s.height)
}

impl ImageProcessorConfig {
    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let cfg: Self =
            serde_json::from_str(&text).map_err(|e| EngineError::invalid(path, e.to_string()))?;
        if cfg.max_image_tiles == 0
            || cfg.max_image_tiles > 64
            || cfg.image_std.iter().any(|s| *s <= 0.0)
        {
            return Err(EngineError::invalid(
                path,
                "max_image_tiles or image_std out of range",
            ));
        }
        Ok(cfg)
    }
}

/// One image ready for the vision encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// `(max_image_tiles, 3, tile, tile)`, row-major; unused tiles are zero.
    pub pixel_values: Vec<f32>,
    /// Tiles used, `rows * cols`.
    pub num_tiles: usize,
    /// The tile grid as `(rows, cols)`.
    pub grid: (usize, usize),
    /// 1 + index of `grid` in [`supported_aspect_ratios`].
    pub aspect_ratio_id: usize,
    /// `max_image_tiles` entries: 1 for used tiles, 0 for padding.
    pub aspect_ratio_mask: Vec<u8>,
    /// The size the image was resized to, `(height, width)`.
    pub resized: (usize, usize),
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Decodes an image file's bytes to RGB: PNG, JPEG, WebP, GIF (first frame),
/// BMP. Transparency is composited onto white; EXIF orientation is applied.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    let bad = |e: image::ImageError| EngineError::Image(describe(e));
    if bytes.is_empty() {
        return Err(EngineError::Image("the file is empty".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| EngineError::Image(e.to_string()))?;
    if reader.format().is_none() {
        return Err(EngineError::Image(
            "unrecognised image format (PNG, JPEG, WebP, GIF and BMP are supported)".into(),
        ));
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with gray instead of failing;
        // the model would then describe a half-gray picture.
        return Err(EngineError::Image(
            "the JPEG file is truncated (no end-of-image marker after its last scan)".into(),
        ));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(EngineError::Image(format!("the image is empty ({w}×{h})")));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(EngineError::Image(format!(
            "the image is {w}×{h}, more than the {} megapixels Lumen accepts",
            MAX_PIXELS / 1_000_000
        )));
    }
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(bad)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(to_rgb_on_white(img))
}

/// Whether a JPEG has an end-of-image marker after its last start-of-scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn describe(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(_) => {
            "the image needs more memory to decode than Lumen allows".into()
        }
        image::ImageError::Unsupported(u) => format!("unsupported image: {u}"),
        other => format!("the image is corrupt or truncated ({other})"),
    }
}

/// RGB with any alpha composited onto opaque white, with Pillow's integer
/// arithmetic (`ImagingAlphaComposite`), which transformers uses.
fn to_rgb_on_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = p.0;
        o.0 = [r, g, b].map(|c| composite_on_white(c, a));
    }
    out
}

fn composite_on_white(c: u8, a: u8) -> u8 {
    // Pillow: 7 bits of precision, background alpha 255, so
    // outa255 = a·255 + 255·(255 − a) = 255².
    const PRECISION_BITS: u32 = 7;
    let a = u32::from(a);
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / (255 * 255);
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = u32::from(c) * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    let div255 = ((tmp >> 8) + tmp) >> 8;
    (div255 >> PRECISION_BITS) as u8
}

// ---------------------------------------------------------------------------
// Canvas selection
// ---------------------------------------------------------------------------

/// Tile grids with at most `max_tiles` tiles, as `(rows, cols)`, in
/// transformers' order (its `get_all_supported_aspect_ratios`).
pub fn supported_aspect_ratios(max_tiles: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for a in 1..=max_tiles {
        for b in 1..=max_tiles {
            if a * b <= max_tiles {
                out.push((a, b));
            }
        }
    }
    out
}

/// The canvas `(height, width)` for an image: the grid whose scale (the
/// smaller of the two side ratios) is the smallest upscale ≥ 1, else the
/// largest downscale; ties go to the smallest area.
pub fn optimal_canvas(
    height: usize,
    width: usize,
    max_tiles: usize,
    tile: usize,
) -> (usize, usize) {
    let canvases: Vec<(usize, usize, f64)> = supported_aspect_ratios(max_tiles)
        .into_iter()
        .map(|(r, c)| {
            let (ch, cw) = (r * tile, c * tile);
            let scale = (ch as f64 / height as f64).min(cw as f64 / width as f64);
            (ch, cw, scale)
        })
        .collect();
    let up = canvases
        .iter()
        .map(|c| c.2)
        .filter(|s| *s >= 1.0)
        .fold(f64::INFINITY, f64::min);
    let chosen = if up.is_finite() {
        up
    } else {
        canvases
            .iter()
            .map(|c| c.2)
            .fold(f64::NEG_INFINITY, f64::max)
    };
    canvases
        .iter()
        .filter(|c| c.2 == chosen)
        .min_by_key(|c| c.0 * c.1)
        .map_or((tile, tile), |c| (c.0, c.1))
}

/// The size `(height, width)` to resize to inside a canvas, keeping the
/// aspect ratio, each side clamped to `[tile, canvas]` first
/// (transformers' `get_image_size_fit_to_canvas`).
pub fn fit_to_canvas(
    height: usize,
    width: usize,
    canvas: (usize, usize),
    tile: usize,
) -> (usize, usize) {
    let target_w = width.clamp(tile, canvas.1);
    let target_h = height.clamp(tile, canvas.0);
    let scale_h = target_h as f64 / height as f64;
    let scale_w = target_w as f64 / width as f64;
    if scale_w < scale_h {
        let new_h = ((height as f64 * scale_w).floor() as usize)
            .max(1)
            .min(target_h);
        (new_h, target_w)
    } else {
        let new_w = ((width as f64 * scale_h).floor() as usize)
            .max(1)
            .min(target_w);
        (target_h, new_w)
    }
}

// ---------------------------------------------------------------------------
// Pillow's bilinear resize (Resample.c, 8 bits per channel)
// ---------------------------------------------------------------------------

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output pixel, the first input index and the fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`.
fn coeffs(in_size: usize, out_size: usize) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            *kx = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *kx;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * f64::from(1u32 << PRECISION_BITS);
            weights[xx * ksize + x] = if w < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs {
        bounds,
        ksize,
        weights,
    }
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like `PIL.Image.resize((width, height), Image.BILINEAR)`: two
/// separable passes, each rounding to 8 bits, in Pillow's order (vertical
/// first when the height shrinks more than twice as much as the width).
pub fn resize_bilinear(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let need_h = width != in_w;
    let need_v = height != in_h;
    let horizontal_first =
        !(in_h > height && (in_h - height) as i64 > (in_w as i64 - width as i64) * 2);
    let horiz = coeffs(in_w, width);
    let mut vert = coeffs(in_h, height);
    let mut buf = img.as_raw().clone();
    let mut cur_w = in_w;
    if horizontal_first {
        if need_h {
            // Only the source rows the vertical pass will read.
            let first = vert.bounds[0].0;
            let last = vert.bounds[height - 1].0 + vert.bounds[height - 1].1;
            buf = pass_horizontal(&buf[first * in_w * 3..last * in_w * 3], in_w, &horiz);
            cur_w = width;
            vert.bounds.iter_mut().for_each(|b| b.0 -= first);
        }
        if need_v {
            buf = pass_vertical(&buf, cur_w, &vert);
        }
    } else {
        if need_v {
            buf = pass_vertical(&buf, in_w, &vert);
        }
        if need_h {
            buf = pass_horizontal(&buf, in_w, &horiz);
        }
    }
    RgbImage::from_raw(width as u32, height as u32, buf).unwrap_or_default()
}

/// Pillow's `ImagingResampleHorizontal_8bpc` over every row of `src`.
fn pass_horizontal(src: &[u8], in_w: usize, k: &Coeffs) -> Vec<u8> {
    let out_w = k.bounds.len();
    let rows = src.len() / (in_w * 3);
    let mut out = vec![0u8; rows * out_w * 3];
    for y in 0..rows {
        let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (x, &(xmin, xmax)) in k.bounds.iter().enumerate() {
            let w = &k.weights[x * k.ksize..x * k.ksize + xmax];
            for c in 0..3 {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (i, wi) in w.iter().enumerate() {
                    ss += i32::from(row[(xmin + i) * 3 + c]) * wi;
                }
                out[(y * out_w + x) * 3 + c] = clip8(ss);
            }
        }
    }
    out
}

/// Pillow's `ImagingResampleVertical_8bpc` over every column of `src`.
fn pass_vertical(src: &[u8], width: usize, k: &Coeffs) -> Vec<u8> {
    let out_h = k.bounds.len();
    let mut out = vec![0u8; out_h * width * 3];
    for (y, &(ymin, ymax)) in k.bounds.iter().enumerate() {
        let w = &k.weights[y * k.ksize..y * k.ksize + ymax];
        for x in 0..width {
            for c in 0..3 {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (i, wi) in w.iter().enumerate() {
                    ss += i32::from(src[((ymin + i) * width + x) * 3 + c]) * wi;
                }
                out[(y * width + x) * 3 + c] = clip8(ss);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The whole pipeline
// ---------------------------------------------------------------------------

/// Resizes, pads, normalizes and tiles a decoded image.
pub fn preprocess(img: &RgbImage, cfg: &ImageProcessorConfig) -> ProcessedImage {
    let tile = cfg.tile_size;
    let (h, w) = (img.height() as usize, img.width() as usize);
    let canvas = optimal_canvas(h, w, cfg.max_image_tiles, tile);
    let (rows, cols) = (canvas.0 / tile, canvas.1 / tile);
    let (new_h, new_w) = fit_to_canvas(h, w, canvas, tile);
    let resized = if (new_h, new_w) == (h, w) {
        img.clone()
    } else {
        resize_bilinear(img, new_w, new_h)
    };
    let raw = resized.as_raw();

    // Padding is black *before* normalization, as in transformers, so padded
    // pixels become -mean/std.
    let plane = tile * tile;
    let mut pixel_values = vec![0f32; cfg.max_image_tiles * 3 * plane];
    for ty in 0..rows {
        for tx in 0..cols {
            let t = ty * cols + tx;
            for c in 0..3 {
                let (mean, std) = (cfg.image_mean[c], cfg.image_std[c]);
                let base = (t * 3 + c) * plane;
                for y in 0..tile {
                    for x in 0..tile {
                        let (py, px) = (ty * tile + y, tx * tile + x);
                        let v = if py < new_h && px < new_w {
                            raw[(py * new_w + px) * 3 + c]
                        } else {
                            0
                        };
                        let v = f32::from(v) * cfg.rescale_factor;
                        pixel_values[base + y * tile + x] = (v - mean) / std;
                    }
                }
            }
        }
    }
    let ratios = supported_aspect_ratios(cfg.max_image_tiles);
    let aspect_ratio_id = ratios
        .iter()
        .position(|r| *r == (rows, cols))
        .map_or(0, |i| i + 1);
    let num_tiles = rows * cols;
    let aspect_ratio_mask = (0..cfg.max_image_tiles)
        .map(|i| u8::from(i < num_tiles.max(1)))
        .collect();
    ProcessedImage {
        pixel_values,
        num_tiles,
        grid: (rows, cols),
        aspect_ratio_id,
        aspect_ratio_mask,
        resized: (new_h, new_w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_ratios_in_transformers_order() {
        assert_eq!(
            supported_aspect_ratios(4),
            vec![
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (2, 1),
                (2, 2),
                (3, 1),
                (4, 1)
            ]
        );
    }

    #[test]
    fn canvas_prefers_smallest_upscale_then_largest_downscale() {
        // Tiny image: every canvas upscales; 1×1 has the smallest scale.
        assert_eq!(optimal_canvas(10, 7, 4, 560), (560, 560));
        // A wide 2000×500 photo: downscale only; the 1×4 grid keeps most detail.
        assert_eq!(optimal_canvas(500, 2000, 4, 560), (560, 2240));
        // 800×600: only the 2×2 canvas upscales (by 1.4); the others downscale.
        assert_eq!(optimal_canvas(600, 800, 4, 560), (1120, 1120));
    }

    #[test]
    fn fit_keeps_aspect_ratio() {
        // Already as wide as it may be: kept at its size and padded below.
        assert_eq!(fit_to_canvas(500, 2000, (560, 2240), 560), (500, 2000));
        assert_eq!(fit_to_canvas(10, 7, (560, 560), 560), (560, 392));
    }

    #[test]
    fn composite_matches_pillow_corners() {
        assert_eq!(composite_on_white(0, 0), 255);
        assert_eq!(composite_on_white(0, 255), 0);
        assert_eq!(composite_on_white(200, 255), 200);
    }

    #[test]
    fn resize_identity_and_constant_images() {
        let img = RgbImage::from_fn(9, 5, |x, y| image::Rgb([(x * 20) as u8, (y * 40) as u8, 7]));
        let same = resize_bilinear(&img, 9, 5);
        assert_eq!(same, img);
        let flat = RgbImage::from_pixel(13, 11, image::Rgb([100, 150, 200]));
        let r = resize_bilinear(&flat, 5, 29);
        assert!(r.pixels().all(|p| p.0 == [100, 150, 200]));
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        assert!(decode_image(b"").is_err());
        assert!(
            decode_image(b"not an image at all")
                .unwrap_err()
                .to_string()
                .contains("unrecognised")
        );
        // A PNG header that promises 100k × 100k pixels.
        let mut png = vec![
            0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, b'I', b'H', b'D', b'R',
        ];
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&100_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode_image(&png).unwrap_err().to_string();
        assert!(
            err.contains("megapixels") || err.contains("corrupt"),
            "{err}"
        );
    }
}
