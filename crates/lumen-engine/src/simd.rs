//! Helpers shared by the hand-written x86-64 kernels (attention): whole
//! vectors loaded from and stored to slices, bounds-checked, and lane
//! reductions.

#![allow(unsafe_code)]

/// Eight-lane f32 vectors (AVX2 + FMA).
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
