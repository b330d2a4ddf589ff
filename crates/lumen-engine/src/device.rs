//! Choosing where to compute: CPU always; CUDA or Metal when Lumen was built
//! with the `cuda` / `metal` feature and the hardware is there.

use std::str::FromStr;

use candle_core::Device;

use crate::error::EngineError;

/// Fixes the number of compute threads: `n`, else `RAYON_NUM_THREADS` when
/// it is set, else one per core. rayon reads the variable once, when its
/// pool starts; candle reads it on every f32 matmul and, when it is unset,
/// counts the cores again each time by reading `/proc/cpuinfo` (about 1% of
/// decoding), so setting it always is worth it.
///
/// # Safety
/// It writes the process environment: call it first thing in `main`,
/// before any other thread exists.
#[allow(unsafe_code)]
pub unsafe fn set_compute_threads(n: Option<usize>) {
    const VAR: &str = "RAYON_NUM_THREADS";
    let from_env = || {
        std::env::var(VAR)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
    };
    let n = match n.filter(|n| *n > 0).or_else(from_env) {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    // SAFETY: the caller guarantees no other thread exists yet.
    unsafe { std::env::set_var(VAR, n.to_string()) };
}

/// Which device the user asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The best available: CUDA, then Metal, then CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA GPU with this ordinal.
    Cuda(usize),
    /// Metal GPU with this ordinal.
    Metal(usize),
}

impl FromStr for DeviceRequest {
    type Err = EngineError;

    /// Parses `auto`, `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, n)) => {
                let n = n.parse().map_err(|_| {
                    EngineError::InvalidArgument(format!("bad device ordinal in `{s}`"))
                })?;
                (k, n)
            }
            None => (s, 0),
        };
        match kind.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(ordinal)),
            "metal" => Ok(Self::Metal(ordinal)),
            _ => Err(EngineError::InvalidArgument(format!(
                "unknown device `{s}` (expected auto, cpu, cuda[:N] or metal[:N])"
            ))),
        }
    }
}

/// A chosen device, with a note for the user when the request could not be
/// honoured and the CPU is used instead.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The device to compute on.
    pub device: Device,
    /// Why we fell back to the CPU, if we did.
    pub fallback_reason: Option<String>,
}

/// Resolves a request to a device. An explicit GPU request that cannot be
/// met falls back to the CPU with a reason rather than failing, so that a
/// model still answers.
pub fn select_device(request: DeviceRequest) -> SelectedDevice {
    let cpu = |reason: Option<String>| SelectedDevice {
        device: Device::Cpu,
        fallback_reason: reason,
    };
    match request {
        DeviceRequest::Cpu => cpu(None),
        DeviceRequest::Cuda(i) => match try_cuda(i) {
            Ok(d) => SelectedDevice {
                device: d,
                fallback_reason: None,
            },
            Err(e) => cpu(Some(format!(
                "CUDA device {i} is unavailable ({e}); using the CPU"
            ))),
        },
        DeviceRequest::Metal(i) => match try_metal(i) {
            Ok(d) => SelectedDevice {
                device: d,
                fallback_reason: None,
            },
            Err(e) => cpu(Some(format!(
                "Metal device {i} is unavailable ({e}); using the CPU"
            ))),
        },
        DeviceRequest::Auto => {
            if let Ok(d) = try_cuda(0) {
                return SelectedDevice {
                    device: d,
                    fallback_reason: None,
                };
            }
            if let Ok(d) = try_metal(0) {
                return SelectedDevice {
                    device: d,
                    fallback_reason: None,
                };
            }
            cpu(None)
        }
    }
}

/// The devices this build can compute on, as [`DeviceRequest`] names:
/// `cpu`, then `cuda` and `metal` when built with them (whether a GPU is
/// present is found out when a model loads).
pub fn built_devices() -> Vec<&'static str> {
    let mut devices = vec!["cpu"];
    if candle_core::utils::cuda_is_available() {
        devices.push("cuda");
    }
    if candle_core::utils::metal_is_available() {
        devices.push("metal");
    }
    devices
}

fn try_cuda(ordinal: usize) -> Result<Device, String> {
    if !candle_core::utils::cuda_is_available() {
        return Err("this build of Lumen has no CUDA support".into());
    }
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

fn try_metal(ordinal: usize) -> Result<Device, String> {
    if !candle_core::utils::metal_is_available() {
        return Err("this build of Lumen has no Metal support".into());
    }
    Device::new_metal(ordinal).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            "cpu".parse::<DeviceRequest>().ok(),
            Some(DeviceRequest::Cpu)
        );
        assert_eq!(
            "CUDA:1".parse::<DeviceRequest>().ok(),
            Some(DeviceRequest::Cuda(1))
        );
        assert_eq!(
            "metal".parse::<DeviceRequest>().ok(),
            Some(DeviceRequest::Metal(0))
        );
        assert!("tpu".parse::<DeviceRequest>().is_err());
        assert!("cuda:x".parse::<DeviceRequest>().is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_request_without_cuda_falls_back_with_a_reason() {
        let d = select_device(DeviceRequest::Cuda(0));
        assert!(d.device.is_cpu());
        assert!(
            d.fallback_reason
                .expect("reason")
                .contains("no CUDA support")
        );
    }
}
