//! The curated catalogue (`assets/catalogue.json`): the Llama 3.2 / 3.3
//! models Lumen recommends, where to get each variant, and how much memory
//! each needs, so the app can say whether a model fits this machine
//! before anything is downloaded.
//!
//! The catalogue names repositories and files only. Sizes and hashes are
//! never written into it: they come from the Hub's listing when a model is
//! viewed or pulled, so they cannot go stale. Until then the memory a
//! variant needs is estimated from the model's exact parameter count:
//!
//! ```text
//! weights  = parameters × bits per weight of the quantization / 8
//!            (or the real file sizes, once listed)
//! kv cache = 2 × layers × kv_heads × head_dim × context × 2 bytes (f16)
//! needed   = weights + kv cache + runtime overhead (+ the vision encoder's
//!            working memory for vision models)
//! ```

use serde::{Deserialize, Serialize};

use crate::download::PullRequest;
use crate::error::HubError;
use crate::library::split_spec;
use crate::names::{RepoFile, RepoId, Revision};

/// The catalogue shipped with Lumen.
const BUILTIN: &str = include_str!("../../../assets/catalogue.json");

/// The context the estimates assume (the app's default).
pub const DEFAULT_CONTEXT: u64 = 8192;

/// Working memory outside weights and KV cache: activations, logits,
/// scratch buffers, the tokenizer.
const RUNTIME_OVERHEAD: u64 = 400_000_000;

/// Extra working memory of the vision encoder for a 4-tile image.
const VISION_OVERHEAD: u64 = 1_200_000_000;

/// The catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    /// Format version (1).
    pub version: u32,
    /// A note for people editing the file.
    #[serde(default)]
    pub about: String,
    /// The models, in display order.
    pub models: Vec<CatalogueModel>,
}

/// A model and its variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct CatalogueModel {
    /// Stable id, e.g. `llama-3.2-3b-instruct`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `llama-3.2`, `llama-3.2-vision`, `llama-3.3`.
    pub family: String,
    /// One line for the model list.
    pub summary: String,
    /// What it can do.
    pub capabilities: Vec<Capability>,
    /// Licence id, as the Hub's model card names it.
    pub license: String,
    /// Where the licence text is.
    pub license_url: String,
    /// Shown first on the welcome page.
    #[serde(default)]
    pub recommended: bool,
    /// The shapes the memory estimate needs.
    pub architecture: Architecture,
    /// Where to get it; the first is the default.
    pub variants: Vec<Variant>,
}

/// A capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Capability {
    /// Chat and completion.
    Text,
    /// Images in the prompt.
    Vision,
    /// Tool (function) calling.
    Tools,
}

/// Model shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Architecture {
    /// Exact parameter count.
    pub parameters: u64,
    /// Transformer layers.
    pub layers: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// The longest context the model was trained for.
    pub max_context: u64,
    /// Has a vision encoder.
    #[serde(default)]
    pub vision: bool,
}

/// File format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Format {
    /// One GGUF file.
    Gguf,
    /// A Hugging Face safetensors folder.
    Safetensors,
}

/// Where one variant comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Variant {
    /// Id within the model, e.g. `q4_k_m`.
    pub id: String,
    /// The weights' quantization as stored, e.g. `Q4_K_M`, `BF16`.
    pub quant: String,
    /// GGUF or safetensors.
    pub format: Format,
    /// The repository.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(default = "main")]
    pub revision: String,
    /// The files (empty: the repository's model files).
    #[serde(default)]
    pub files: Vec<String>,
    /// Needs its licence accepted on the Hub and a token.
    #[serde(default)]
    pub gated: bool,
    /// The quantization Lumen applies at load (safetensors models too
    /// big to run unquantized), which is what the memory estimate uses.
    #[serde(default)]
    pub load_quant: Option<String>,
}

fn main() -> String {
    "main".into()
}

/// Whether a model fits in this machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Fit {
    /// Fits in the memory free now.
    Comfortable,
    /// Fits in the machine's memory, but other programs must make room.
    Tight,
    /// Does not fit.
    TooLarge,
}

/// The memory a variant needs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct MemoryEstimate {
    /// The weights as loaded.
    pub weights: u64,
    /// The KV cache at the context assumed.
    pub kv_cache: u64,
    /// Working memory.
    pub overhead: u64,
    /// The context assumed.
    pub context: u64,
}

impl MemoryEstimate {
    /// Bytes in all.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.overhead
    }

    /// Whether it fits a machine with `total` bytes of memory, `available`
    /// of them free now. Leaves 1.5 GB for the system and the app.
    pub fn fit(&self, total: u64, available: u64) -> Fit {
        const HEADROOM: u64 = 1_500_000_000;
        let need = self.total();
        if need <= available.saturating_sub(HEADROOM / 3) {
            Fit::Comfortable
        } else if need <= total.saturating_sub(HEADROOM) {
            Fit::Tight
        } else {
            Fit::TooLarge
        }
    }
}

/// Average bits per weight of a quantization over a Llama model (the
/// `_M` mixes keep some tensors at 6 bits).
pub fn bits_per_weight(quant: &str) -> Option<f64> {
    Some(match quant.to_ascii_uppercase().as_str() {
        "Q4_0" => 4.5,
        "Q4_1" => 5.0,
        "Q4_K" | "Q4_K_S" => 4.5,
        "Q4_K_M" => 4.9,
        "Q5_K" | "Q5_K_S" => 5.5,
        "Q5_K_M" => 5.7,
        "Q6_K" => 6.5625,
        "Q8_0" => 8.5,
        "F16" | "BF16" => 16.0,
        "F32" => 32.0,
        _ => return None,
    })
}

impl Catalogue {
    /// The catalogue shipped with Lumen.
    pub fn builtin() -> Result<Self, HubError> {
        Self::parse(BUILTIN)
    }

    /// Parses and checks a catalogue: known fields only, valid repository
    /// ids and file names, unique ids, known quantizations.
    pub fn parse(json: &str) -> Result<Self, HubError> {
        let invalid = |reason: String| HubError::InvalidResponse {
            url: "catalogue".into(),
            reason,
        };
        let de = &mut serde_json::Deserializer::from_str(json);
        let cat: Catalogue =
            serde_path_to_error::deserialize(de).map_err(|e| invalid(e.to_string()))?;
        if cat.version != 1 {
            return Err(invalid(format!("unknown version {}", cat.version)));
        }
        let mut ids = std::collections::HashSet::new();
        for m in &cat.models {
            if !ids.insert(&m.id) {
                return Err(invalid(format!("model id `{}` appears twice", m.id)));
            }
            if m.variants.is_empty() {
                return Err(invalid(format!("`{}` has no variants", m.id)));
            }
            let mut vids = std::collections::HashSet::new();
            for v in &m.variants {
                if !vids.insert(&v.id) {
                    return Err(invalid(format!("`{}` has variant `{}` twice", m.id, v.id)));
                }
                RepoId::parse(&v.repo)?;
                crate::names::Revision::parse(&v.revision)?;
                for f in &v.files {
                    RepoFile::parse(f)?;
                }
                let quant = v.load_quant.as_deref().unwrap_or(&v.quant);
                if bits_per_weight(quant).is_none() {
                    return Err(invalid(format!(
                        "`{}/{}`: unknown quantization `{quant}`",
                        m.id, v.id
                    )));
                }
            }
        }
        Ok(cat)
    }

    /// A model by id.
    pub fn model(&self, id: &str) -> Option<&CatalogueModel> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The catalogue entry and variant that download from `repo` (and,
    /// for GGUF repositories, `file`).
    pub fn find_variant(
        &self,
        repo: &str,
        file: Option<&str>,
    ) -> Option<(&CatalogueModel, &Variant)> {
        self.models.iter().find_map(|m| {
            m.variants
                .iter()
                .find(|v| {
                    v.repo.eq_ignore_ascii_case(repo)
                        && file.is_none_or(|f| v.files.is_empty() || v.files.iter().any(|x| x == f))
                })
                .map(|v| (m, v))
        })
    }
}

/// What a model name means: what to download, and the catalogue entry
/// (model id, variant id) it is, if any.
#[derive(Debug, Clone)]
pub struct Target {
    /// What to download.
    pub request: PullRequest,
    /// `(model id, variant id)` when the catalogue knows it.
    pub catalogue: Option<(String, String)>,
}

impl Catalogue {
    /// Reads a model name as users write it: a catalogue id, optionally
    /// `:VARIANT` (`llama-3.2-3b-instruct:q8_0`), or a repository,
    /// optionally `:FILE` (`owner/name:model.gguf`). `revision` `main`
    /// means the catalogue's own revision for catalogue models.
    pub fn target(&self, spec: &str, revision: &str) -> Result<Target, HubError> {
        let (id, rest) = split_spec(spec.trim());
        let revision_arg = Revision::parse(revision)?;
        if !id.contains('/') {
            let model = self.model(id).ok_or_else(|| HubError::UnknownModel {
                name: id.to_string(),
                known: self.models.iter().map(|m| m.id.clone()).collect(),
            })?;
            let variant = match rest {
                Some(v) => model.variant(v).ok_or_else(|| HubError::UnknownModel {
                    name: format!("{id}:{v}"),
                    known: model
                        .variants
                        .iter()
                        .map(|x| format!("{id}:{}", x.id))
                        .collect(),
                })?,
                None => model.default_variant(),
            };
            let revision = if revision == "main" {
                Revision::parse(&variant.revision)?
            } else {
                revision_arg
            };
            return Ok(Target {
                request: PullRequest {
                    repo: RepoId::parse(&variant.repo)?,
                    revision,
                    files: variant
                        .files
                        .iter()
                        .map(|f| RepoFile::parse(f))
                        .collect::<Result<_, _>>()?,
                },
                catalogue: Some((model.id.clone(), variant.id.clone())),
            });
        }
        let repo = RepoId::parse(id)?;
        let files = rest.map(RepoFile::parse).transpose()?.into_iter().collect();
        let catalogue = self
            .find_variant(id, rest)
            .map(|(m, v)| (m.id.clone(), v.id.clone()));
        Ok(Target {
            request: PullRequest {
                repo,
                revision: revision_arg,
                files,
            },
            catalogue,
        })
    }
}

impl CatalogueModel {
    /// The default variant.
    pub fn default_variant(&self) -> &Variant {
        // `parse` guarantees at least one.
        &self.variants[0]
    }

    /// A variant by id.
    pub fn variant(&self, id: &str) -> Option<&Variant> {
        self.variants.iter().find(|v| v.id.eq_ignore_ascii_case(id))
    }

    /// Memory needed for `variant` at `context` tokens; `file_bytes`, when
    /// the Hub's listing is known, replaces the estimate of the weights
    /// (for variants loaded as stored).
    pub fn memory(
        &self,
        variant: &Variant,
        context: u64,
        file_bytes: Option<u64>,
    ) -> MemoryEstimate {
        let a = &self.architecture;
        let weights = match (&variant.load_quant, file_bytes) {
            (None, Some(bytes)) => bytes,
            (q, _) => {
                let bits = bits_per_weight(q.as_deref().unwrap_or(&variant.quant)).unwrap_or(16.0);
                (a.parameters as f64 * bits / 8.0) as u64
            }
        };
        let context = context.min(a.max_context);
        let kv_cache = 2 * a.layers * a.kv_heads * a.head_dim * context * 2;
        let overhead = RUNTIME_OVERHEAD + if a.vision { VISION_OVERHEAD } else { 0 };
        MemoryEstimate {
            weights,
            kv_cache,
            overhead,
            context,
        }
    }

    /// Whether it reads images.
    pub fn has(&self, c: Capability) -> bool {
        self.capabilities.contains(&c)
    }
}

/// This machine's memory: `(total, available)` bytes.
pub fn system_memory() -> (u64, u64) {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    (sys.total_memory(), sys.available_memory())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalogue_is_valid_and_complete() {
        let cat = Catalogue::builtin().expect("catalogue");
        for id in [
            "llama-3.2-1b-instruct",
            "llama-3.2-3b-instruct",
            "llama-3.2-11b-vision-instruct",
            "llama-3.2-90b-vision-instruct",
            "llama-3.3-70b-instruct",
        ] {
            assert!(cat.model(id).is_some(), "{id}");
        }
        let one_b = cat.model("llama-3.2-1b-instruct").expect("1b");
        let quants: Vec<&str> = one_b.variants.iter().map(|v| v.quant.as_str()).collect();
        for q in ["Q4_K_M", "Q5_K_M", "Q8_0", "F16", "BF16"] {
            assert!(quants.contains(&q), "{q}");
        }
        assert!(
            one_b
                .variants
                .iter()
                .any(|v| v.repo == "meta-llama/Llama-3.2-1B-Instruct" && v.gated)
        );
        let vision = cat.model("llama-3.2-11b-vision-instruct").expect("11b");
        assert!(vision.has(Capability::Vision));
        assert!(
            vision.variants.iter().any(|v| !v.gated),
            "an ungated mirror"
        );
        let (m, v) = cat
            .find_variant(
                "bartowski/Llama-3.2-3B-Instruct-GGUF",
                Some("Llama-3.2-3B-Instruct-Q8_0.gguf"),
            )
            .expect("found");
        assert_eq!(
            (m.id.as_str(), v.id.as_str()),
            ("llama-3.2-3b-instruct", "q8_0")
        );
    }

    /// The parameter counts follow from each model's config.json shapes.
    #[test]
    fn parameter_counts_match_the_configs() {
        // vocab, hidden, layers, intermediate, heads, kv heads, head dim, tied
        let dense = |v: u64, h: u64, l: u64, i: u64, q: u64, kv: u64, d: u64, tied: bool| {
            let layer = h * q * d * 2 + h * kv * d * 2 + 3 * h * i + 2 * h;
            l * layer + v * h * if tied { 1 } else { 2 } + h
        };
        let cat = Catalogue::builtin().expect("catalogue");
        let p = |id: &str| cat.model(id).expect(id).architecture.parameters;
        assert_eq!(
            p("llama-3.2-1b-instruct"),
            dense(128_256, 2048, 16, 8192, 32, 8, 64, true)
        );
        assert_eq!(
            p("llama-3.2-3b-instruct"),
            dense(128_256, 3072, 28, 8192, 24, 8, 128, true)
        );
        assert_eq!(
            p("llama-3.3-70b-instruct"),
            dense(128_256, 8192, 80, 28_672, 64, 8, 128, false)
        );
    }

    #[test]
    fn memory_estimates_and_fit() {
        let cat = Catalogue::builtin().expect("catalogue");
        let m = cat.model("llama-3.2-1b-instruct").expect("1b");
        let v = m.variant("q4_k_m").expect("q4");
        let e = m.memory(v, DEFAULT_CONTEXT, None);
        // 16 layers × 8 heads × 64 × 8192 tokens × K and V × 2 bytes.
        assert_eq!(e.kv_cache, 268_435_456);
        assert_eq!(e.weights, (1_235_814_400f64 * 4.9 / 8.0) as u64);
        // The real file size replaces the estimate.
        assert_eq!(
            m.memory(v, DEFAULT_CONTEXT, Some(800_000_000)).weights,
            800_000_000
        );
        let gb = 1_000_000_000;
        assert_eq!(e.fit(16 * gb, 8 * gb), Fit::Comfortable);
        assert_eq!(e.fit(4 * gb, gb), Fit::Tight);
        assert_eq!(e.fit(2 * gb, gb), Fit::TooLarge);
        let big = cat.model("llama-3.3-70b-instruct").expect("70b");
        let e = big.memory(big.default_variant(), DEFAULT_CONTEXT, None);
        assert_eq!(e.fit(32 * gb, 30 * gb), Fit::TooLarge);
        assert!(e.total() > 40 * gb && e.total() < 50 * gb, "{}", e.total());
        // Vision safetensors are quantized at load: estimated at Q4_K.
        let vis = cat.model("llama-3.2-11b-vision-instruct").expect("11b");
        let e = vis.memory(vis.default_variant(), DEFAULT_CONTEXT, Some(21_000_000_000));
        assert!(e.total() < 9 * gb, "{}", e.total());
    }

    #[test]
    fn model_names_as_users_write_them() {
        let cat = Catalogue::builtin().expect("catalogue");
        let t = cat
            .target("llama-3.2-1b-instruct:q8_0", "main")
            .expect("variant");
        assert_eq!(
            t.request.repo.to_string(),
            "bartowski/Llama-3.2-1B-Instruct-GGUF"
        );
        assert_eq!(
            t.request.files[0].as_str(),
            "Llama-3.2-1B-Instruct-Q8_0.gguf"
        );
        assert_eq!(
            t.catalogue,
            Some(("llama-3.2-1b-instruct".into(), "q8_0".into()))
        );
        let t = cat
            .target("llama-3.2-3b-instruct", "main")
            .expect("default");
        assert_eq!(
            t.request.files[0].as_str(),
            "Llama-3.2-3B-Instruct-Q4_K_M.gguf"
        );
        let t = cat
            .target("someone/Model-GGUF:model.gguf", "v2")
            .expect("repo");
        assert_eq!(t.request.revision.as_str(), "v2");
        assert!(t.catalogue.is_none());
        let t = cat
            .target("unsloth/Llama-3.2-11B-Vision-Instruct", "main")
            .expect("mirror");
        assert_eq!(
            t.catalogue.map(|c| c.0).as_deref(),
            Some("llama-3.2-11b-vision-instruct")
        );
        for bad in ["llama-9", "llama-3.2-1b-instruct:q1", "../x/y", "a/b:../c"] {
            assert!(cat.target(bad, "main").is_err(), "{bad}");
        }
        let e = cat.target("llama-9", "main").expect_err("unknown");
        assert!(e.to_string().contains("llama-3.2-3b-instruct"), "{e}");
    }

    #[test]
    fn broken_catalogues_are_refused() {
        let good = Catalogue::builtin().expect("catalogue");
        let mut json: serde_json::Value = serde_json::to_value(&good).expect("json");
        json["models"][0]["variants"][0]["repo"] = "../etc".into();
        assert!(Catalogue::parse(&json.to_string()).is_err());
        let mut json: serde_json::Value = serde_json::to_value(&good).expect("json");
        json["models"][1]["id"] = json["models"][0]["id"].clone();
        assert!(Catalogue::parse(&json.to_string()).is_err());
        let mut json: serde_json::Value = serde_json::to_value(&good).expect("json");
        json["models"][0]["surprise"] = 1.into();
        assert!(Catalogue::parse(&json.to_string()).is_err());
        assert!(Catalogue::parse("{").is_err());
    }

    #[test]
    fn this_machine_has_memory() {
        let (total, available) = system_memory();
        assert!(total > 0 && available <= total);
    }
}
