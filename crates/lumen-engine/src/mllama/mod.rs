//! Llama 3.2 Vision ("mllama"): image preprocessing so far; the vision
//! encoder and the cross-attention decoder follow (issue 3).
//!
//! Reference: transformers' `models/mllama/`.

pub mod config;
pub mod image_processor;
pub mod masks;
pub mod text;
pub mod vision;
