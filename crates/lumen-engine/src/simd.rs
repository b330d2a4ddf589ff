//! What the hand-written attention kernels share: the choice of kernel,
//! and on x86-64 whole vectors loaded from and stored to slices
//! (bounds-checked) and lane reductions.

/// The instruction sets the attention kernels are written for (each op
/// says which head sizes it has kernels for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX-512 F: 32 registers of sixteen f32.
    Avx512,
    /// AVX2 + FMA: 16 registers of eight f32.
    Avx2,
}

impl Kernel {
    /// The best kernel this CPU runs, if any.
    pub(crate) fn best() -> Option<Self> {
        Self::all().into_iter().find(|k| k.runs_here())
    }

    /// Every kernel, best first.
    pub(crate) fn all() -> [Self; 2] {
        [Self::Avx512, Self::Avx2]
    }

    /// Whether the CPU has this kernel's instructions (and, for AVX-512,
    /// `LUMEN_CPU_KERNELS` does not ask for less).
    pub(crate) fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => crate::qmm::Isa::avx512f_allowed(),
                Self::Avx2 => avx2::runs_here(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// Eight-lane f32 vectors (AVX2 + FMA).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    /// Whether the CPU has AVX2 and FMA.
    pub(crate) fn runs_here() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// Loads eight f32 from the start of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn load(v: &[f32]) -> __m256 {
        let v = &v[..8];
        // SAFETY: `v` is 32 readable bytes; the load is unaligned.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    /// Stores eight f32 at the start of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn store(v: &mut [f32], x: __m256) {
        let v = &mut v[..8];
        // SAFETY: `v` is 32 writable bytes; the store is unaligned.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), x) }
    }

    /// The sum of `v`'s lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn sum_lanes(v: __m256) -> f32 {
        let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
    }

    /// The largest of `v`'s lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn max_lane(v: __m256) -> f32 {
        let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)))
    }
}

/// Sixteen-lane f32 vectors (AVX-512 F).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Loads sixteen f32 from the start of `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn load(v: &[f32]) -> __m512 {
        let v = &v[..16];
        // SAFETY: `v` is 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }

    /// Stores sixteen f32 at the start of `v`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) fn store(v: &mut [f32], x: __m512) {
        let v = &mut v[..16];
        // SAFETY: `v` is 64 writable bytes; the store is unaligned.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), x) }
    }
}
