//! Image preprocessing for Llama 3.2 Vision against Pillow, which
//! transformers' image processor uses.

use lumen_engine::mllama::image_processor::{decode_image, resize_bilinear};

use crate::common::fixtures;

fn png(name: &str) -> image::RgbImage {
    let bytes = std::fs::read(fixtures().join("pillow-resize").join(name)).expect("fixture");
    decode_image(&bytes).expect("decode")
}

#[test]
fn bilinear_resize_is_bit_exact_with_pillow() {
    let input = png("input.png");
    for (w, h) in [(11, 7), (80, 50), (60, 9), (37, 23), (5, 90), (150, 97)] {
        let ours = resize_bilinear(&input, w, h);
        let want = png(&format!("out_{w}x{h}.png"));
        let differing = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{w}x{h}: {differing} bytes differ from Pillow"
        );
    }
}

#[test]
fn transparency_is_composited_onto_white_like_pillow() {
    assert_eq!(png("rgba.png"), png("rgba_on_white.png"));
}

use lumen_engine::mllama::image_processor::{ImageProcessorConfig, preprocess};
use serde_json::Value;

use crate::common::{assets, json};

/// Largest difference in 8-bit pixel levels between two normalized
/// `(tiles, 3, h, w)` arrays (a level is 1/255/std[c] in normalized units).
fn max_levels(a: &[f32], b: &[f32], plane: usize) -> f32 {
    assert_eq!(a.len(), b.len());
    let std = ImageProcessorConfig::default().image_std;
    a.chunks_exact(plane)
        .zip(b.chunks_exact(plane))
        .enumerate()
        .map(|(i, (x, y))| {
            let level = 1.0 / 255.0 / std[i % 3];
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs() / level)
                .fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

/// Our preprocessing of every fixture image against transformers' PIL
/// processor, at the real tile size (560, sampled every 8th pixel, plus tile
/// means) and at tile 56 (every pixel). PNG inputs must match to float
/// rounding; JPEG inputs are decoded by a different IDCT (zune-jpeg) than
/// Pillow's libjpeg-turbo, which moves some pixels by up to 3 levels of 255
/// on the two real photos (measured; the model-level effect of such
/// differences is bounded in the mllama end-to-end tests).
#[test]
fn preprocessing_matches_transformers() {
    let cases = json("mllama/preprocess/cases.json");
    let dir = fixtures().join("mllama/preprocess");
    let reference = candle_core::safetensors::load(
        dir.join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )
    .expect("ref");
    let mut report = Vec::new();
    for (file, case) in cases["images"].as_object().expect("images") {
        // Deliberate differences, tested separately below.
        if file.starts_with("exif_") || file.starts_with("gray16") {
            continue;
        }
        let path = if case["file"]
            .as_str()
            .is_some_and(|f| f.starts_with("$LUMEN_ASSETS_DIR"))
        {
            assets().join("llama-models").join(file)
        } else {
            dir.join(file)
        };
        let img = decode_image(&std::fs::read(&path).expect("read")).expect("decode");
        let stem = file.rsplit_once('.').map_or(file.as_str(), |s| s.0);
        let is_jpeg = file.ends_with(".jpg") || file.ends_with(".jpeg");
        for (setting, tile) in [("tile560", 560), ("tile56", 56)] {
            let want = &case[setting];
            let cfg = ImageProcessorConfig {
                tile_size: tile,
                ..Default::default()
            };
            let p = preprocess(&img, &cfg);
            let pair = |v: &Value| {
                (
                    v[0].as_u64().expect("h") as usize,
                    v[1].as_u64().expect("w") as usize,
                )
            };
            assert_eq!(p.resized, pair(&want["resized_hw"]), "{file} {setting}");
            assert_eq!(p.grid, pair(&want["tiles_hw"]), "{file} {setting}");
            assert_eq!(
                p.aspect_ratio_id as u64,
                want["aspect_ratio_id"].as_u64().expect("id"),
                "{file} {setting}"
            );
            let mask: Vec<u8> = want["aspect_ratio_mask"]
                .as_array()
                .expect("mask")
                .iter()
                .map(|m| m.as_u64().expect("m") as u8)
                .collect();
            assert_eq!(p.aspect_ratio_mask, mask, "{file} {setting}");
            let diff = if tile == 56 {
                let want = reference[&format!("{stem}.tile56.pixel_values")]
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("pv");
                max_levels(&p.pixel_values, &want, 56 * 56)
            } else {
                let want = reference[&format!("{stem}.tile560.pixel_values_grid8")]
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("grid");
                let mut ours = Vec::with_capacity(want.len());
                for plane in p.pixel_values.chunks_exact(560 * 560) {
                    for y in (0..560).step_by(8) {
                        for x in (0..560).step_by(8) {
                            ours.push(plane[y * 560 + x]);
                        }
                    }
                }
                max_levels(&ours, &want, 70 * 70)
            };
            report.push(format!("{file} {setting}: max diff {diff:.3} levels"));
            let bound = if is_jpeg { 3.01 } else { 1e-3 };
            assert!(diff <= bound, "{file} {setting}: {diff} levels");
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// transformers ignores EXIF orientation; a phone photo must be upright, so
/// Lumen applies it: the decoded image is the raw pixels rotated.
#[test]
fn exif_orientation_is_applied() {
    let bytes =
        std::fs::read(fixtures().join("mllama/preprocess/exif_rot90_160x100.jpg")).expect("read");
    let upright = decode_image(&bytes).expect("decode");
    let raw = image::load_from_memory(&bytes).expect("raw").to_rgb8();
    assert_eq!((raw.width(), raw.height()), (160, 100));
    assert_eq!((upright.width(), upright.height()), (100, 160));
    assert_eq!(
        upright,
        image::imageops::rotate90(&raw),
        "orientation 6 = rotate 90° clockwise"
    );
}

/// A 16-bit PNG is scaled to 8 bits (transformers, through Pillow, clamps
/// it instead, turning most of it white).
#[test]
fn sixteen_bit_png_is_scaled_not_clamped() {
    let bytes = std::fs::read(fixtures().join("mllama/preprocess/gray16_64x40.png")).expect("read");
    let img = decode_image(&bytes).expect("decode");
    let raw = image::load_from_memory(&bytes).expect("raw").to_luma16();
    for (p, q) in img.pixels().zip(raw.pixels()) {
        let want = (f32::from(q.0[0]) / 257.0).round() as u8;
        assert!(
            p.0.iter().all(|c| c.abs_diff(want) <= 1),
            "{:?} vs {want}",
            p.0
        );
    }
}

/// Cross-attention masks against transformers' processor helpers.
#[test]
fn cross_attention_masks_match_transformers() {
    use lumen_engine::mllama::masks::{dense_mask, image_spans, rows_with_images};
    let cases = json("mllama/preprocess/cases.json");
    let ints = |v: &Value| -> Vec<i64> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_i64().expect("int")).collect())
            .unwrap_or_default()
    };
    for case in cases["cross_attention_mask_cases"]
        .as_array()
        .expect("cases")
    {
        let name = case["name"].as_str().expect("name");
        let ids: Vec<u32> = ints(&case["input_ids"]).iter().map(|&i| i as u32).collect();
        let spans = image_spans(&ids, case["image_token_id"].as_u64().expect("id") as u32);
        // transformers writes the end of a lone image's span as -1 (to the end).
        let want_spans: Vec<(usize, usize)> = case["sparse"]
            .as_array()
            .expect("sparse")
            .iter()
            .map(|s| {
                let (a, b) = (s[0].as_i64().expect("a"), s[1].as_i64().expect("b"));
                (a as usize, if b < 0 { ids.len() } else { b as usize })
            })
            .collect();
        assert_eq!(spans, want_spans, "{name}");
        if spans.is_empty() {
            continue;
        }
        let tiles: Vec<usize> = ints(&case["num_tiles"])
            .iter()
            .map(|&t| t as usize)
            .collect();
        let max_tiles = case["max_num_tiles"].as_u64().expect("max") as usize;
        let mask = dense_mask(&spans, &tiles, max_tiles, ids.len());
        let want: Vec<u8> = case["dense"]
            .to_string()
            .bytes()
            .filter(|b| *b == b'0' || *b == b'1')
            .map(|b| b - b'0')
            .collect();
        assert_eq!(mask, want, "{name}");
        let rows: Vec<i64> = rows_with_images(&mask, ids.len())
            .iter()
            .map(|r| i64::from(*r))
            .collect();
        assert_eq!(rows, ints(&case["full_text_row_masked_out_mask"]), "{name}");
    }
}

fn edge(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).expect("fixture")
}

/// Files a user might drop that are broken, hostile or unusual: each is a
/// clear error or a correct conversion, never a panic or a huge allocation.
#[test]
fn hostile_and_unusual_images() {
    // A decompression bomb: a 74-byte PNG claiming 1.6 gigapixels.
    let err = decode_image(&edge("bomb.png"))
        .expect_err("bomb")
        .to_string();
    assert!(err.contains("megapixels"), "{err}");

    // Truncated and corrupt JPEGs.
    let dog = std::fs::read(assets().join("llama-models/dog.jpg")).expect("dog");
    for cut in [2, 100, dog.len() / 3] {
        let err = decode_image(&dog[..cut])
            .expect_err("truncated")
            .to_string();
        assert!(err.contains("image"), "cut {cut}: {err}");
    }
    let mut garbled = dog.clone();
    for b in garbled.iter_mut().skip(600).step_by(7) {
        *b = 0xFF;
    }
    // Garbled entropy data may still decode to something: it must not panic.
    let _ = decode_image(&garbled);

    // Animated GIF: the first frame (red), not the second (blue).
    let gif = decode_image(&edge("animated.gif")).expect("gif");
    assert!(
        gif.pixels().all(|p| p.0 == [255, 0, 0]),
        "{:?}",
        gif.get_pixel(0, 0)
    );

    // CMYK JPEG: converted to RGB like Pillow does (within JPEG decoding noise).
    let ours = decode_image(&edge("cmyk.jpg")).expect("cmyk");
    let pillow = decode_image(&edge("pillow_cmyk_rgb.png")).expect("reference");
    assert_eq!(ours.dimensions(), pillow.dimensions());
    let worst = ours
        .as_raw()
        .iter()
        .zip(pillow.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    assert!(
        worst <= 3,
        "CMYK conversion differs from Pillow by {worst} levels"
    );
}
