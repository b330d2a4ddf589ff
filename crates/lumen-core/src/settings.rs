//! The app's settings: a small JSON file in the platform's config folder
//! (`LUMEN_CONFIG_DIR` overrides it). They hold what must be known before
//! the history opens (its folder) and what the user chose (default model,
//! device, theme). A missing or unreadable file means the defaults; the
//! file is written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Light, dark, or as the system is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Theme {
    /// Follow the system's light/dark setting.
    #[default]
    System,
    /// Always light.
    Light,
    /// Always dark.
    Dark,
}

/// What the user chose on the settings page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(default)]
pub struct AppSettings {
    /// The model new chats use (an installed model's id or a path).
    pub default_model: Option<String>,
    /// The colour theme.
    pub theme: Theme,
    /// `auto`, `cpu`, or a GPU this build supports (`cuda`, `metal`; see
    /// [`SystemInfo::devices`]). Used for the next model loaded.
    pub device: String,
    /// The data folder (history, attachments); `None` for the platform's.
    /// Used from the next start; what is in the old folder stays there.
    pub data_dir: Option<PathBuf>,
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            default_model: None,
            theme: Theme::System,
            device: "auto".into(),
            data_dir: None,
        }
    }
}

/// Facts for the settings page's About block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct SystemInfo {
    /// Lumen's version.
    pub version: String,
    /// The devices this build can use, `auto` and `cpu` first.
    pub devices: Vec<String>,
    /// This machine's memory, bytes.
    pub total_memory: u64,
    /// The data folder in use now.
    pub data_dir: PathBuf,
    /// The data folder when none is chosen.
    pub default_data_dir: Option<PathBuf>,
    /// Where these settings are kept.
    pub settings_file: PathBuf,
    /// Where downloaded models are (the Hugging Face cache).
    pub hub_cache: PathBuf,
}

/// Where the settings file is: `$LUMEN_CONFIG_DIR/settings.json`, else the
/// platform's config folder (`~/.config/lumen` on Linux).
pub fn settings_file() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LUMEN_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("settings.json"));
    }
    directories::ProjectDirs::from("app", "lumen", "Lumen")
        .map(|d| d.config_dir().join("settings.json"))
        .ok_or_else(|| {
            CoreError::new(
                "config",
                "no home folder found; set LUMEN_CONFIG_DIR to choose where settings are kept",
            )
        })
}

impl AppSettings {
    /// Reads the settings; the defaults when the file is missing or cannot
    /// be read (a warning is logged; the file is left for the user).
    pub fn load(path: &Path) -> Self {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the settings; using defaults");
                return Self::default();
            }
        };
        match serde_json::from_str::<Self>(&text) {
            Ok(s) => s.normalized(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the settings file is not valid; using defaults");
                Self::default()
            }
        }
    }

    /// Checks the settings and writes them (atomically).
    pub fn save(&self, path: &Path) -> Result<Self> {
        let settings = self.clone().normalized();
        settings.check()?;
        let bad = |e: std::io::Error| {
            CoreError::new(
                "settings",
                format!("cannot save the settings to {}: {e}", path.display()),
            )
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(bad)?;
        let mut json = serde_json::to_string_pretty(&settings)
            .map_err(|e| CoreError::new("settings", e.to_string()))?;
        json.push('\n');
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(bad)?;
        std::fs::rename(&tmp, path).map_err(bad)?;
        Ok(settings)
    }

    /// Blank strings mean "not set".
    fn normalized(mut self) -> Self {
        self.default_model = self
            .default_model
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty());
        self.data_dir = self.data_dir.filter(|d| !d.as_os_str().is_empty());
        if self.device.trim().is_empty() {
            self.device = "auto".into();
        }
        self
    }

    fn check(&self) -> Result<()> {
        let device: lumen_engine::DeviceRequest =
            self.device
                .parse()
                .map_err(|e: lumen_engine::EngineError| {
                    CoreError::new("invalid_argument", e.to_string())
                })?;
        let built = lumen_engine::device::built_devices();
        let kind = match device {
            lumen_engine::DeviceRequest::Cuda(_) => Some("cuda"),
            lumen_engine::DeviceRequest::Metal(_) => Some("metal"),
            _ => None,
        };
        if let Some(kind) = kind
            && !built.contains(&kind)
        {
            return Err(CoreError::new(
                "invalid_argument",
                format!(
                    "this build of Lumen cannot use {kind}; it was built for {}",
                    built.join(", ")
                ),
            ));
        }
        if let Some(dir) = &self.data_dir {
            if !dir.is_absolute() {
                return Err(CoreError::new(
                    "invalid_argument",
                    format!(
                        "the data folder must be a full path, not `{}`",
                        dir.display()
                    ),
                ));
            }
            if dir.exists() && !dir.is_dir() {
                return Err(CoreError::new(
                    "invalid_argument",
                    format!("{} is a file, not a folder", dir.display()),
                ));
            }
        }
        Ok(())
    }

    /// The device to load models on.
    pub fn device_request(&self) -> lumen_engine::DeviceRequest {
        self.device.parse().unwrap_or_default()
    }
}

/// The devices a user can choose: `auto`, then those built in.
pub(crate) fn choosable_devices() -> Vec<String> {
    std::iter::once("auto")
        .chain(lumen_engine::device::built_devices())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_broken_files_mean_defaults_and_saving_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("nested/settings.json");
        assert_eq!(AppSettings::load(&path), AppSettings::default());
        let chosen = AppSettings {
            default_model: Some("  bartowski/Llama-3.2-3B-Instruct-GGUF ".into()),
            theme: Theme::Dark,
            device: "cpu".into(),
            data_dir: Some(dir.path().join("data")),
        };
        let saved = chosen.save(&path).expect("save");
        assert_eq!(
            saved.default_model.as_deref(),
            Some("bartowski/Llama-3.2-3B-Instruct-GGUF")
        );
        assert_eq!(AppSettings::load(&path), saved);
        std::fs::write(&path, "{ not json").expect("write");
        assert_eq!(AppSettings::load(&path), AppSettings::default());
        // Unknown fields (a newer version's) and missing ones are fine.
        std::fs::write(&path, r#"{"theme": "light", "future": 1}"#).expect("write");
        let s = AppSettings::load(&path);
        assert_eq!(s.theme, Theme::Light);
        assert_eq!(s.device, "auto");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("settings.json");
        let bad_device = AppSettings {
            device: "tpu".into(),
            ..AppSettings::default()
        };
        let e = bad_device.save(&path).expect_err("unknown device");
        assert!(e.message.contains("tpu"), "{e}");
        if !lumen_engine::device::built_devices().contains(&"cuda") {
            let cuda = AppSettings {
                device: "cuda".into(),
                ..AppSettings::default()
            };
            let e = cuda.save(&path).expect_err("not built with CUDA");
            assert!(e.message.contains("cannot use cuda"), "{e}");
        }
        let relative = AppSettings {
            data_dir: Some("data".into()),
            ..AppSettings::default()
        };
        assert!(relative.save(&path).is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let on_a_file = AppSettings {
            data_dir: Some(file),
            ..AppSettings::default()
        };
        assert!(on_a_file.save(&path).is_err());
        assert!(!path.exists(), "nothing saved");
    }
}
