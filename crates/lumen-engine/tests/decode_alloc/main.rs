//! The decoding step allocates nothing: a counting global allocator (this
//! test binary's own) sees every allocation on every thread while a
//! model decodes tokens after a warm-up.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lumen_engine::llama::Logits;

#[allow(dead_code)]
#[path = "../engine/common.rs"]
mod common;

/// The system allocator, counting allocations while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

fn count(layout: Layout) {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout);
        // SAFETY: the caller's pointer, layout and size, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's pointer and layout, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Held by each test while it runs: the count is process-wide, and the
/// test harness runs tests on threads of their own at once.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Measured steps: more than the 63 jobs that fill a block of rayon's
/// queue for jobs sent from outside the pool (which would allocate).
const STEPS: usize = 100;

/// Runs `step` (one decoding step on `logits`) on a thread of rayon's
/// pool, as `Session::generate` does: 8 unmeasured steps (they make the
/// conversation's buffers), then [`STEPS`] counted ones; checks that those
/// allocated nothing.
fn assert_steps_allocate_nothing(
    logits: &mut Vec<f32>,
    mut step: impl FnMut(&mut Vec<f32>) + Send,
) {
    rayon::scope(|_| {
        for _ in 0..8 {
            step(logits);
        }
        ALLOCATIONS.store(0, Ordering::Relaxed);
        BYTES.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        for _ in 0..STEPS {
            step(logits);
        }
        COUNTING.store(false, Ordering::Relaxed);
    });
    let (n, bytes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    assert_eq!(
        n, 0,
        "{STEPS} decoding steps made {n} allocations ({bytes} bytes)"
    );
}

#[test]
fn decoding_a_token_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for model in [
        common::load(&common::smollm2_path()),
        common::load_exact(&common::smollm2_path()),
    ] {
        if lumen_engine::qmm::cpu_kernels() == "scalar" {
            // LUMEN_CPU_KERNELS=scalar: candle's kernels hold this model's
            // weights, and it decodes through the general pass.
            assert!(!model.has_decode_pass());
            return;
        }
        assert!(model.has_decode_pass());
        let mut cache = model.new_cache(512);
        let prompt: Vec<u32> = (0..30u32).map(|i| 300 + (i * 71) % 3000).collect();
        let mut logits = model
            .forward_text(&prompt, &mut cache, Logits::Last)
            .and_then(|l| Ok(l.to_vec1::<f32>()?))
            .expect("prefill");
        assert_steps_allocate_nothing(&mut logits, |logits| {
            let token = argmax(logits);
            model
                .forward_one_into(token, &mut cache, None, logits)
                .expect("decode step");
        });
    }
}

/// A vision model's decoding step over an image allocates nothing either
/// (the tiny checkpoint, quantized to Q8_0 so its weights take the
/// single-token pass; random vision states stand in for an image: the
/// cross-attention layers read them as they would an encoded one).
#[test]
fn decoding_a_token_that_sees_an_image_allocates_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use lumen_engine::mllama::config::MllamaConfig;
    use lumen_engine::mllama::text::TextModel;
    use lumen_engine::weights::{DenseOptions, WeightSource};
    let dir = common::fixtures().join("mllama/tiny-f32");
    let cfg = MllamaConfig::from_file(&dir.join("config.json")).expect("config");
    let opts = DenseOptions {
        dtype: candle_core::DType::F32,
        quantize: Some(lumen_engine::GgmlDType::Q8_0),
    };
    let source =
        WeightSource::safetensors_dir(&dir, "language_model.model.", opts).expect("weights");
    let dev = candle_core::Device::Cpu;
    let text = TextModel::load(&source, &cfg, &dev, &mut || {}).expect("text");
    if lumen_engine::qmm::cpu_kernels() == "scalar" {
        assert!(!text.has_decode_pass());
        return;
    }
    assert!(text.has_decode_pass());
    let tiles = cfg.vision.max_num_tiles;
    let states = candle_core::Tensor::randn(
        0f32,
        1.0,
        (tiles, cfg.patches_per_tile(), cfg.text.hidden_size),
        &dev,
    )
    .expect("states");
    // Two of the tiles in use; f16 image keys and values, as the app keeps.
    let ctx = text
        .image_context(&[(states, 2)], lumen_engine::llama::KvDtype::F16)
        .expect("context");
    let mut prompt = vec![cfg.image_token_index];
    prompt.extend((0..20u32).map(|i| 10 + (i * 7) % 300));
    let rows = vec![vec![true]; prompt.len()];
    let mut cache = lumen_engine::llama::KvCache::new(
        cfg.text.num_layers,
        512,
        lumen_engine::llama::KvDtype::F16,
    );
    let mut logits = text
        .forward(&prompt, &mut cache, Some((&ctx, &rows)), Logits::Last)
        .and_then(|l| Ok(l.to_vec1::<f32>()?))
        .expect("prefill");
    let step_rows = [vec![true]];
    assert_steps_allocate_nothing(&mut logits, |logits| {
        let token = argmax(logits);
        text.forward_one_into(token, &mut cache, Some((&ctx, &step_rows)), logits)
            .expect("decode step");
    });
}
