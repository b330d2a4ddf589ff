//! Lumen's inference engine: Llama 3.x text models on [candle], in-process.
//!
//! - [`Model::load`] opens a GGUF file or a Hugging Face folder
//!   (`config.json` + safetensors) and builds the tokenizer and chat
//!   template that come with it.
//! - A [`Session`] holds one conversation's KV cache and streams tokens;
//!   a follow-up prompt that shares a prefix with the cached tokens only
//!   computes the new part.
//! - A [`Chat`] renders messages with the model's own Jinja chat template.
//!
//! ```no_run
//! use std::sync::Arc;
//! use lumen_engine::{CancelToken, Chat, GenerateParams, LoadOptions, Model, Session};
//!
//! # fn main() -> lumen_engine::Result<()> {
//! let model = Arc::new(Model::load("model.gguf".as_ref(), &LoadOptions::default(), &mut |_| {})?);
//! let mut chat = Chat::new(Session::new(model, None), Some("Be brief."));
//! let reply = chat.send("Name the capital of Germany.", &GenerateParams::default(),
//!                       &CancelToken::new(), &mut |piece| print!("{piece}"))?;
//! eprintln!("\n{:.1} tok/s", reply.decode_tok_s());
//! # Ok(()) }
//! ```
//!
//! [candle]: https://github.com/huggingface/candle

/// Defines `fn $name(args)` that runs the `#[inline(always)]` function
/// `$lanes` compiled for AVX-512 F or AVX2 + FMA when the CPU has them
/// (chosen at run time; AVX-512 unless `LUMEN_CPU_KERNELS` asks for less),
/// else as built: loops written over plain arrays become the widest vector
/// instructions available.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $lanes:ident) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $lanes($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $lanes($($arg),*)
                }
                if $crate::qmm::Isa::avx512f_allowed() {
                    // SAFETY: the CPU has AVX-512 F.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::simd::avx2::runs_here() {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $lanes($($arg),*)
        }
    };
}

pub mod alloc;
mod awake;
mod bpe;
pub mod config;
mod decode;
pub mod decode_attention;
pub mod device;
mod error;
mod f16;
mod gelu;
pub mod gguf;
pub mod kernels;
pub mod llama;
pub mod mllama;
pub mod model;
mod prefill_attention;
mod q4k;
pub mod qmm;
pub mod quant;
mod residual;
pub mod rope;
pub mod sampling;
pub mod session;
mod simd;
mod softmax;
mod swiglu;
pub mod synthetic;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use device::{DeviceRequest, SelectedDevice, select_device};
pub use error::{EngineError, Result};
pub use llama::KvDtype;
pub use model::{LoadOptions, LoadProgress, Model, ModelFormat, ModelInfo};
pub use sampling::SamplingParams;
pub use session::{CancelToken, Chat, Completion, GenerateParams, Session, StopReason};
pub use template::{ChatTemplate, Message};
pub use tokenizer::Tokenizer;

/// Re-exported so callers can name dtypes without depending on candle.
pub use candle_core::{DType, quantized::GgmlDType};
