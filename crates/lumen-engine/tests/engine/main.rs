//! Integration tests for lumen-engine, against real model files and
//! reference outputs from Hugging Face transformers and llama.cpp.
//!
//! Needs the assets fetched by `scripts/fetch-assets.sh` (the test command
//! runs it). Fixtures under `tests/fixtures/` were made by
//! `scripts/references/make_all.sh`.

mod common;

/// The allocator the app and the CLI use, so that every test here (the
/// reference parity ones above all) runs in recycled, dirty buffers.
#[global_allocator]
static ALLOC: lumen_engine::alloc::Recycler = lumen_engine::alloc::Recycler;

mod bad_input;
mod generation;
mod image_preprocess;
mod mllama;
mod parity;
mod quant_types;
mod smollm2;
mod synthetic_vision;
mod templates;
mod tokenizers;
